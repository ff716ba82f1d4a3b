"""The errors a rollcall call can end with.

- :class:`ApiError`: the server answered with a non-2xx status; ``code`` is the
  contract's error code (``unauthorized``, ``not_found``, …).
- :class:`TransportError`: no answer (connection refused, reset, timed out) or
  an answer that is not what the contract promises.
- :class:`StoppedError`: the worker handle has stopped.
"""

from __future__ import annotations

import json
from typing import Literal, Optional


ErrorCode = Literal[
    "invalid_request",  # 400
    "unauthorized",  # 401
    "forbidden",  # 403
    "not_found",  # 404
    "conflict",  # 409
    "payload_too_large",  # 413
    "rate_limited",  # 429
    "unavailable",  # 503
    "internal",  # 500
]

_CODE_BY_STATUS = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "payload_too_large",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
}


class RollcallError(Exception):
    """The base class of every error this package raises."""


class ApiError(RollcallError):
    """The server answered with an error status and (usually) the contract's error body."""

    def __init__(
        self, status: int, code: str, message: str, url: str, retry_after: Optional[float] = None
    ) -> None:
        super().__init__(f"{code}: {message} (HTTP {status} from {url})")
        self.status = status
        #: The contract's error code; for a body without one, derived from the status.
        self.code = code
        self.message = message
        self.url = url
        #: The server's ``Retry-After``, in seconds, when it sent one.
        self.retry_after = retry_after

    @classmethod
    def from_body(
        cls, status: int, body: bytes, url: str, retry_after: Optional[float] = None
    ) -> ApiError:
        code = _CODE_BY_STATUS.get(status, "internal" if status >= 500 else "invalid_request")
        message = body.decode("utf-8", "replace").strip()[:200] or f"HTTP {status}"
        try:
            parsed = json.loads(body)
            error = parsed.get("error") if isinstance(parsed, dict) else None
            if isinstance(error, dict):
                if isinstance(error.get("code"), str):
                    code = error["code"]
                if isinstance(error.get("message"), str):
                    message = error["message"]
        except ValueError:
            pass  # not JSON (a proxy's page, say): keep the status-derived code
        return cls(status, code, message, url, retry_after)


class TransportError(RollcallError):
    """No usable answer: unreachable, timed out, or a malformed answer."""

    def __init__(self, message: str, url: str, *, connect_failed: bool = False) -> None:
        super().__init__(f"{message} ({url})")
        self.url = url
        #: True when the connection was never established, so nothing was sent.
        self.connect_failed = connect_failed


class StoppedError(RollcallError):
    """The worker handle has stopped."""
