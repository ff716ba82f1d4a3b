/**
 * {@link Rollcall}: one typed method per call of the HTTP contract, over one
 * or more server URLs.
 *
 * ## Fail-over
 *
 * With several URLs (the replicas of a PostgreSQL deployment), a call starts
 * at the server that answered last and moves on to the next when that one
 *
 * - cannot be connected to (always safe: nothing was sent),
 * - answers 503 `unavailable` (it did not act on the request),
 * - or, for calls that are safe to repeat (reads, heartbeats, drain,
 *   offline), times out, loses the connection or answers 502/504.
 *
 * Calls that are not safe to repeat (registering, creating or deleting a
 * token or a worker, cleanup) are never sent twice once a server may have
 * acted on them: their error is thrown. A call makes at most one pass over
 * the servers; retrying later is the caller's business (the worker handle
 * does it, with backoff).
 */

import { ApiError, TransportError } from "./errors.js";
import { eventStream, type StreamOptions } from "./sse.js";
import type {
  BatchEntry,
  BatchResult,
  CreatedToken,
  Event,
  EventQuery,
  ExitStatus,
  FullCleanup,
  HeartbeatAck,
  Machine,
  MachineQuery,
  MachineWithWorkers,
  NewToken,
  Page,
  PageQuery,
  RegisterRequest,
  Registration,
  StaleCleanup,
  Token,
  Worker,
  WorkerQuery,
} from "./types.js";
import { WorkerHandle, type WorkerOptions } from "./worker.js";

export interface RollcallOptions {
  /** One server, e.g. `http://127.0.0.1:7373`. */
  url?: string;
  /** Several replicas, in fail-over order (may be combined with `url`, which comes first). */
  urls?: string[];
  /** The bearer token: enroll for workers, read for dashboards, admin for everything. */
  token?: string;
  /** Per-request timeout; default 10 000 ms. With fail-over a call may take this per server. */
  timeoutMs?: number;
}

/** Options every call takes. */
export interface CallOptions {
  /** Aborts the call; it then rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** A heartbeat is sent with the worker's own token. */
export interface HeartbeatOptions extends CallOptions {
  /** The worker token; default: the client's token. */
  token?: string;
}

export interface OfflineOptions extends HeartbeatOptions {
  /**
   * With reason `exited`: how the worker's process ended, `{ exit_code }` or
   * `{ signal }`. Exit code 0 records a graceful offline; any other code or
   * a signal a crash. The server refuses it (400) with any other reason.
   */
  exit?: ExitStatus;
}

type Method = "GET" | "POST" | "DELETE";

interface Call {
  method: Method;
  path: string;
  query?: Record<string, string | number | undefined>;
  body?: unknown;
  /** Safe to send to another server after this one may have acted on it. */
  safe: boolean;
  /** Send the token (false for the public endpoints). */
  auth: boolean;
  token?: string;
  signal?: AbortSignal | undefined;
  /** Accept header (JSON unless said otherwise). */
  accept?: string;
  /** Extra headers (Last-Event-ID). */
  headers?: Record<string, string>;
  /** Apply the request timeout to the whole response (false for the stream). */
  timeout: boolean;
}

/** The servers and which one answered last: shared by a client and its `withToken` copies. */
interface Shared {
  urls: string[];
  current: number;
  timeoutMs: number;
}

const CONNECT_ERRORS = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EAI_AGAIN",
  "UND_ERR_CONNECT_TIMEOUT",
]);

function normaliseUrl(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new TypeError(`rollcall: not a URL: ${JSON.stringify(raw)}`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TypeError(`rollcall: a server URL must be http or https: ${raw}`);
  }
  if (url.search || url.hash) {
    throw new TypeError(`rollcall: a server URL has no query or fragment: ${raw}`);
  }
  return url.toString().replace(/\/+$/, "");
}

