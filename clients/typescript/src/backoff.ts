/**
 * Timing arithmetic for heartbeats and retries, as pure functions with the
 * randomness (`r`, uniform in [0, 1)) passed in, the same rules as the Rust
 * client:
 *
 * - {@link heartbeatDelay}: the interval ±10 %, so a fleet started together
 *   does not heartbeat in lockstep; +10 % stays far inside `stale_after`
 *   (at least 2 × the interval).
 * - {@link retryDelay}: exponential backoff with "equal jitter": attempt n
 *   waits between half and all of min(cap, base · 2ⁿ⁻¹). The cap is the
 *   heartbeat interval, so a worker notices a returning server within one
 *   interval.
 */

export const HEARTBEAT_JITTER = 0.1;

function clampUnit(r: number): number {
  return Number.isNaN(r) ? 0 : Math.min(1, Math.max(0, r));
}

/** The delay before the next heartbeat: `interval · (0.9 + 0.2 · r)`. */
export function heartbeatDelay(intervalMs: number, r: number): number {
  return intervalMs * (1 - HEARTBEAT_JITTER + 2 * HEARTBEAT_JITTER * clampUnit(r));
}

/** The ceiling of attempt `attempt` (1-based) before jitter. */
export function retryCeiling(attempt: number, baseMs: number, capMs: number): number {
  const doublings = Math.min(Math.max(attempt, 1) - 1, 31);
  return Math.min(capMs, baseMs * 2 ** doublings);
}

/** The delay before retry number `attempt`: between half and all of {@link retryCeiling}. */
export function retryDelay(attempt: number, baseMs: number, capMs: number, r: number): number {
  const ceiling = retryCeiling(attempt, baseMs, capMs);
  return ceiling / 2 + (ceiling / 2) * clampUnit(r);
}
