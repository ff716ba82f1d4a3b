/**
 * The public shapes of the HTTP contract, with the values the server sends on
 * the wire (`"online"`, `"worker.registered"`, snake_case fields).
 *
 * `wire.ts` is generated from the server's `/openapi.json`; the checks at the
 * end of this file make the build fail if these types and the published
 * schemas ever disagree on which fields exist.
 */

import type { components } from "./wire.js";

export type WorkerStatus = "online" | "draining" | "offline";
export type MachineStatus = "online" | "offline";
export type OfflineReason = "shutdown" | "stale" | "exited" | "replaced" | "revoked";
export type EventReason = "registered" | "heartbeat" | OfflineReason;
export type EventType =
  | "worker.registered"
  | "worker.online"
  | "worker.draining"
  | "worker.offline"
  | "worker.deleted"
  | "machine.online"
  | "machine.offline"
  | "incident.opened"
  | "incident.resolved";
export type TokenKind = "admin" | "enroll" | "read" | "worker";
export type Labels = Record<string, string>;

export interface Worker {
  id: string;
  name: string;
  machine_id: string;
  status: WorkerStatus;
  offline_reason: OfflineReason | null;
  /** +1 on every return from offline and on every registration: fence work on (id, session). */
  session: number;
  labels: Labels;
  heartbeat_interval_ms: number;
  stale_after_ms: number;
  registered_at: string;
  last_heartbeat_at: string | null;
  /** Null while offline. */
  deadline_at: string | null;
  status_changed_at: string;
}

export interface Machine {
  id: string;
  hostname: string | null;
  labels: Labels;
  status: MachineStatus;
  workers_online: number;
  workers_total: number;
  first_seen_at: string;
  last_seen_at: string;
  status_changed_at: string;
}

export interface MachineWithWorkers extends Machine {
  workers: Worker[];
}

export interface Event {
  seq: number;
  at: string;
  type: EventType;
  worker_id: string | null;
  machine_id: string;
  reason: EventReason | null;
  session: number | null;
  /** Stale transitions only: milliseconds from the deadline to the marking. */
  detection_lag_ms: number | null;
  /** `exited` offlines whose process exited: its exit code (0–255). See {@link offlineClass}. */
  exit_code: number | null;
  /** `exited` offlines whose process a signal ended: the signal (1–64). */
  signal: number | null;
  /** `incident.*` events: the incident (`machine_id` is `"*"` for one about the whole fleet). */
  incident_id: string | null;
}

/** How a supervised process ended: its exit code, or the signal that killed it. */
export type ExitStatus = { exit_code: number; signal?: never } | { signal: number; exit_code?: never };

/**
 * What kind of end a `worker.offline` was: `graceful` (`shutdown`, `exited`
 * with exit code 0), `crash` (`stale`, `replaced`, `exited` otherwise) or
 * `administrative` (`revoked`).
 */
export type OfflineClass = "graceful" | "crash" | "administrative";

/** The kinds of crash, by the offline reason that recorded it. */
export type CrashKind = "stale" | "replaced" | "exited";

/**
 * The class of a `worker.offline` event (see {@link OfflineClass}); null
 * for every other event. An `exited` offline with neither an exit code nor
 * a signal is a crash: nothing says the process meant to end.
 */
export function offlineClass(event: Event): OfflineClass | null {
  if (event.type !== "worker.offline") return null;
  switch (event.reason) {
    case "shutdown":
      return "graceful";
    case "exited":
      return event.exit_code === 0 ? "graceful" : "crash";
    case "stale":
    case "replaced":
      return "crash";
    case "revoked":
      return "administrative";
    default:
      return null;
  }
}

/** For a crash, its kind; null for every other event, graceful and administrative offlines included. */
export function crashKind(event: Event): CrashKind | null {
  if (offlineClass(event) !== "crash") return null;
  return event.reason as CrashKind;
}

export interface MachineSpec {
  id: string;
  hostname?: string;
  labels?: Labels;
}

export interface RegisterRequest {
  name: string;
  machine: MachineSpec;
  labels?: Labels;
  heartbeat_interval_ms?: number;
  stale_after_ms?: number;
}

export interface Registration {
  worker: Worker;
  /** The worker token (`rc_worker_…`), shown once. */
  token: string;
}

