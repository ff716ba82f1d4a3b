/**
 * {@link WorkerHandle}: a worker that registers, heartbeats in the background
 * and says goodbye.
 *
 * The background work is one step plus a thin loop: `step()` registers when
 * there is no valid session and heartbeats otherwise, and returns how long to
 * wait before the next step. Drain and stop requests are queued behind the
 * step in progress, so the server sees one call of this worker at a time.
 *
 * | outcome | next step |
 * |---|---|
 * | registered / heartbeat acknowledged | after the server's interval ±10 % |
 * | 401 on a heartbeat (token rotated, revoked, forgotten) | register again at once (event `replaced`) |
 * | no answer, 5xx, 429 | retry with exponential backoff and jitter, capped at the interval (event `error`) |
 * | registration refused (400, 401, 403, …) | the handle stops: the options or the token are wrong |
 */

import { EventEmitter } from "node:events";
import { hostname } from "node:os";

import { heartbeatDelay, retryDelay } from "./backoff.js";
import type { Rollcall } from "./client.js";
import { ApiError, RollcallError, StoppedError } from "./errors.js";
import type { ExitStatus, HeartbeatAck, Labels, MachineSpec, RegisterRequest, Worker, WorkerStatus } from "./types.js";

/** The interval assumed before the server has given one (its default): it caps the first backoff. */
export const ASSUMED_HEARTBEAT_INTERVAL_MS = 30_000;

export interface WorkerOptions {
  /** The worker's name, unique on its machine: 1–128 of `[A-Za-z0-9._:-]`. */
  name: string;
  /** The machine id, or the whole machine spec; default: this host's name. */
  machine?: string | MachineSpec;
  labels?: Labels;
  /** Ask for this heartbeat interval; default: the server's. The handle heartbeats at what the server answers. */
  heartbeatIntervalMs?: number;
  /** Ask for this staleness threshold; default: the server's (3 × the interval if only that is given). */
  staleAfterMs?: number;
  /** Say goodbye on SIGTERM and SIGINT (default true). See {@link WorkerHandle}. */
  handleSignals?: boolean;
  /** The first retry delay while the server is unreachable (default 250 ms); it doubles up to the interval. */
  initialBackoffMs?: number;
}

export type WorkerPhase = "registering" | "registered" | "stopped";

/** What a handle's events carry. */
export interface WorkerEvents {
  /** Registered (the first time, and again after `replaced`): the server's record. */
  online: [worker: Worker];
  /** A heartbeat was acknowledged. */
  heartbeat: [ack: HeartbeatAck];
  /** rollcall had marked the worker offline (stale); this heartbeat brought it back in a new session. */
  resumed: [ack: HeartbeatAck];
  /** The server refused the worker token (the worker was registered again elsewhere, or deleted): registering again. */
  replaced: [info: { workerId: string; error: ApiError }];
  /** A step failed; the handle retries with backoff (or, for a refused registration, stops). */
  error: [error: unknown];
  /** The handle stopped; `worker` is the record after the goodbye, null if there was no session to end. */
  stopped: [worker: Worker | null];
}

interface Session {
  id: string;
  client: Rollcall;
  intervalMs: number;
}

/** Registration answers that will not change by retrying: the handle stops. */
const FATAL_REGISTRATION = new Set([400, 401, 403, 404, 409, 413]);

/**
 * A registered worker, heartbeating in the background.
 *
 * It keeps the Node process alive until it stops. It stops on
 * {@link WorkerHandle.stop}, and (unless `handleSignals: false`) on SIGTERM
 * and SIGINT: every handle says goodbye, then, if the program has no signal
 * listener of its own, the signal is raised again so the process ends as it
 * would have; with a listener of its own, the program decides when to exit.
 * A second signal during the goodbye ends the process at once.
 *
 * `handle.signal` is aborted as soon as the handle starts stopping: pass it
 * to the job loop to stop taking work.
 */
export class WorkerHandle extends EventEmitter<WorkerEvents> {
  private readonly enroll: Rollcall;
  private readonly request: RegisterRequest;
  private readonly initialBackoffMs: number;
  private readonly handlesSignals: boolean;
  private current: Session | undefined;
  private failures = 0;
  private wantDraining = false;
  private drainPending = false;
  private assumedIntervalMs: number;
  /** Runs the step and the caller's requests one at a time. */
  private queue: Promise<unknown> = Promise.resolve();
  private readonly stopping = new AbortController();
  private wake: (() => void) | undefined;
  private stopResult: Promise<Worker | null> | undefined;
  private readyPromise: Promise<Worker>;
  private settleReady: { resolve: (w: Worker) => void; reject: (e: unknown) => void } | undefined;

  /** Where the handle is in its life. */
  phase: WorkerPhase = "registering";
  /** The worker's id once registered (kept while registering again and after stopping). */
  id: string | undefined;
  /** The current (or last) session number: fence work on (`id`, `session`). */
  session: number | undefined;
  /** The status the server last reported. */
  status: WorkerStatus | undefined;
  /** The deadline the server last gave. */
  deadlineAt: string | undefined;
  /** How many times the handle registered (more than one after `replaced`). */
  registrations = 0;
  /** Failed steps in a row (0 while all is well). */
  consecutiveFailures = 0;
  /** The most recent failure, cleared by the next success. */
  lastError: unknown;

