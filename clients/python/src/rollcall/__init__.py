"""rollcall for Python: typed calls over the HTTP contract, fail-over across
replicas, and worker handles that register, heartbeat and say goodbye.

>>> from rollcall import Rollcall
>>> rc = Rollcall("http://127.0.0.1:7373", token="rc_enroll_…")
>>> with rc.worker(name="render-1") as w:   # a background thread heartbeats
...     run_jobs(until=w.stopping)
"""

from ._client import AsyncRollcall, Rollcall
from ._errors import ApiError, ErrorCode, RollcallError, StoppedError, TransportError
from ._types import (
    BatchResult,
    CrashKind,
    CreatedToken,
    Event,
    EventType,
    HeartbeatAck,
    Machine,
    MachineWithWorkers,
    OfflineClass,
    Page,
    Registration,
    Token,
    TokenScope,
    Worker as WorkerRecord,
    crash_kind,
    offline_class,
)
from ._worker import AsyncWorker, Worker

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "AsyncRollcall",
    "AsyncWorker",
    "BatchResult",
    "CrashKind",
    "CreatedToken",
    "ErrorCode",
    "Event",
    "EventType",
    "HeartbeatAck",
    "Machine",
    "MachineWithWorkers",
    "OfflineClass",
    "Page",
    "Registration",
    "Rollcall",
    "RollcallError",
    "StoppedError",
    "Token",
    "TokenScope",
    "TransportError",
    "Worker",
    "WorkerRecord",
    "crash_kind",
    "offline_class",
]
