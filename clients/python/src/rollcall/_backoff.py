"""Timing arithmetic for heartbeats and retries, as pure functions with the
randomness ``r`` (uniform in [0, 1)) passed in; the same rules as the Rust and
TypeScript clients.

- :func:`heartbeat_delay`: the interval ±10 %, so a fleet started together
  does not heartbeat in lockstep; +10 % stays far inside ``stale_after``.
- :func:`retry_delay`: exponential backoff with "equal jitter": attempt n
  waits between half and all of min(cap, base · 2ⁿ⁻¹). The cap is the
  heartbeat interval, so a worker notices a returning server within one
  interval.
"""

from __future__ import annotations

import math

HEARTBEAT_JITTER = 0.1


def _clamp_unit(r: float) -> float:
    return 0.0 if math.isnan(r) else min(1.0, max(0.0, r))


def heartbeat_delay(interval: float, r: float) -> float:
    """The delay before the next heartbeat: ``interval · (0.9 + 0.2 · r)``."""
    return interval * (1 - HEARTBEAT_JITTER + 2 * HEARTBEAT_JITTER * _clamp_unit(r))


def retry_ceiling(attempt: int, base: float, cap: float) -> float:
    """The ceiling of attempt ``attempt`` (1-based) before jitter."""
    doublings = min(max(attempt, 1) - 1, 31)
    return float(min(cap, base * 2**doublings))


def retry_delay(attempt: int, base: float, cap: float, r: float) -> float:
    """The delay before retry ``attempt``: between half and all of the ceiling."""
    ceiling = retry_ceiling(attempt, base, cap)
    return ceiling / 2 + ceiling / 2 * _clamp_unit(r)