  constructor(client: Rollcall, options: WorkerOptions) {
    super();
    this.enroll = client;
    this.request = toRequest(options);
    this.initialBackoffMs = options.initialBackoffMs ?? 250;
    this.assumedIntervalMs = options.heartbeatIntervalMs ?? ASSUMED_HEARTBEAT_INTERVAL_MS;
    this.handlesSignals = options.handleSignals ?? true;
    this.readyPromise = new Promise<Worker>((resolve, reject) => {
      this.settleReady = { resolve, reject };
    });
    // Nobody may be waiting for readiness; a rejection must not be "unhandled".
    this.readyPromise.catch(() => undefined);
    if (this.handlesSignals) signals.add(this);
    void this.run();
  }

  /** Aborted when the handle starts stopping. */
  get signal(): AbortSignal {
    return this.stopping.signal;
  }

  /** Resolves with the worker once registered; rejects if the handle stops (or registration is refused) first. */
  ready(): Promise<Worker> {
    return this.readyPromise;
  }

  /**
   * Drains the worker: it keeps heartbeating but should take no new work.
   * Remembered: a later session (after `replaced`) is drained too.
   */
  drain(): Promise<Worker> {
    if (this.stopping.signal.aborted) return Promise.reject(new StoppedError("the worker handle has stopped"));
    return this.serialised(async () => {
      this.wantDraining = true;
      const session = this.current;
      if (!session) {
        this.drainPending = true;
        throw new RollcallError("not registered yet: the drain is applied once registered");
      }
      try {
        const worker = await session.client.drain(session.id);
        this.drainPending = false;
        this.publish(worker);
        return worker;
      } catch (e) {
        this.drainPending = true;
        if (e instanceof ApiError && e.status === 401) {
          this.tokenRefused(e);
          this.wake?.();
        }
        throw e;
      }
    });
  }

  /**
   * Says goodbye (offline with `reason`, default `shutdown`) and stops
   * heartbeating. Idempotent: every call returns the same promise. Resolves
   * with the worker's record, or null when there was no session to end.
   * One attempt (with fail-over): if it fails the promise rejects, the
   * handle stops anyway and the server marks the worker stale later.
   *
   * A handle that supervises a process says how it ended with
   * `stop("exited", { exit_code })` or `stop("exited", { signal })`: exit
   * code 0 is a graceful end, any other code or a signal a crash.
   */
  stop(reason: "shutdown" | "exited" = "shutdown", exit?: ExitStatus): Promise<Worker | null> {
    if (this.stopResult) return this.stopResult;
    this.stopping.abort(new StoppedError("the worker handle is stopping"));
    this.wake?.();
    this.stopResult = this.serialised(async () => {
      try {
        const session = this.current;
        if (!session) return null;
        const worker = await session.client.offline(session.id, reason, exit === undefined ? {} : { exit });
        this.publish(worker);
        return worker;
      } finally {
        this.finish();
      }
    });
    this.stopResult
      .then((worker) => this.emit("stopped", worker))
      .catch((error: unknown) => {
        this.emitError(error);
        this.emit("stopped", null);
      });
    return this.stopResult;
  }

  private finish(): void {
    this.phase = "stopped";
    signals.delete(this);
    this.settleReady?.reject(new StoppedError("the worker handle stopped before it registered"));
    this.settleReady = undefined;
  }

