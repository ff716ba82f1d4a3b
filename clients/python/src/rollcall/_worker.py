"""Worker handles: :class:`Worker` heartbeats in a background thread,
:class:`AsyncWorker` in an asyncio task.

Each runs one step plus a thin loop: a step registers when there is no valid
session and heartbeats otherwise, and returns how long to wait before the
next one. Drain and stop are handled between steps, so the server sees one
call of this worker at a time.

========================================================  ==============================================
outcome                                                   next step
========================================================  ==============================================
registered / heartbeat acknowledged                       after the server's interval ±10 %
401 on a heartbeat (token rotated, revoked, forgotten)    register again at once (``on_replaced``)
no answer, 5xx, 429                                       backoff with jitter, capped at the interval
registration refused (400, 401, 403, …)                   the handle stops: options or token are wrong
========================================================  ==============================================

Leaving the ``with`` block says goodbye: reason ``shutdown`` when it ends
normally (or by Ctrl-C, or ``sys.exit(0)``), ``exited`` when an exception (or
a non-zero ``sys.exit``) ends it. On SIGTERM every handle says goodbye, then
the program's own SIGTERM handler runs if it had one (the program decides
when to exit; ``w.stopping`` is set), else the process ends as SIGTERM would
have ended it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import random
import signal
import socket
import threading
import time
from collections import deque
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Mapping, Optional, Set, Tuple, Type, Union

from ._backoff import heartbeat_delay, retry_delay
from ._errors import ApiError, RollcallError, StoppedError
from ._types import HeartbeatAck, Labels, Worker as WorkerRecord, WorkerStatus

if TYPE_CHECKING:
    from ._client import AsyncRollcall, Rollcall

log = logging.getLogger("rollcall")

#: The interval assumed before the server has given one (its default): it caps the first backoff.
ASSUMED_HEARTBEAT_INTERVAL = 30.0

#: Registration answers that retrying will not change: the handle stops.
FATAL_REGISTRATION = {400, 401, 403, 404, 409, 413}


def _exit_reason(exc_type: Optional[Type[BaseException]], exc: Optional[BaseException]) -> Tuple[str, Optional[int]]:
    """The goodbye for a ``with`` block that ends: ``shutdown``, or ``exited``
    with the exit code when ``sys.exit(n)`` ends the process with a failure
    (a message instead of a number exits 1). Any other exception is
    ``exited`` without a code: a crash, but the process may live on."""
    if exc_type is None or issubclass(exc_type, (KeyboardInterrupt, asyncio.CancelledError)):
        return "shutdown", None
    if isinstance(exc, SystemExit):
        if exc.code in (0, None):
            return "shutdown", None
        if isinstance(exc.code, int):  # bool included: sys.exit(True) exits 1
            code = int(exc.code)
            return "exited", code if 0 <= code <= 255 else None
        return "exited", 1
    return "exited", None


class _Core:
    """The state and the decisions both handles share (no I/O here)."""

    def __init__(
        self,
        name: str,
        machine: Optional[Union[str, Mapping[str, Any]]] = None,
        *,
        hostname: Optional[str] = None,
        machine_labels: Optional[Labels] = None,
        labels: Optional[Labels] = None,
        heartbeat_interval_ms: Optional[int] = None,
        stale_after_ms: Optional[int] = None,
        handle_signals: bool = True,
        initial_backoff: float = 0.25,
        on_online: Optional[Callable[[WorkerRecord], None]] = None,
        on_heartbeat: Optional[Callable[[HeartbeatAck], None]] = None,
        on_resumed: Optional[Callable[[HeartbeatAck], None]] = None,
        on_replaced: Optional[Callable[[str, ApiError], None]] = None,
        on_error: Optional[Callable[[BaseException], None]] = None,
    ) -> None:
        host = socket.gethostname() or "localhost"
        self.name = name
        self._register_args: Dict[str, Any] = {
            "name": name,
            "machine": machine if machine is not None else host,
            "hostname": hostname if hostname is not None else (host if not isinstance(machine, Mapping) else None),
            "machine_labels": machine_labels,
            "labels": labels,
            "heartbeat_interval_ms": heartbeat_interval_ms,
            "stale_after_ms": stale_after_ms,
        }
        self._handle_signals = handle_signals
        self._initial_backoff = initial_backoff
        self._assumed_interval = (heartbeat_interval_ms / 1000) if heartbeat_interval_ms else ASSUMED_HEARTBEAT_INTERVAL
        self._on_online = on_online
        self._on_heartbeat = on_heartbeat
        self._on_resumed = on_resumed
        self._on_replaced = on_replaced
        self._on_error = on_error
        #: The current session's worker id and token; None while registering.
        self._session: Optional[Tuple[str, str]] = None
        self._interval: Optional[float] = None
        self._want_draining = False
        self._drain_pending = False
        self._stop_reason = "shutdown"
        #: With ``exited``: how the process ended, as (``exit_code``, ``signal``).
        self._stop_exit: Tuple[Optional[int], Optional[int]] = (None, None)
        #: Where the handle is: ``registering``, ``registered`` or ``stopped``.
        self.phase = "registering"
        #: The worker's id once registered (kept while registering again and after stopping).
        self.id: Optional[str] = None
        #: The current (or last) session number: fence work on (``id``, ``session``).
        self.session: Optional[int] = None
        #: The status the server last reported.
        self.status: Optional[WorkerStatus] = None
        self.deadline_at: Optional[str] = None
        #: How many times the handle registered (more than one after a 401).
        self.registrations = 0
        #: Failed steps in a row (0 while all is well).
        self.consecutive_failures = 0
        #: The most recent failure, cleared by the next success.
        self.last_error: Optional[BaseException] = None
        #: Set when the handle starts stopping: the job loop should stop taking work.
        self.stopping = threading.Event()
        self._ready: concurrent.futures.Future[WorkerRecord] = concurrent.futures.Future()

    def _interval_s(self) -> float:
        return self._interval if self._interval is not None else self._assumed_interval

    def _next_heartbeat(self) -> float:
        return heartbeat_delay(self._interval_s(), random.random())

    def _registered(self, worker: WorkerRecord, token: str) -> None:
        self._session = (worker["id"], token)
        self._drain_pending = self._want_draining
        self._succeeded()
        self.phase = "registered"
        self.registrations += 1
        self._publish(worker)
        log.info("registered with rollcall: worker %s session %s", worker["id"], worker["session"])
        if not self._ready.done():
            self._ready.set_result(worker)
        self._call(self._on_online, worker)

    def _acked(self, ack: HeartbeatAck) -> float:
        self._interval = ack["heartbeat_interval_ms"] / 1000
        if ack["resumed"] and self._want_draining:
            self._drain_pending = True  # a resumed session starts online; a drained worker stays drained
        self._succeeded()
        self.session = ack["session"]
        self.status = ack["status"]
        self.deadline_at = ack["deadline_at"]
        self._call(self._on_heartbeat, ack)
        if ack["resumed"]:
            log.info("rollcall had marked worker %s offline; this heartbeat brought it back", self.id)
            self._call(self._on_resumed, ack)
        return heartbeat_delay(self._interval_s(), random.random())

    def _token_refused(self, error: ApiError) -> None:
        worker_id = self._session[0] if self._session else (self.id or "")
        self._session = None
        self.phase = "registering"
        self.last_error = error
        log.warning(
            "rollcall refused the token of worker %s (registered again elsewhere, or deleted): registering again",
            worker_id,
        )
        self._call(self._on_replaced, worker_id, error)

    def _registration_refused(self, error: ApiError) -> bool:
        """True when the refusal is final: the handle then stops."""
        if error.status not in FATAL_REGISTRATION:
            return False
        log.error("rollcall refused the registration of %s: %s", self.name, error)
        self.last_error = error
        if not self._ready.done():
            self._ready.set_exception(error)
        self._call(self._on_error, error)
        return True

    def _succeeded(self) -> None:
        self.consecutive_failures = 0
        self.last_error = None

    def _failed(self, error: BaseException) -> float:
        self.consecutive_failures += 1
        self.last_error = error
        cap = self._interval_s()
        delay = retry_delay(self.consecutive_failures, self._initial_backoff, cap, random.random())
        if isinstance(error, ApiError) and error.retry_after is not None:
            delay = max(delay, min(error.retry_after, cap))  # honour the server, never past staleness
        log.warning("rollcall call failed (attempt %d, retry in %.2fs): %s", self.consecutive_failures, delay, error)
        self._call(self._on_error, error)
        return delay

    def _publish(self, worker: WorkerRecord) -> None:
        self.id = worker["id"]
        self.session = worker["session"]
        self.status = worker["status"]
        self.deadline_at = worker["deadline_at"]
        self._interval = worker["heartbeat_interval_ms"] / 1000

    def _stopped(self) -> None:
        self.phase = "stopped"
        if not self._ready.done():
            self._ready.set_exception(StoppedError("the worker handle stopped before it registered"))

    @staticmethod
    def _call(callback: Optional[Callable[..., None]], *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:  # a callback's bug must not stop the heartbeats
            log.exception("rollcall worker callback failed")


class Worker(_Core):
    """A worker whose heartbeats run in a background thread.

    >>> with rc.worker(name="render-1") as w:
    ...     while not w.stopping.is_set():
    ...         process(next_job())
    """

    def __init__(self, client: Rollcall, name: str, machine: Optional[Union[str, Mapping[str, Any]]] = None, **options: Any) -> None:
        super().__init__(name, machine, **options)
        self._enroll = client
        self._wake = threading.Event()
        self._commands: Deque[concurrent.futures.Future[WorkerRecord]] = deque()
        self._thread: Optional[threading.Thread] = None
        self._done: concurrent.futures.Future[Optional[WorkerRecord]] = concurrent.futures.Future()
        self._lock = threading.RLock()

    def start(self) -> Worker:
        """Starts registering and heartbeating in the background (idempotent)."""
        with self._lock:
            if self._thread is None and not self.stopping.is_set():
                self._thread = threading.Thread(target=self._run, name=f"rollcall-{self.name}", daemon=True)
                self._thread.start()
                if self._handle_signals:
                    _sync_signals.add(self)
        return self

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        try:
            reason, code = _exit_reason(exc_type, exc)
            self.stop(reason, exit_code=code)
        except RollcallError as e:
            # The block's own exception matters more; the server will mark the worker stale.
            log.warning("rollcall goodbye failed: %s", e)

    def wait_ready(self, timeout: Optional[float] = None) -> WorkerRecord:
        """Waits until registered; raises the refusal, :class:`StoppedError`, or ``TimeoutError``."""
        try:
            return self._ready.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"not registered within {timeout} s") from None

    def drain(self, timeout: Optional[float] = None) -> WorkerRecord:
        """Drains the worker: it keeps heartbeating but should take no new work.
        Remembered: a later session (after a 401) is drained too."""
        if self.stopping.is_set() or self._thread is None:
            raise StoppedError("the worker handle is not running")
        future: concurrent.futures.Future[WorkerRecord] = concurrent.futures.Future()
        self._commands.append(future)
        self._wake.set()
        return future.result(timeout)

    def stop(
        self,
        reason: str = "shutdown",
        timeout: Optional[float] = None,
        *,
        exit_code: Optional[int] = None,
        signal: Optional[int] = None,
    ) -> Optional[WorkerRecord]:
        """Says goodbye (offline with ``reason``) and stops heartbeating.
        Idempotent. Returns the worker's record, or None when there was no
        session to end; raises if the goodbye failed (the handle stops anyway).

        A handle that supervises a process says how it ended with
        ``stop("exited", exit_code=n)`` or ``stop("exited", signal=n)``: exit
        code 0 is a graceful end, any other code or a signal a crash."""
        with self._lock:
            if not self.stopping.is_set():
                self._stop_reason = reason
                self._stop_exit = (exit_code, signal)
                self.stopping.set()
                self._wake.set()
            thread = self._thread
        if thread is None:
            if not self._done.done():
                self._stopped()
                self._done.set_result(None)
        elif thread is not threading.current_thread():
            thread.join(timeout)
        return self._done.result(0) if self._done.done() else None

    # the background thread

    def _run(self) -> None:
        next_at = time.monotonic()
        try:
            while True:
                self._wake.wait(max(0.0, next_at - time.monotonic()))
                self._wake.clear()
                while self._commands:
                    self._drain_now(self._commands.popleft())
                if self.stopping.is_set():
                    break
                if time.monotonic() >= next_at:
                    started = time.monotonic()
                    next_at = started + self._step()
            result: Optional[WorkerRecord] = None
            if self._session is not None:
                worker_id, token = self._session
                code, sig = self._stop_exit
                result = self._enroll.offline(worker_id, self._stop_reason, exit_code=code, signal=sig, token=token)
                self._publish(result)
            self._done.set_result(result)
        except BaseException as e:  # noqa: BLE001 - handed to stop()'s caller
            self._done.set_exception(e)
        finally:
            self._stopped()
            for future in self._commands:
                future.set_exception(StoppedError("the worker handle stopped"))
            _sync_signals.discard(self)

    def _step(self) -> float:
        if self._session is None:
            try:
                registration = self._enroll.register(**self._register_args)
            except ApiError as e:
                if self._registration_refused(e):
                    self.stopping.set()
                    return 0.0
                return self._failed(e)
            except RollcallError as e:
                return self._failed(e)
            self._registered(registration["worker"], registration["token"])
            return self._next_heartbeat()
        if self._drain_pending:
            try:
                self._drain_call()
            except ApiError as e:
                if e.status == 401:
                    self._token_refused(e)
                    return 0.0
            except RollcallError:
                pass  # stays pending for the next step
        assert self._session is not None
        worker_id, token = self._session
        try:
            ack = self._enroll.heartbeat(worker_id, token=token)
        except ApiError as e:
            if e.status == 401:
                self._token_refused(e)
                return 0.0
            return self._failed(e)
        except RollcallError as e:
            return self._failed(e)
        return self._acked(ack)

    def _drain_call(self) -> WorkerRecord:
        assert self._session is not None
        worker_id, token = self._session
        worker = self._enroll.drain(worker_id, token=token)
        self._drain_pending = False
        self._publish(worker)
        return worker

    def _drain_now(self, future: concurrent.futures.Future[WorkerRecord]) -> None:
        self._want_draining = True
        if self._session is None:
            self._drain_pending = True
            future.set_exception(RollcallError("not registered yet: the drain is applied once registered"))
            return
        try:
            future.set_result(self._drain_call())
        except ApiError as e:
            self._drain_pending = True
            if e.status == 401:
                self._token_refused(e)
            future.set_exception(e)
        except BaseException as e:  # noqa: BLE001 - handed to drain()'s caller
            self._drain_pending = True
            future.set_exception(e)


class AsyncWorker(_Core):
    """A worker whose heartbeats run in an asyncio task.

    >>> async with rc.aworker(name="render-1") as w:
    ...     while not w.stopping.is_set():
    ...         await process(await next_job())
    """

    def __init__(
        self,
        client: AsyncRollcall,
        name: str,
        machine: Optional[Union[str, Mapping[str, Any]]] = None,
        *,
        owns_client: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(name, machine, **options)
        self._enroll = client
        self._owns_client = owns_client
        self._wake: Optional[asyncio.Event] = None
        self._lock: Optional[asyncio.Lock] = None
        self._task: Optional[asyncio.Task[Optional[WorkerRecord]]] = None

    def start(self) -> AsyncWorker:
        """Starts registering and heartbeating in a task of the running loop (idempotent)."""
        if self._task is None and not self.stopping.is_set():
            self._wake = asyncio.Event()
            self._lock = asyncio.Lock()
            self._task = asyncio.get_running_loop().create_task(self._run())
            if self._handle_signals:
                _async_signals.add(self)
        return self

    async def __aenter__(self) -> AsyncWorker:
        return self.start()

    async def __aexit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        try:
            reason, code = _exit_reason(exc_type, exc)
            await self.stop(reason, exit_code=code)
        except RollcallError as e:
            log.warning("rollcall goodbye failed: %s", e)

    async def wait_ready(self, timeout: Optional[float] = None) -> WorkerRecord:
        """Waits until registered; raises the refusal, :class:`StoppedError`, or ``asyncio.TimeoutError``."""
        return await asyncio.wait_for(asyncio.wrap_future(self._ready), timeout)

    async def drain(self) -> WorkerRecord:
        """Drains the worker (see :meth:`Worker.drain`)."""
        if self.stopping.is_set() or self._lock is None:
            raise StoppedError("the worker handle is not running")
        async with self._lock:
            self._want_draining = True
            if self._session is None:
                self._drain_pending = True
                raise RollcallError("not registered yet: the drain is applied once registered")
            try:
                return await self._drain_call()
            except ApiError as e:
                self._drain_pending = True
                if e.status == 401:
                    self._token_refused(e)
                    self._wake_up()
                raise

    async def stop(
        self, reason: str = "shutdown", *, exit_code: Optional[int] = None, signal: Optional[int] = None
    ) -> Optional[WorkerRecord]:
        """Says goodbye and stops heartbeating (see :meth:`Worker.stop`)."""
        if not self.stopping.is_set():
            self._stop_reason = reason
            self._stop_exit = (exit_code, signal)
            self.stopping.set()
            self._wake_up()
        if self._task is None:
            self._stopped()
            return None
        try:
            return await asyncio.shield(self._task)
        finally:
            if self._owns_client:
                await self._enroll.aclose()
                self._owns_client = False

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> Optional[WorkerRecord]:
        assert self._wake is not None and self._lock is not None
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            while not self.stopping.is_set():
                try:
                    await asyncio.wait_for(self._wake.wait(), max(0.0, next_at - loop.time()))
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
                if self.stopping.is_set():
                    break
                if loop.time() >= next_at:
                    started = loop.time()
                    async with self._lock:
                        next_at = started + await self._step()
            async with self._lock:
                if self._session is None:
                    return None
                worker_id, token = self._session
                code, sig = self._stop_exit
                result = await self._enroll.offline(worker_id, self._stop_reason, exit_code=code, signal=sig, token=token)
                self._publish(result)
                return result
        finally:
            self._stopped()
            _async_signals.discard(self)

    async def _step(self) -> float:
        if self._session is None:
            try:
                registration = await self._enroll.register(**self._register_args)
            except ApiError as e:
                if self._registration_refused(e):
                    self.stopping.set()
                    return 0.0
                return self._failed(e)
            except RollcallError as e:
                return self._failed(e)
            self._registered(registration["worker"], registration["token"])
            return self._next_heartbeat()
        if self._drain_pending:
            try:
                await self._drain_call()
            except ApiError as e:
                if e.status == 401:
                    self._token_refused(e)
                    return 0.0
            except RollcallError:
                pass
        assert self._session is not None
        worker_id, token = self._session
        try:
            ack = await self._enroll.heartbeat(worker_id, token=token)
        except ApiError as e:
            if e.status == 401:
                self._token_refused(e)
                return 0.0
            return self._failed(e)
        except RollcallError as e:
            return self._failed(e)
        return self._acked(ack)

    async def _drain_call(self) -> WorkerRecord:
        assert self._session is not None
        worker_id, token = self._session
        worker = await self._enroll.drain(worker_id, token=token)
        self._drain_pending = False
        self._publish(worker)
        return worker


_Handler = Union[Callable[[int, Optional[FrameType]], Any], int, None]


class _SyncSignals:
    """The SIGTERM handler shared by every running :class:`Worker` (installed from the main thread only)."""

    def __init__(self) -> None:
        self._workers: Set[Worker] = set()
        self._previous: _Handler = None
        self._installed = False
        self._lock = threading.RLock()

    def add(self, worker: Worker) -> None:
        with self._lock:
            self._workers.add(worker)
            if not self._installed and threading.current_thread() is threading.main_thread():
                self._previous = signal.getsignal(signal.SIGTERM)
                signal.signal(signal.SIGTERM, self._handle)
                self._installed = True

    def discard(self, worker: Worker) -> None:
        with self._lock:
            self._workers.discard(worker)

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            try:
                worker.stop()
            except RollcallError as e:
                log.warning("rollcall goodbye on SIGTERM failed: %s", e)
        _chain(signum, frame, self._previous)


class _AsyncSignals:
    """The SIGTERM handler shared by every running :class:`AsyncWorker` of a loop."""

    def __init__(self) -> None:
        self._workers: Set[AsyncWorker] = set()
        self._previous: _Handler = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    def add(self, worker: AsyncWorker) -> None:
        self._workers.add(worker)
        loop = asyncio.get_running_loop()
        if self._loop is not loop and threading.current_thread() is threading.main_thread():
            try:
                self._previous = signal.getsignal(signal.SIGTERM)
                loop.add_signal_handler(signal.SIGTERM, self._handle)
                self._loop = loop
            except (NotImplementedError, RuntimeError):
                pass  # not on this platform or loop: no signal handling

    def discard(self, worker: AsyncWorker) -> None:
        self._workers.discard(worker)

    def _handle(self) -> None:
        workers = list(self._workers)
        loop = self._loop
        assert loop is not None

        async def goodbye() -> None:
            results = await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    log.warning("rollcall goodbye on SIGTERM failed: %s", r)
            loop.remove_signal_handler(signal.SIGTERM)
            self._loop = None
            _chain(signal.SIGTERM, None, self._previous)

        loop.create_task(goodbye())


def _chain(signum: int, frame: Optional[FrameType], previous: _Handler) -> None:
    """After the goodbye: the program's own handler if it had one, else what the signal would have done."""
    if callable(previous):
        signal.signal(signum, previous)
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        signal.signal(signum, signal.SIG_IGN)
    else:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


_sync_signals = _SyncSignals()
_async_signals = _AsyncSignals()
