/**
 * rollcall for Node.js.
 *
 * ```ts
 * import { Rollcall } from "@rollcall/client";
 * const rc = new Rollcall({ url: process.env.ROLLCALL_SERVER, token: process.env.ROLLCALL_TOKEN });
 * const worker = rc.worker({ name: "render-1" }); // registers, heartbeats, says goodbye on SIGTERM
 * ```
 */

export { Rollcall, type CallOptions, type HeartbeatOptions, type OfflineOptions, type RollcallOptions } from "./client.js";
export { ApiError, RollcallError, StoppedError, TransportError, isApiError, type ErrorCode } from "./errors.js";
export type { StreamOptions } from "./sse.js";
export { WorkerHandle, type WorkerEvents, type WorkerOptions, type WorkerPhase } from "./worker.js";
export * from "./types.js";