  private serialised<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.queue.then(fn);
    this.queue = result.catch(() => undefined);
    return result;
  }

  private intervalMs(): number {
    return this.current?.intervalMs ?? this.assumedIntervalMs;
  }

  /** The thin loop: a step whenever its time comes, until the handle stops. */
  private async run(): Promise<void> {
    let delay = 0;
    while (!this.stopping.signal.aborted) {
      await this.sleep(delay);
      if (this.stopping.signal.aborted) break;
      const started = Date.now();
      let next: number;
      try {
        next = await this.serialised(() => this.step());
      } catch (e) {
        next = this.failed(e); // a step handles the errors it expects; anything else is retried too
      }
      delay = Math.max(0, started + next - Date.now());
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      const wake = (): void => done();
      this.wake = wake;
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
    });
  }

  /** One unit of background work; returns the delay before the next one, counted from its start. */
  private async step(): Promise<number> {
    if (this.stopping.signal.aborted) return 0;
    if (!this.current) {
      try {
        await this.register();
        return heartbeatDelay(this.intervalMs(), Math.random());
      } catch (e) {
        if (e instanceof ApiError && FATAL_REGISTRATION.has(e.status)) {
          this.emitError(e);
          this.settleReady?.reject(e);
          this.settleReady = undefined;
          void this.stop();
          return 0;
        }
        return this.failed(e);
      }
    }
    if (this.drainPending) {
      const session = this.current;
      try {
        this.publish(await session.client.drain(session.id));
        this.drainPending = false;
      } catch (e) {
        if (e instanceof ApiError && e.status === 401) {
          this.tokenRefused(e);
          return 0;
        }
      }
    }
    const session = this.current;
    try {
      const ack = await session.client.heartbeat(session.id, { signal: this.stopping.signal });
      session.intervalMs = ack.heartbeat_interval_ms;
      // A resumed session starts online; a drained worker stays drained.
      if (ack.resumed && this.wantDraining) this.drainPending = true;
      this.succeeded();
      this.session = ack.session;
      this.status = ack.status;
      this.deadlineAt = ack.deadline_at;
      this.emit("heartbeat", ack);
      if (ack.resumed) this.emit("resumed", ack);
      return heartbeatDelay(ack.heartbeat_interval_ms, Math.random());
    } catch (e) {
      if (this.stopping.signal.aborted) return 0;
      if (e instanceof ApiError && e.status === 401) {
        this.tokenRefused(e);
        return 0;
      }
      return this.failed(e);
    }
  }

  private async register(): Promise<void> {
    const { worker, token } = await this.enroll.register(this.request);
    this.current = { id: worker.id, client: this.enroll.withToken(token), intervalMs: worker.heartbeat_interval_ms };
    this.drainPending = this.wantDraining;
    this.succeeded();
    this.phase = "registered";
    this.registrations += 1;
    this.publish(worker);
    this.settleReady?.resolve(worker);
    this.settleReady = undefined;
    this.emit("online", worker);
  }

  /** The server refused the worker token: forget the session so the next step registers again. */
  private tokenRefused(error: ApiError): void {
    const workerId = this.current?.id ?? this.id ?? "";
    this.current = undefined;
    this.phase = "registering";
    this.lastError = error;
    this.emit("replaced", { workerId, error });
  }

  private succeeded(): void {
    this.failures = 0;
    this.consecutiveFailures = 0;
    this.lastError = undefined;
  }

  /** Records a failure and returns the backoff before the next attempt. */
  private failed(error: unknown): number {
    this.failures += 1;
    this.consecutiveFailures = this.failures;
    this.lastError = error;
    const cap = this.intervalMs();
    let delay = retryDelay(this.failures, this.initialBackoffMs, cap, Math.random());
    if (error instanceof ApiError && error.retryAfterMs !== undefined) {
      // Honour the server's wish, but never so long that the worker goes stale over it.
      delay = Math.max(delay, Math.min(error.retryAfterMs, cap));
    }
    this.emitError(error);
    return delay;
  }

  /** `error` is emitted only to listeners: an EventEmitter would throw it otherwise. */
  private emitError(error: unknown): void {
    if (this.listenerCount("error") > 0) this.emit("error", error);
  }

  private publish(worker: Worker): void {
    this.id = worker.id;
    this.session = worker.session;
    this.status = worker.status;
    this.deadlineAt = worker.deadline_at ?? undefined;
    if (this.current) this.current.intervalMs = worker.heartbeat_interval_ms;
  }
}

function toRequest(options: WorkerOptions): RegisterRequest {
  const host = hostname() || "localhost";
  const machine: MachineSpec =
    typeof options.machine === "string"
      ? { id: options.machine, hostname: host }
      : options.machine ?? { id: host, hostname: host };
  const request: RegisterRequest = { name: options.name, machine };
  if (options.labels) request.labels = options.labels;
  if (options.heartbeatIntervalMs !== undefined) request.heartbeat_interval_ms = options.heartbeatIntervalMs;
  if (options.staleAfterMs !== undefined) request.stale_after_ms = options.staleAfterMs;
  return request;
}

/**
 * The process's SIGTERM/SIGINT listeners, shared by every handle that
 * handles signals; installed while at least one such handle runs.
 */
const signals = new (class SignalRegistry {
  private readonly handles = new Set<WorkerHandle>();
  private handling = false;
  private readonly listeners = {
    SIGTERM: (): void => this.onSignal("SIGTERM"),
    SIGINT: (): void => this.onSignal("SIGINT"),
  };

  add(handle: WorkerHandle): void {
    if (this.handles.size === 0) {
      process.on("SIGTERM", this.listeners.SIGTERM);
      process.on("SIGINT", this.listeners.SIGINT);
    }
    this.handles.add(handle);
  }

  delete(handle: WorkerHandle): void {
    if (this.handles.delete(handle) && this.handles.size === 0 && !this.handling) this.uninstall();
  }

  private uninstall(): void {
    process.off("SIGTERM", this.listeners.SIGTERM);
    process.off("SIGINT", this.listeners.SIGINT);
  }

  private onSignal(signal: "SIGTERM" | "SIGINT"): void {
    // The program's own listeners, if any, decide what the signal means.
    const own = process.listenerCount(signal) > 1;
    if (this.handling) {
      // A second signal during the goodbye: do what the signal would have done.
      this.uninstall();
      if (!own) process.kill(process.pid, signal);
      return;
    }
    this.handling = true;
    const stops = [...this.handles].map((h) => h.stop());
    void Promise.allSettled(stops).then(() => {
      this.handling = false;
      this.uninstall();
      if (!own) process.kill(process.pid, signal);
    });
  }
})();
