"""The shapes of the HTTP contract as typed dictionaries, with the values the
server sends on the wire (``"online"``, ``"worker.registered"``)."""

from __future__ import annotations

import sys
from typing import Dict, Generic, List, Literal, Optional, TypeVar, Union

if sys.version_info >= (3, 11):  # pragma: no cover - depends on the interpreter
    from typing import TypedDict
else:  # Generic TypedDicts need typing_extensions before 3.11.
    from typing_extensions import TypedDict

WorkerStatus = Literal["online", "draining", "offline"]
MachineStatus = Literal["online", "offline"]
OfflineReason = Literal["shutdown", "stale", "exited", "replaced", "revoked"]
EventReason = Literal["registered", "heartbeat", "shutdown", "stale", "exited", "replaced", "revoked"]
EventType = Literal[
    "worker.registered",
    "worker.online",
    "worker.draining",
    "worker.offline",
    "worker.deleted",
    "machine.online",
    "machine.offline",
    "incident.opened",
    "incident.resolved",
]
TokenKind = Literal["admin", "enroll", "read", "worker"]
#: What kind of end a ``worker.offline`` was (see :func:`offline_class`).
OfflineClass = Literal["graceful", "crash", "administrative"]
#: The kinds of crash, by the offline reason that recorded it.
CrashKind = Literal["stale", "replaced", "exited"]
Labels = Dict[str, str]

T = TypeVar("T")


class Worker(TypedDict):
    id: str
    name: str
    machine_id: str
    status: WorkerStatus
    offline_reason: Optional[OfflineReason]
    session: int
    labels: Labels
    heartbeat_interval_ms: int
    stale_after_ms: int
    registered_at: str
    last_heartbeat_at: Optional[str]
    deadline_at: Optional[str]
    status_changed_at: str


class Machine(TypedDict):
    id: str
    hostname: Optional[str]
    labels: Labels
    status: MachineStatus
    workers_online: int
    workers_total: int
    first_seen_at: str
    last_seen_at: str
    status_changed_at: str


class MachineWithWorkers(Machine):
    workers: List[Worker]


class Event(TypedDict):
    seq: int
    at: str
    type: EventType
    worker_id: Optional[str]
    machine_id: str
    reason: Optional[EventReason]
    session: Optional[int]
    detection_lag_ms: Optional[int]
    #: ``exited`` offlines whose process exited: its exit code (0–255).
    exit_code: Optional[int]
    #: ``exited`` offlines whose process a signal ended: the signal (1–64).
    signal: Optional[int]
    #: ``incident.*`` events: the incident (``machine_id`` is ``"*"`` for
    #: one about the whole fleet).
    incident_id: Optional[str]


class Registration(TypedDict):
    worker: Worker
    token: str


class HeartbeatAck(TypedDict):
    status: Literal["online", "draining"]
    session: int
    resumed: bool
    deadline_at: str
    heartbeat_interval_ms: int


class BatchError(TypedDict):
    code: str
    message: str


class BatchOk(TypedDict):
    worker_id: str
    ok: Literal[True]
    status: Literal["online", "draining"]
    session: int
    resumed: bool
    deadline_at: str


class BatchFailed(TypedDict):
    worker_id: str
    ok: Literal[False]
    error: BatchError


BatchResult = Union[BatchOk, BatchFailed]


class TokenScope(TypedDict):
    """Which workers an enroll token may register: the worker's machine id
    matches one of ``machines`` (``*`` stands for any run of characters;
    ``None``: any machine), and its labels carry every pair of ``labels``."""

    machines: Optional[List[str]]
    labels: Labels


class Token(TypedDict):
    id: str
    kind: TokenKind
    name: str
    created_at: str
    expires_at: Optional[str]
    last_used_at: Optional[str]
    #: Enroll tokens: the workers it may register; ``None``: any worker.
    scope: Optional[TokenScope]


class CreatedToken(TypedDict):
    id: str
    kind: TokenKind
    name: str
    token: str
    expires_at: Optional[str]
    #: Enroll tokens: the workers it may register; ``None``: any worker.
    scope: Optional[TokenScope]


class Page(TypedDict, Generic[T]):
    items: List[T]
    next_cursor: Optional[str]


class StaleCleanup(TypedDict):
    success: bool
    deleted_count: int
    marked_offline_count: int
    affected_machine_ids: List[str]


class FullCleanup(TypedDict):
    success: bool
    stale: StaleCleanup
    forgotten_workers: int
    forgotten_machines: int
    pruned_events: int
    expired_tokens: int
    duration_ms: int


def offline_class(event: Event) -> Optional[OfflineClass]:
    """The class of a ``worker.offline`` event; None for every other event.

    ``graceful``: ``shutdown``, or ``exited`` with exit code 0. ``crash``:
    ``stale``, ``replaced``, or ``exited`` with another code, a signal or
    neither (nothing says the process meant to end). ``administrative``:
    ``revoked``.
    """
    if event["type"] != "worker.offline":
        return None
    reason = event["reason"]
    if reason == "shutdown":
        return "graceful"
    if reason == "exited":
        return "graceful" if event.get("exit_code") == 0 else "crash"
    if reason in ("stale", "replaced"):
        return "crash"
    if reason == "revoked":
        return "administrative"
    return None


def crash_kind(event: Event) -> Optional[CrashKind]:
    """For a crash, its kind (``stale``, ``replaced`` or ``exited``); None otherwise."""
    if offline_class(event) != "crash":
        return None
    reason = event["reason"]
    if reason == "stale" or reason == "replaced" or reason == "exited":
        return reason
    return None
