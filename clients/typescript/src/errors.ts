/**
 * The errors a rollcall call can end with.
 *
 * - {@link ApiError}: the server answered with a non-2xx status; `code` is the
 *   contract's error code (`unauthorized`, `not_found`, …).
 * - {@link TransportError}: no answer (connection refused, reset, timed out)
 *   or an answer that is not what the contract promises.
 * - A call aborted through its `AbortSignal` rejects with the signal's reason
 *   (a `DOMException` named `AbortError` unless the caller gave another).
 */

/** The error codes of the HTTP contract, with their statuses. */
export type ErrorCode =
  | "invalid_request" // 400
  | "unauthorized" // 401
  | "forbidden" // 403
  | "not_found" // 404
  | "conflict" // 409
  | "payload_too_large" // 413
  | "rate_limited" // 429
  | "unavailable" // 503
  | "internal"; // 500

const CODE_BY_STATUS: Record<number, ErrorCode> = {
  400: "invalid_request",
  401: "unauthorized",
  403: "forbidden",
  404: "not_found",
  409: "conflict",
  413: "payload_too_large",
  429: "rate_limited",
  500: "internal",
  503: "unavailable",
};

/** The base class of every error this package throws (aborts aside). */
export class RollcallError extends Error {
  override name = "RollcallError";
}

/** The server answered with an error status and (usually) the contract's error body. */
export class ApiError extends RollcallError {
  override name = "ApiError";
  /** The contract's error code; for a body that has none, derived from the status. */
  readonly code: ErrorCode | string;
  /** The HTTP status. */
  readonly status: number;
  /** The server that answered. */
  readonly url: string;
  /** The server's `Retry-After`, in milliseconds, when it sent one. */
  readonly retryAfterMs: number | undefined;

  constructor(status: number, code: string, message: string, url: string, retryAfterMs?: number) {
    super(`${code}: ${message} (HTTP ${status} from ${url})`);
    this.status = status;
    this.code = code;
    this.url = url;
    this.retryAfterMs = retryAfterMs;
  }

  /** Builds the error from a response body; a body that is not the contract's shape keeps the status. */
  static fromBody(status: number, body: string, url: string, retryAfterMs?: number): ApiError {
    let code: string = CODE_BY_STATUS[status] ?? (status >= 500 ? "internal" : "invalid_request");
    let message = body.trim().slice(0, 200) || `HTTP ${status}`;
    try {
      const parsed: unknown = JSON.parse(body);
      const error = (parsed as { error?: { code?: unknown; message?: unknown } } | null)?.error;
      if (error && typeof error.code === "string") code = error.code;
      if (error && typeof error.message === "string") message = error.message;
    } catch {
      // Not JSON (a proxy's page, say): keep the status-derived code.
    }
    return new ApiError(status, code, message, url, retryAfterMs);
  }
}

/** No usable answer: the server could not be reached, the call timed out, or the answer was malformed. */
export class TransportError extends RollcallError {
  override name = "TransportError";
  readonly url: string;
  /** True when the connection was never established, so nothing was sent. */
  readonly connectFailed: boolean;

  constructor(message: string, url: string, options: { cause?: unknown; connectFailed?: boolean } = {}) {
    super(`${message} (${url})`, { cause: options.cause });
    this.url = url;
    this.connectFailed = options.connectFailed ?? false;
  }
}

/** The worker handle has stopped; the call cannot be made. */
export class StoppedError extends RollcallError {
  override name = "StoppedError";
}

/** True for an {@link ApiError} with the given code. */
export function isApiError(error: unknown, code?: ErrorCode): error is ApiError {
  return error instanceof ApiError && (code === undefined || error.code === code);
}