export interface HeartbeatAck {
  status: "online" | "draining";
  session: number;
  /** True when the worker was offline and this heartbeat brought it back (new session). */
  resumed: boolean;
  deadline_at: string;
  heartbeat_interval_ms: number;
}

export interface BatchEntry {
  worker_id: string;
  token: string;
}

export type BatchResult =
  | { worker_id: string; ok: true; status: "online" | "draining"; session: number; resumed: boolean; deadline_at: string }
  | { worker_id: string; ok: false; error: { code: string; message: string } };

export interface NewToken {
  kind: "enroll" | "read";
  name: string;
  expires_in_ms?: number;
  /** Enroll tokens only: the workers the token may register; absent or null: any worker. */
  scope?: ScopeSpec | null;
}

/**
 * The scope asked for when creating an enroll token; at least one of the two
 * limits. Rules: docs/API.md, "Scoped enroll tokens".
 */
export interface ScopeSpec {
  /** Machine-id patterns (1–32), one of which the worker's machine id must match; `*` stands for any run of characters. */
  machines?: string[] | null;
  /** Labels the worker's `labels` must all carry, with exactly these values. */
  labels?: Labels | null;
}

/** An enroll token's scope: which workers it may register. */
export interface TokenScope {
  /** Machine-id patterns; null: any machine. */
  machines: string[] | null;
  /** Labels the worker must carry with exactly these values; `{}`: none. */
  labels: Labels;
}

export interface Token {
  id: string;
  kind: TokenKind;
  name: string;
  created_at: string;
  expires_at: string | null;
  last_used_at: string | null;
  /** Enroll tokens: the workers it may register; null: any worker. */
  scope: TokenScope | null;
}

export interface CreatedToken {
  id: string;
  kind: TokenKind;
  name: string;
  /** The secret, shown once. */
  token: string;
  expires_at: string | null;
  /** Enroll tokens: the workers it may register; null: any worker. */
  scope: TokenScope | null;
}

export interface Page<T> {
  items: T[];
  next_cursor: string | null;
}

export interface StaleCleanup {
  success: boolean;
  deleted_count: number;
  marked_offline_count: number;
  affected_machine_ids: string[];
}

export interface FullCleanup {
  success: boolean;
  stale: StaleCleanup;
  forgotten_workers: number;
  forgotten_machines: number;
  pruned_events: number;
  expired_tokens: number;
  duration_ms: number;
}

export interface PageQuery {
  limit?: number;
  cursor?: string;
}

export interface WorkerQuery extends PageQuery {
  status?: WorkerStatus;
  machine_id?: string;
}

export interface MachineQuery extends PageQuery {
  status?: MachineStatus;
}

export interface EventQuery {
  after?: number;
  limit?: number;
  worker_id?: string;
  machine_id?: string;
  type?: EventType;
}

// Compile-time agreement with the schemas the server publishes: the same
// field names, no more, no fewer. (Only the keys are compared; the enums
// are published with their wire values and checked by the server's tests.)
type SameKeys<A, B> = [Exclude<keyof A, keyof B>, Exclude<keyof B, keyof A>] extends [never, never] ? true : false;
type Schemas = components["schemas"];
export const schemasAgree: [
  SameKeys<Worker, Schemas["Worker"]>,
  SameKeys<Machine, Schemas["Machine"]>,
  SameKeys<MachineWithWorkers, Schemas["MachineDetail"]>,
  SameKeys<Event, Schemas["Event"]>,
  SameKeys<RegisterRequest, Schemas["RegisterRequest"]>,
  SameKeys<MachineSpec, Schemas["MachineSpec"]>,
  SameKeys<Registration, Schemas["Registered"]>,
  SameKeys<HeartbeatAck, Schemas["HeartbeatResponse"]>,
  SameKeys<BatchEntry, Schemas["BatchEntry"]>,
  SameKeys<NewToken, Schemas["CreateTokenRequest"]>,
  SameKeys<CreatedToken, Schemas["CreatedToken"]>,
  SameKeys<Token, Schemas["TokenInfo"]>,
  SameKeys<ScopeSpec, Schemas["ScopeSpec"]>,
  SameKeys<TokenScope, Schemas["TokenScope"]>,
  SameKeys<StaleCleanup, Schemas["StaleReport"]>,
  SameKeys<FullCleanup, Schemas["CleanupReport"]>,
] = [true, true, true, true, true, true, true, true, true, true, true, true, true, true, true, true];