/** The `errno`-style code of a fetch failure's cause chain, if any. */
function causeCode(error: unknown): string | undefined {
  let e: unknown = error;
  for (let depth = 0; depth < 4 && e && typeof e === "object"; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string") return code;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

/** A signal that aborts when any of `signals` does, and a way to drop its listeners. */
export function linkSignals(signals: (AbortSignal | undefined)[]): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  const cleanups: (() => void)[] = [];
  for (const s of signals) {
    if (!s) continue;
    if (s.aborted) {
      controller.abort(s.reason);
      break;
    }
    const onAbort = (): void => controller.abort(s.reason);
    s.addEventListener("abort", onAbort, { once: true });
    cleanups.push(() => s.removeEventListener("abort", onAbort));
  }
  return { signal: controller.signal, dispose: () => cleanups.forEach((c) => c()) };
}

function retryAfterMs(response: Response): number | undefined {
  const value = response.headers.get("retry-after");
  if (value === null || !/^\s*\d+\s*$/.test(value)) return undefined;
  return Number(value) * 1000;
}

export class Rollcall {
  private readonly shared: Shared;
  private readonly token: string | undefined;

  constructor(options: RollcallOptions) {
    const urls = [...(options.url ? [options.url] : []), ...(options.urls ?? [])].map(normaliseUrl);
    if (urls.length === 0) throw new TypeError("rollcall: give `url` or `urls`");
    this.shared = { urls, current: 0, timeoutMs: options.timeoutMs ?? 10_000 };
    this.token = options.token;
  }

  /** The servers, in fail-over order. */
  get urls(): readonly string[] {
    return this.shared.urls;
  }

  /** A client that sends `token` instead, sharing the fail-over state. */
  withToken(token: string): Rollcall {
    const copy = Object.create(Rollcall.prototype) as Rollcall;
    Object.assign(copy, { shared: this.shared, token });
    return copy;
  }

  // ---- the wire ---------------------------------------------------------

  /** Sends `call` with fail-over (see the module docs) and returns the first 2xx response. */
  private async send(call: Call): Promise<{ response: Response; url: string; dispose: () => void }> {
    const { urls } = this.shared;
    const n = urls.length;
    const start = this.shared.current % n;
    let lastError: unknown;
    for (let k = 0; k < n; k++) {
      const index = (start + k) % n;
      const isLast = k + 1 === n;
      const url = this.url(urls[index]!, call);
      const timeout = new AbortController();
      const timer = setTimeout(
        () => timeout.abort(new TransportError(`timed out after ${this.shared.timeoutMs} ms`, url)),
        this.shared.timeoutMs,
      );
      const linked = linkSignals([call.signal, timeout.signal]);
      const dispose = (): void => {
        clearTimeout(timer);
        linked.dispose();
      };
      const headers: Record<string, string> = { accept: call.accept ?? "application/json", ...call.headers };
      const token = call.token ?? this.token;
      if (call.auth && token) headers.authorization = `Bearer ${token}`;
      let body: string | undefined;
      if (call.body !== undefined) {
        headers["content-type"] = "application/json";
        body = JSON.stringify(call.body);
      }
      let error: unknown;
      let failOver: boolean;
      try {
        const init: RequestInit = { method: call.method, headers, signal: linked.signal };
        if (body !== undefined) init.body = body;
        const response = await fetch(url, init);
        if (!call.timeout) clearTimeout(timer); // the stream has its own idle timeout
        if (response.ok) {
          this.shared.current = index;
          return { response, url, dispose };
        }
        const text = await response.text().catch(() => "");
        dispose();
        error = ApiError.fromBody(response.status, text, url, retryAfterMs(response));
        failOver = response.status === 503 || (call.safe && (response.status === 502 || response.status === 504));
        // This server answered the call itself; keep using it.
        if (!failOver) this.shared.current = index;
      } catch (cause) {
        dispose();
        if (call.signal?.aborted) throw call.signal.reason;
        if (timeout.signal.aborted) {
          error = timeout.signal.reason;
          failOver = call.safe;
        } else {
          const code = causeCode(cause);
          const connectFailed = code !== undefined && CONNECT_ERRORS.has(code);
          error = new TransportError(`request failed${code ? ` (${code})` : ""}`, url, { cause, connectFailed });
          failOver = connectFailed || call.safe;
        }
      }
      if (!failOver || isLast) throw error;
      // The next server becomes the starting point for later calls.
      this.shared.current = (index + 1) % n;
      lastError = error;
    }
    throw lastError;
  }

  private url(base: string, call: Call): string {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(call.query ?? {})) {
      if (value !== undefined) params.set(key, String(value));
    }
    const query = params.toString();
    return `${base}${call.path}${query ? `?${query}` : ""}`;
  }

  private async json<T>(call: Call): Promise<T> {
    const { response, url, dispose } = await this.send(call);
    try {
      const text = await response.text();
      try {
        return JSON.parse(text) as T;
      } catch (cause) {
        throw new TransportError(`the answer is not JSON (HTTP ${response.status})`, url, { cause });
      }
    } finally {
      dispose();
    }
  }

  private async empty(call: Call): Promise<void> {
    const { response, dispose } = await this.send(call);
    try {
      await response.arrayBuffer();
    } finally {
      dispose();
    }
  }

  private static call(method: Method, path: string, extra: Partial<Call> = {}): Call {
    return { method, path, safe: method === "GET", auth: true, timeout: true, ...extra };
  }

  // ---- tokens -----------------------------------------------------------

  /** `POST /v1/tokens` (admin): an enroll or read token; the secret is in the answer only. */
  createToken(request: NewToken, options: CallOptions = {}): Promise<CreatedToken> {
    return this.json(Rollcall.call("POST", "/v1/tokens", { body: request, signal: options.signal }));
  }

  /** `GET /v1/tokens` (admin): one page. */
  listTokens(query: PageQuery = {}, options: CallOptions = {}): Promise<Page<Token>> {
    return this.json(Rollcall.call("GET", "/v1/tokens", { query: { ...query }, signal: options.signal }));
  }

  /** `DELETE /v1/tokens/{id}` (admin): the token stops working at once. */
  deleteToken(id: string, options: CallOptions = {}): Promise<void> {
    return this.empty(Rollcall.call("DELETE", `/v1/tokens/${encodeURIComponent(id)}`, { signal: options.signal }));
  }

  // ---- workers ----------------------------------------------------------

  /** `POST /v1/workers` (enroll or admin): registers (again), returning the worker and its new token. */
  register(request: RegisterRequest, options: CallOptions = {}): Promise<Registration> {
    return this.json(Rollcall.call("POST", "/v1/workers", { body: request, signal: options.signal }));
  }

  /** `POST /v1/workers/{id}/heartbeat`, with the worker's own token. */
  heartbeat(id: string, options: HeartbeatOptions = {}): Promise<HeartbeatAck> {
    return this.json(
      Rollcall.call("POST", `/v1/workers/${encodeURIComponent(id)}/heartbeat`, {
        body: {},
        safe: true,
        signal: options.signal,
        ...(options.token ? { token: options.token } : {}),
      }),
    );
  }

  /** `POST /v1/heartbeats` (enroll or admin): up to 1000 workers' heartbeats in one request; results in request order. */
  async heartbeats(entries: BatchEntry[], options: CallOptions = {}): Promise<BatchResult[]> {
    const answer = await this.json<{ results: BatchResult[] }>(
      Rollcall.call("POST", "/v1/heartbeats", { body: { heartbeats: entries }, safe: true, signal: options.signal }),
    );
    return answer.results;
  }

  /** `POST /v1/workers/{id}/drain` (its own token or admin). */
  drain(id: string, options: HeartbeatOptions = {}): Promise<Worker> {
    return this.json(
      Rollcall.call("POST", `/v1/workers/${encodeURIComponent(id)}/drain`, {
        safe: true,
        signal: options.signal,
        ...(options.token ? { token: options.token } : {}),
      }),
    );
  }

  /**
   * `POST /v1/workers/{id}/offline` (its own token or admin): idempotent. A
   * supervisor whose child ended sends `"exited"` with `options.exit`.
   */
  offline(id: string, reason: "shutdown" | "exited" = "shutdown", options: OfflineOptions = {}): Promise<Worker> {
    const exit = options.exit;
    const body =
      exit === undefined
        ? { reason }
        : exit.exit_code !== undefined
          ? { reason, exit_code: exit.exit_code }
          : { reason, signal: exit.signal };
    return this.json(
      Rollcall.call("POST", `/v1/workers/${encodeURIComponent(id)}/offline`, {
        body,
        safe: true,
        signal: options.signal,
        ...(options.token ? { token: options.token } : {}),
      }),
    );
  }

  /** `DELETE /v1/workers/{id}` (admin): revokes its token and forgets it. */
  deleteWorker(id: string, options: CallOptions = {}): Promise<void> {
    return this.empty(Rollcall.call("DELETE", `/v1/workers/${encodeURIComponent(id)}`, { signal: options.signal }));
  }

  /** `GET /v1/workers/{id}`. */
  getWorker(id: string, options: CallOptions = {}): Promise<Worker> {
    return this.json(Rollcall.call("GET", `/v1/workers/${encodeURIComponent(id)}`, { signal: options.signal }));
  }

  /** `GET /v1/workers`: one page. */
  listWorkers(query: WorkerQuery = {}, options: CallOptions = {}): Promise<Page<Worker>> {
    return this.json(Rollcall.call("GET", "/v1/workers", { query: { ...query }, signal: options.signal }));
  }

  /** Every worker matching `query`, page after page. */
  async *allWorkers(query: WorkerQuery = {}, options: CallOptions = {}): AsyncGenerator<Worker> {
    yield* this.pages((cursor) => this.listWorkers({ ...query, ...(cursor ? { cursor } : {}) }, options));
  }

  // ---- machines ---------------------------------------------------------

  /** `GET /v1/machines`: one page. */
  listMachines(query: MachineQuery = {}, options: CallOptions = {}): Promise<Page<Machine>> {
    return this.json(Rollcall.call("GET", "/v1/machines", { query: { ...query }, signal: options.signal }));
  }

  /** Every machine matching `query`, page after page. */
  async *allMachines(query: MachineQuery = {}, options: CallOptions = {}): AsyncGenerator<Machine> {
    yield* this.pages((cursor) => this.listMachines({ ...query, ...(cursor ? { cursor } : {}) }, options));
  }

  /** `GET /v1/machines/{id}`: the machine and its workers. */
  getMachine(id: string, options: CallOptions = {}): Promise<MachineWithWorkers> {
    return this.json(Rollcall.call("GET", `/v1/machines/${encodeURIComponent(id)}`, { signal: options.signal }));
  }

  private async *pages<T>(fetchPage: (cursor: string | undefined) => Promise<Page<T>>): AsyncGenerator<T> {
    let cursor: string | undefined;
    do {
      const page = await fetchPage(cursor);
      yield* page.items;
      cursor = page.next_cursor ?? undefined;
    } while (cursor !== undefined);
  }

  // ---- events -----------------------------------------------------------

  /** `GET /v1/events`: one page, oldest first; pass `next_cursor` back as `after`. */
  listEvents(query: EventQuery = {}, options: CallOptions = {}): Promise<Page<Event>> {
    return this.json(Rollcall.call("GET", "/v1/events", { query: { ...query }, signal: options.signal }));
  }

  /**
   * The event stream (`GET /v1/events/stream`) as an async iterator. With
   * `after`, it first replays every event after that seq; without, it starts
   * live. When the connection drops it reconnects (with backoff, across the
   * servers) with `Last-Event-ID` set to the last event it yielded, so no
   * event is missed or repeated. Stop it with `break` or the `signal`.
   */
  events(options: StreamOptions = {}): AsyncGenerator<Event> {
    return eventStream(options, (lastEventId, signal) =>
      this.send(
        Rollcall.call("GET", "/v1/events/stream", {
          accept: "text/event-stream",
          headers: lastEventId === undefined ? {} : { "last-event-id": String(lastEventId) },
          timeout: false,
          signal,
        }),
      ),
    );
  }

  // ---- cleanup and operations ------------------------------------------

  /** `POST /v1/cleanup/stale` (admin): the safety-net sweep, now. */
  cleanupStale(options: CallOptions = {}): Promise<StaleCleanup> {
    return this.json(Rollcall.call("POST", "/v1/cleanup/stale", { signal: options.signal }));
  }

  /** `POST /v1/cleanup/all` (admin): every housekeeping task, now. */
  cleanupAll(options: CallOptions = {}): Promise<FullCleanup> {
    return this.json(Rollcall.call("POST", "/v1/cleanup/all", { signal: options.signal }));
  }

  /** `GET /healthz`: resolves while the server runs. */
  healthz(options: CallOptions = {}): Promise<void> {
    return this.empty(Rollcall.call("GET", "/healthz", { auth: false, accept: "text/plain", signal: options.signal }));
  }

  /** `GET /readyz`: true when the store answers, false on 503. */
  async readyz(options: CallOptions = {}): Promise<boolean> {
    try {
      await this.empty(Rollcall.call("GET", "/readyz", { auth: false, accept: "text/plain", signal: options.signal }));
      return true;
    } catch (e) {
      if (e instanceof ApiError && e.status === 503) return false;
      throw e;
    }
  }

  /** `GET /metrics`: the Prometheus text. */
  async metrics(options: CallOptions = {}): Promise<string> {
    const { response, dispose } = await this.send(
      Rollcall.call("GET", "/metrics", { accept: "text/plain", signal: options.signal }),
    );
    try {
      return await response.text();
    } finally {
      dispose();
    }
  }

  /** `GET /openapi.json`: the contract as OpenAPI 3. */
  openapi(options: CallOptions = {}): Promise<unknown> {
    return this.json(Rollcall.call("GET", "/openapi.json", { auth: false, signal: options.signal }));
  }

  // ---- the worker handle -----------------------------------------------

  /**
   * A worker that registers (in the background, retrying while the server is
   * unreachable), heartbeats with jitter, registers again after a 401, and
   * says goodbye on `stop()` and on SIGTERM/SIGINT. This client's token must
   * be an enroll (or admin) token.
   */
  worker(options: WorkerOptions): WorkerHandle {
    return new WorkerHandle(this, options);
  }
}
