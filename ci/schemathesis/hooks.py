"""schemathesis hooks for rollcall (loaded by schemathesis.toml).

One rule of a registration cannot be written in JSON Schema: with both
intervals given, stale_after_ms must be at least twice
heartbeat_interval_ms (the document says so in words). Bodies that break
only that rule are schema-valid yet refused with 400: they are not
generated where hooks apply (fuzzing, stateful), and the coverage phase's
refusal of them, which names that rule, is not a failure.

The health endpoints' window has rules between its parameters, and one
that depends on the clock and the server's retention: not both `window`
and `from`/`to`, no `to` without `from`, the window must end after it
begins and not begin in the future or before the history's retention, and
at most one bucket per millisecond. A 400 that names one of those rules is
not a failure either. Nor is a 400 for a cursor the server did not issue:
cursors are opaque, and no schema can say which strings a server issued.
Nor is a 400 for an alert rule that names a channel the server's config file
does not declare: no schema can say which channels a server has.

The stateful phase feeds values from one answer into the next request
without checking them against that request's schema: a batch of
heartbeats answers each entry's `worker_id` as it was sent (the contract
echoes it), and a link then passes it to the event list or stream as
`?worker_id=`. A 400 for such a value, one that does not match the
parameter's published pattern, answers a request that was not
schema-valid, and is not a failure.
"""

import re

import schemathesis

# The pattern the event list and stream publish for `?worker_id=`.
_WORKER_ID = re.compile(r"^wkr_[0-9A-HJKMNP-TV-Z]{26}$")

_WINDOW_RULES = (
    "give either window or from/to, not both",
    "to needs from",
    "the window must end after it begins",
    "the window begins before the health history's retention",
    "buckets do not fit a window of",
)


def _window_rule(case, response) -> bool:  # type: ignore[no-untyped-def]
    op = case.operation
    return (
        op is not None
        and op.method.upper() == "GET"
        and op.path.endswith("/health")
        and response is not None
        and response.status_code == 400
        and any(rule in response.text for rule in _WINDOW_RULES)
    )


def _unpublished_worker_id(case, response) -> bool:  # type: ignore[no-untyped-def]
    op = case.operation
    if op is None or op.method.upper() != "GET" or not op.path.startswith("/v1/events"):
        return False
    if response is None or response.status_code != 400 or "worker_id: " not in response.text:
        return False
    value = (case.query or {}).get("worker_id")
    return isinstance(value, str) and _WORKER_ID.match(value) is None


def _unknown_channel(case, response) -> bool:  # type: ignore[no-untyped-def]
    """An alert rule naming a channel the server's config does not declare."""
    op = case.operation
    return (
        op is not None
        and op.method.upper() == "PUT"
        and op.path.startswith("/v1/alert-rules/")
        and response is not None
        and response.status_code == 400
        and "no [[channel]] is named" in response.text
    )


def _too_tight(case) -> bool:  # type: ignore[no-untyped-def]
    op = case.operation
    body = case.body
    if op is None or op.method.upper() != "POST" or op.path != "/v1/workers":
        return False
    if not isinstance(body, dict):
        return False
    hb, stale = body.get("heartbeat_interval_ms"), body.get("stale_after_ms")
    whole = (int, float)
    if isinstance(hb, bool) or isinstance(stale, bool):
        return False
    return isinstance(hb, whole) and isinstance(stale, whole) and stale < 2 * hb


@schemathesis.hook
def filter_case(ctx, case):  # type: ignore[no-untyped-def]
    return not _too_tight(case)


@schemathesis.hook
def filter_failure(ctx, failure, case, response):  # type: ignore[no-untyped-def]
    refused_for_the_rule = (
        response is not None
        and response.status_code == 400
        and "must be at least 2 × heartbeat_interval_ms" in response.text
    )
    if _window_rule(case, response):
        return False
    if _unpublished_worker_id(case, response):
        return False
    if _unknown_channel(case, response):
        return False
    if (
        response is not None
        and response.status_code == 400
        and "is not one this server issued" in response.text
    ):
        return False
    return not (_too_tight(case) and refused_for_the_rule)
