""":class:`Rollcall` (blocking) and :class:`AsyncRollcall` (asyncio): one
typed method per call of the HTTP contract, over one or more server URLs.

Fail-over
---------
With several URLs (the replicas of a PostgreSQL deployment), a call starts at
the server that answered last and moves on to the next when that one

- cannot be connected to (always safe: nothing was sent),
- answers 503 ``unavailable`` (it did not act on the request),
- or, for calls that are safe to repeat (reads, heartbeats, drain, offline),
  times out, loses the connection or answers 502/504.

Calls that are not safe to repeat (registering, creating or deleting a token
or a worker, cleanup) are never sent twice once a server may have acted on
them: their error is raised. A call makes at most one pass over the servers;
retrying later is the caller's business (the worker handles do it).
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterator,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
    cast,
)
from urllib.parse import quote

import httpx

from ._backoff import retry_delay
from ._errors import ApiError, RollcallError, TransportError
from ._sse import Parser
from ._types import (
    BatchResult,
    CreatedToken,
    Event,
    EventType,
    FullCleanup,
    HeartbeatAck,
    Labels,
    Machine,
    MachineStatus,
    MachineWithWorkers,
    Page,
    Registration,
    StaleCleanup,
    Token,
    Worker,
    WorkerStatus,
)

if TYPE_CHECKING:
    from ._worker import AsyncWorker, Worker as WorkerHandle

DEFAULT_TIMEOUT = 10.0
#: Reconnect the event stream when nothing (not even the server's keep-alive,
#: sent at least every 15 s) arrived for this long.
STREAM_IDLE_TIMEOUT = 45.0

Params = Dict[str, Union[str, int, None]]

#: No cap on concurrent connections (as Node's fetch): a process hosting many
#: worker handles must not see heartbeats time out waiting for a pooled
#: connection. Idle connections kept for reuse are capped.
LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=100)


@dataclass
class _Call:
    method: str
    path: str
    params: Params = field(default_factory=dict)
    body: Any = None
    #: Safe to send to another server after one may have acted on it.
    safe: bool = False
    auth: bool = True
    token: Optional[str] = None
    headers: Dict[str, str] = field(default_factory=dict)
    #: A read timeout of its own (the event stream's idle timeout).
    read_timeout: Optional[float] = None


@dataclass
class _Shared:
    """The servers and which one answered last: shared with ``with_token`` copies."""

    urls: List[str]
    current: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _normalise(url: str) -> str:
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"rollcall: a server URL must be http(s)://host[:port]: {url!r}")
    if parsed.query or parsed.fragment:
        raise ValueError(f"rollcall: a server URL has no query or fragment: {url!r}")
    return url.rstrip("/")


def _retry_after(response: httpx.Response) -> Optional[float]:
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None


def _segment(value: str) -> str:
    return quote(value, safe="")


def _offline_body(reason: str, exit_code: Optional[int], signal: Optional[int]) -> Dict[str, Any]:
    body: Dict[str, Any] = {"reason": reason}
    if exit_code is not None:
        body["exit_code"] = exit_code
    if signal is not None:
        body["signal"] = signal
    return body


def _token_body(
    kind: str,
    name: str,
    expires_in_ms: Optional[int],
    machines: Optional[Sequence[str]],
    labels: Optional[Labels],
) -> Dict[str, Any]:
    body: Dict[str, Any] = {"kind": kind, "name": name}
    if expires_in_ms is not None:
        body["expires_in_ms"] = expires_in_ms
    if machines is not None or labels is not None:
        body["scope"] = {
            "machines": None if machines is None else list(machines),
            "labels": dict(labels or {}),
        }
    return body


def _machine_spec(
    machine: Union[str, Mapping[str, Any]],
    hostname: Optional[str],
    machine_labels: Optional[Labels],
) -> Dict[str, Any]:
    spec: Dict[str, Any] = {"id": machine} if isinstance(machine, str) else dict(machine)
    if hostname is not None:
        spec["hostname"] = hostname
    if machine_labels is not None:
        spec["labels"] = machine_labels
    return spec


def _stream_call(headers: Dict[str, str]) -> _Call:
    # httpx applies the read timeout to every read of the body: for the
    # stream that is the idle timeout, which the server's keep-alives reset.
    return _Call("GET", "/v1/events/stream", safe=True, headers=headers, read_timeout=STREAM_IDLE_TIMEOUT)


class _Base:
    """What the blocking and the asyncio clients share: URLs, requests, fail-over decisions."""

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        urls: Optional[Sequence[str]] = None,
        token: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        all_urls = ([url] if url else []) + list(urls or [])
        if not all_urls:
            raise ValueError("rollcall: give url or urls")
        self._shared = _Shared([_normalise(u) for u in all_urls])
        self._token = token
        self._timeout = timeout

    @property
    def urls(self) -> List[str]:
        return list(self._shared.urls)

    @property
    def token(self) -> Optional[str]:
        return self._token

    def _order(self) -> List[int]:
        n = len(self._shared.urls)
        start = self._shared.current % n
        return [(start + k) % n for k in range(n)]

    def _request(self, call: _Call, index: int) -> Tuple[str, Dict[str, str], Optional[bytes]]:
        url = self._shared.urls[index] + call.path
        headers = {"accept": "application/json", **call.headers}
        token = call.token or self._token
        if call.auth and token:
            headers["authorization"] = f"Bearer {token}"
        content = None
        if call.body is not None:
            headers["content-type"] = "application/json"
            content = json.dumps(call.body).encode()
        return url, headers, content

    def _timeout_for(self, call: _Call) -> Any:
        if call.read_timeout is None:
            return httpx.USE_CLIENT_DEFAULT
        return httpx.Timeout(self._timeout, read=call.read_timeout)

    def _answered(self, index: int) -> None:
        self._shared.current = index

    def _failed_over(self, index: int) -> None:
        self._shared.current = (index + 1) % len(self._shared.urls)

    @staticmethod
    def _status_fails_over(call: _Call, status: int) -> bool:
        return status == 503 or (call.safe and status in (502, 504))

    @staticmethod
    def _transport(call: _Call, url: str, error: httpx.HTTPError) -> Tuple[TransportError, bool]:
        connect = isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout))
        kind = "timed out" if isinstance(error, httpx.TimeoutException) else "request failed"
        return (
            TransportError(f"{kind} ({type(error).__name__}: {error})", url, connect_failed=connect),
            connect or call.safe,
        )

    @staticmethod
    def _decode(response: httpx.Response, url: str) -> Any:
        try:
            return json.loads(response.content)
        except ValueError as e:
            raise TransportError(f"the answer is not JSON (HTTP {response.status_code})", url) from e

    # Calls, described once for both clients.

    @staticmethod
    def _page_params(**params: Union[str, int, None]) -> Params:
        return {k: v for k, v in params.items() if v is not None}

    @staticmethod
    def _register_call(
        name: str,
        machine: Union[str, Mapping[str, Any]],
        hostname: Optional[str],
        machine_labels: Optional[Labels],
        labels: Optional[Labels],
        heartbeat_interval_ms: Optional[int],
        stale_after_ms: Optional[int],
    ) -> _Call:
        body: Dict[str, Any] = {"name": name, "machine": _machine_spec(machine, hostname, machine_labels)}
        if labels is not None:
            body["labels"] = labels
        if heartbeat_interval_ms is not None:
            body["heartbeat_interval_ms"] = heartbeat_interval_ms
        if stale_after_ms is not None:
            body["stale_after_ms"] = stale_after_ms
        return _Call("POST", "/v1/workers", body=body)

    @staticmethod
    def _batch_body(entries: Iterable[Union[Tuple[str, str], Mapping[str, str]]]) -> Dict[str, Any]:
        beats = []
        for entry in entries:
            if isinstance(entry, tuple):
                beats.append({"worker_id": entry[0], "token": entry[1]})
            else:
                beats.append({"worker_id": entry["worker_id"], "token": entry["token"]})
        return {"heartbeats": beats}


class Rollcall(_Base):
    """The blocking client. ``token`` is an enroll token for workers, a read
    token for dashboards, an admin token for everything.

    >>> rc = Rollcall("http://127.0.0.1:7373", token="rc_enroll_…")
    >>> with rc.worker(name="render-1") as w:  # registers, heartbeats, says goodbye
    ...     ...
    """

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        urls: Optional[Sequence[str]] = None,
        token: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        http: Optional[httpx.Client] = None,
    ) -> None:
        super().__init__(url, urls=urls, token=token, timeout=timeout)
        self._http = http or httpx.Client(timeout=timeout, limits=LIMITS)

    def with_token(self, token: str) -> Rollcall:
        """A client that sends ``token`` instead, sharing connections and fail-over state."""
        copy = Rollcall.__new__(Rollcall)
        copy.__dict__.update(self.__dict__)
        copy._token = token
        return copy

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Rollcall:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, call: _Call, *, stream: bool = False) -> httpx.Response:
        last: Optional[RollcallError] = None
        order = self._order()
        for k, index in enumerate(order):
            url, headers, content = self._request(call, index)
            try:
                request = self._http.build_request(
                    call.method, url, params=call.params or None, headers=headers, content=content,
                    timeout=self._timeout_for(call),
                )
                response = self._http.send(request, stream=stream)
            except httpx.HTTPError as e:
                error: RollcallError
                error, fail_over = self._transport(call, url, e)
            else:
                if response.is_success:
                    self._answered(index)
                    return response
                response.read()
                response.close()
                error = ApiError.from_body(response.status_code, response.content, url, _retry_after(response))
                fail_over = self._status_fails_over(call, response.status_code)
                if not fail_over:
                    self._answered(index)
            if not fail_over or k + 1 == len(order):
                raise error
            self._failed_over(index)
            last = error
        raise last or RollcallError("no server")

    def _json(self, call: _Call) -> Any:
        response = self._send(call)
        return self._decode(response, str(response.url))

    # tokens

    def create_token(
        self,
        kind: str,
        name: str,
        *,
        expires_in_ms: Optional[int] = None,
        machines: Optional[Sequence[str]] = None,
        labels: Optional[Labels] = None,
    ) -> CreatedToken:
        """``POST /v1/tokens`` (admin): an enroll or read token; the secret is in the answer only.

        ``machines`` (machine-id patterns, ``*`` for any run of characters) and
        ``labels`` (pairs every worker must carry) give an enroll token a scope:
        it then registers only the workers inside it (403 for others).
        """
        body = _token_body(kind, name, expires_in_ms, machines, labels)
        return cast(CreatedToken, self._json(_Call("POST", "/v1/tokens", body=body)))

    def list_tokens(self, *, limit: Optional[int] = None, cursor: Optional[str] = None) -> Page[Token]:
        return cast("Page[Token]", self._json(_Call("GET", "/v1/tokens", self._page_params(limit=limit, cursor=cursor), safe=True)))

    def delete_token(self, token_id: str) -> None:
        self._send(_Call("DELETE", f"/v1/tokens/{_segment(token_id)}"))

    # workers

    def register(
        self,
        name: str,
        machine: Union[str, Mapping[str, Any]],
        *,
        hostname: Optional[str] = None,
        machine_labels: Optional[Labels] = None,
        labels: Optional[Labels] = None,
        heartbeat_interval_ms: Optional[int] = None,
        stale_after_ms: Optional[int] = None,
    ) -> Registration:
        """``POST /v1/workers`` (enroll or admin): registers (again); the answer holds the new worker token."""
        call = self._register_call(name, machine, hostname, machine_labels, labels, heartbeat_interval_ms, stale_after_ms)
        return cast(Registration, self._json(call))

    def heartbeat(self, worker_id: str, *, token: Optional[str] = None) -> HeartbeatAck:
        """``POST /v1/workers/{id}/heartbeat`` with the worker's own token (default: the client's)."""
        call = _Call("POST", f"/v1/workers/{_segment(worker_id)}/heartbeat", body={}, safe=True, token=token)
        return cast(HeartbeatAck, self._json(call))

    def heartbeats(self, entries: Iterable[Union[Tuple[str, str], Mapping[str, str]]]) -> List[BatchResult]:
        """``POST /v1/heartbeats`` (enroll or admin): up to 1000 ``(worker_id, token)``; results in request order."""
        call = _Call("POST", "/v1/heartbeats", body=self._batch_body(entries), safe=True)
        return cast(List[BatchResult], self._json(call)["results"])

    def drain(self, worker_id: str, *, token: Optional[str] = None) -> Worker:
        return cast(Worker, self._json(_Call("POST", f"/v1/workers/{_segment(worker_id)}/drain", safe=True, token=token)))

    def offline(
        self,
        worker_id: str,
        reason: str = "shutdown",
        *,
        exit_code: Optional[int] = None,
        signal: Optional[int] = None,
        token: Optional[str] = None,
    ) -> Worker:
        """``POST /v1/workers/{id}/offline``: idempotent; ``reason`` is ``shutdown`` or ``exited``.

        With ``exited``, a supervisor says how its process ended: ``exit_code``
        (0–255; 0 is a graceful end, anything else a crash) or ``signal``
        (1–64, a crash), at most one of them."""
        call = _Call("POST", f"/v1/workers/{_segment(worker_id)}/offline", body=_offline_body(reason, exit_code, signal), safe=True, token=token)
        return cast(Worker, self._json(call))

    def delete_worker(self, worker_id: str) -> None:
        self._send(_Call("DELETE", f"/v1/workers/{_segment(worker_id)}"))

    def get_worker(self, worker_id: str) -> Worker:
        return cast(Worker, self._json(_Call("GET", f"/v1/workers/{_segment(worker_id)}", safe=True)))

    def list_workers(
        self,
        *,
        status: Optional[WorkerStatus] = None,
        machine_id: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> Page[Worker]:
        params = self._page_params(status=status, machine_id=machine_id, limit=limit, cursor=cursor)
        return cast("Page[Worker]", self._json(_Call("GET", "/v1/workers", params, safe=True)))

    def iter_workers(self, *, status: Optional[WorkerStatus] = None, machine_id: Optional[str] = None) -> Iterator[Worker]:
        """Every worker matching the filters, page after page."""
        cursor: Optional[str] = None
        while True:
            page = self.list_workers(status=status, machine_id=machine_id, limit=1000, cursor=cursor)
            yield from page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return

    # machines

    def list_machines(
        self, *, status: Optional[MachineStatus] = None, limit: Optional[int] = None, cursor: Optional[str] = None
    ) -> Page[Machine]:
        params = self._page_params(status=status, limit=limit, cursor=cursor)
        return cast("Page[Machine]", self._json(_Call("GET", "/v1/machines", params, safe=True)))

    def get_machine(self, machine_id: str) -> MachineWithWorkers:
        return cast(MachineWithWorkers, self._json(_Call("GET", f"/v1/machines/{_segment(machine_id)}", safe=True)))

    # events

    def list_events(
        self,
        *,
        after: Optional[int] = None,
        limit: Optional[int] = None,
        worker_id: Optional[str] = None,
        machine_id: Optional[str] = None,
        type: Optional[EventType] = None,
    ) -> Page[Event]:
        params = self._page_params(after=after, limit=limit, worker_id=worker_id, machine_id=machine_id, type=type)
        return cast("Page[Event]", self._json(_Call("GET", "/v1/events", params, safe=True)))

    def events(self, after: Optional[int] = None, *, reconnect: bool = True) -> Iterator[Event]:
        """The event stream: with ``after``, replays every event after that seq
        first; without, starts live. When the connection drops it reconnects
        (with backoff, across the servers) with ``Last-Event-ID`` set to the
        last event it yielded, so no event is missed or repeated."""
        last = after
        failures = 0
        while True:
            headers = {"accept": "text/event-stream"}
            if last is not None:
                headers["last-event-id"] = str(last)
            try:
                response = self._send(_stream_call(headers), stream=True)
                try:
                    parser = Parser()
                    for line in response.iter_lines():
                        message = parser.feed(line)
                        if message is not None:
                            failures = 0
                            event = cast(Event, json.loads(message.data))
                            last = event["seq"]
                            yield event
                finally:
                    response.close()
                failures += 1  # the server ended the stream (a restart, say)
            except (TransportError, httpx.HTTPError):
                if not reconnect:
                    raise
                failures += 1
            except ApiError as e:
                if not reconnect or e.status not in (502, 503, 504):
                    raise
                failures += 1
            if not reconnect:
                return
            time.sleep(retry_delay(failures, 0.25, 5.0, random.random()))

    # cleanup and operations

    def cleanup_stale(self) -> StaleCleanup:
        return cast(StaleCleanup, self._json(_Call("POST", "/v1/cleanup/stale")))

    def cleanup_all(self) -> FullCleanup:
        return cast(FullCleanup, self._json(_Call("POST", "/v1/cleanup/all")))

    def healthz(self) -> None:
        self._send(_Call("GET", "/healthz", safe=True, auth=False))

    def readyz(self) -> bool:
        try:
            self._send(_Call("GET", "/readyz", safe=True, auth=False))
            return True
        except ApiError as e:
            if e.status == 503:
                return False
            raise

    def metrics(self) -> str:
        return self._send(_Call("GET", "/metrics", safe=True)).text

    def openapi(self) -> Dict[str, Any]:
        return cast(Dict[str, Any], self._json(_Call("GET", "/openapi.json", safe=True, auth=False)))

    # worker handles

    def worker(self, name: str, machine: Optional[Union[str, Mapping[str, Any]]] = None, **options: Any) -> WorkerHandle:
        """A worker handle (a context manager) that registers, heartbeats in a
        background thread, registers again after a 401, and says goodbye when
        the block ends and on SIGTERM. See :class:`rollcall.Worker`."""
        from ._worker import Worker as WorkerHandle

        return WorkerHandle(self, name, machine, **options)

    def aworker(self, name: str, machine: Optional[Union[str, Mapping[str, Any]]] = None, **options: Any) -> AsyncWorker:
        """The asyncio worker handle (``async with``), on an :class:`AsyncRollcall` with the same servers and token."""
        from ._worker import AsyncWorker

        client = AsyncRollcall(urls=self.urls, token=self._token, timeout=self._timeout)
        return AsyncWorker(client, name, machine, owns_client=True, **options)


class AsyncRollcall(_Base):
    """The asyncio client: the same calls as :class:`Rollcall`, awaited."""

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        urls: Optional[Sequence[str]] = None,
        token: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        http: Optional[httpx.AsyncClient] = None,
    ) -> None:
        super().__init__(url, urls=urls, token=token, timeout=timeout)
        self._http = http or httpx.AsyncClient(timeout=timeout, limits=LIMITS)

    def with_token(self, token: str) -> AsyncRollcall:
        copy = AsyncRollcall.__new__(AsyncRollcall)
        copy.__dict__.update(self.__dict__)
        copy._token = token
        return copy

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRollcall:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, call: _Call, *, stream: bool = False) -> httpx.Response:
        last: Optional[RollcallError] = None
        order = self._order()
        for k, index in enumerate(order):
            url, headers, content = self._request(call, index)
            try:
                request = self._http.build_request(
                    call.method, url, params=call.params or None, headers=headers, content=content,
                    timeout=self._timeout_for(call),
                )
                response = await self._http.send(request, stream=stream)
            except httpx.HTTPError as e:
                error: RollcallError
                error, fail_over = self._transport(call, url, e)
            else:
                if response.is_success:
                    self._answered(index)
                    return response
                await response.aread()
                await response.aclose()
                error = ApiError.from_body(response.status_code, response.content, url, _retry_after(response))
                fail_over = self._status_fails_over(call, response.status_code)
                if not fail_over:
                    self._answered(index)
            if not fail_over or k + 1 == len(order):
                raise error
            self._failed_over(index)
            last = error
        raise last or RollcallError("no server")

    async def _json(self, call: _Call) -> Any:
        response = await self._send(call)
        return self._decode(response, str(response.url))

    async def create_token(
        self,
        kind: str,
        name: str,
        *,
        expires_in_ms: Optional[int] = None,
        machines: Optional[Sequence[str]] = None,
        labels: Optional[Labels] = None,
    ) -> CreatedToken:
        body = _token_body(kind, name, expires_in_ms, machines, labels)
        return cast(CreatedToken, await self._json(_Call("POST", "/v1/tokens", body=body)))

    async def list_tokens(self, *, limit: Optional[int] = None, cursor: Optional[str] = None) -> Page[Token]:
        return cast("Page[Token]", await self._json(_Call("GET", "/v1/tokens", self._page_params(limit=limit, cursor=cursor), safe=True)))

    async def delete_token(self, token_id: str) -> None:
        await self._send(_Call("DELETE", f"/v1/tokens/{_segment(token_id)}"))

    async def register(
        self,
        name: str,
        machine: Union[str, Mapping[str, Any]],
        *,
        hostname: Optional[str] = None,
        machine_labels: Optional[Labels] = None,
        labels: Optional[Labels] = None,
        heartbeat_interval_ms: Optional[int] = None,
        stale_after_ms: Optional[int] = None,
    ) -> Registration:
        call = self._register_call(name, machine, hostname, machine_labels, labels, heartbeat_interval_ms, stale_after_ms)
        return cast(Registration, await self._json(call))

    async def heartbeat(self, worker_id: str, *, token: Optional[str] = None) -> HeartbeatAck:
        call = _Call("POST", f"/v1/workers/{_segment(worker_id)}/heartbeat", body={}, safe=True, token=token)
        return cast(HeartbeatAck, await self._json(call))

    async def heartbeats(self, entries: Iterable[Union[Tuple[str, str], Mapping[str, str]]]) -> List[BatchResult]:
        call = _Call("POST", "/v1/heartbeats", body=self._batch_body(entries), safe=True)
        return cast(List[BatchResult], (await self._json(call))["results"])

    async def drain(self, worker_id: str, *, token: Optional[str] = None) -> Worker:
        return cast(Worker, await self._json(_Call("POST", f"/v1/workers/{_segment(worker_id)}/drain", safe=True, token=token)))

    async def offline(
        self,
        worker_id: str,
        reason: str = "shutdown",
        *,
        exit_code: Optional[int] = None,
        signal: Optional[int] = None,
        token: Optional[str] = None,
    ) -> Worker:
        call = _Call("POST", f"/v1/workers/{_segment(worker_id)}/offline", body=_offline_body(reason, exit_code, signal), safe=True, token=token)
        return cast(Worker, await self._json(call))

    async def delete_worker(self, worker_id: str) -> None:
        await self._send(_Call("DELETE", f"/v1/workers/{_segment(worker_id)}"))

    async def get_worker(self, worker_id: str) -> Worker:
        return cast(Worker, await self._json(_Call("GET", f"/v1/workers/{_segment(worker_id)}", safe=True)))

    async def list_workers(
        self,
        *,
        status: Optional[WorkerStatus] = None,
        machine_id: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> Page[Worker]:
        params = self._page_params(status=status, machine_id=machine_id, limit=limit, cursor=cursor)
        return cast("Page[Worker]", await self._json(_Call("GET", "/v1/workers", params, safe=True)))

    async def list_machines(
        self, *, status: Optional[MachineStatus] = None, limit: Optional[int] = None, cursor: Optional[str] = None
    ) -> Page[Machine]:
        params = self._page_params(status=status, limit=limit, cursor=cursor)
        return cast("Page[Machine]", await self._json(_Call("GET", "/v1/machines", params, safe=True)))

    async def get_machine(self, machine_id: str) -> MachineWithWorkers:
        return cast(MachineWithWorkers, await self._json(_Call("GET", f"/v1/machines/{_segment(machine_id)}", safe=True)))

    async def list_events(
        self,
        *,
        after: Optional[int] = None,
        limit: Optional[int] = None,
        worker_id: Optional[str] = None,
        machine_id: Optional[str] = None,
        type: Optional[EventType] = None,
    ) -> Page[Event]:
        params = self._page_params(after=after, limit=limit, worker_id=worker_id, machine_id=machine_id, type=type)
        return cast("Page[Event]", await self._json(_Call("GET", "/v1/events", params, safe=True)))

    async def events(self, after: Optional[int] = None, *, reconnect: bool = True) -> AsyncIterator[Event]:
        """The event stream, as :meth:`Rollcall.events`."""
        import asyncio

        last = after
        failures = 0
        while True:
            headers = {"accept": "text/event-stream"}
            if last is not None:
                headers["last-event-id"] = str(last)
            try:
                response = await self._send(_stream_call(headers), stream=True)
                try:
                    parser = Parser()
                    async for line in response.aiter_lines():
                        message = parser.feed(line)
                        if message is not None:
                            failures = 0
                            event = cast(Event, json.loads(message.data))
                            last = event["seq"]
                            yield event
                finally:
                    await response.aclose()
                failures += 1
            except (TransportError, httpx.HTTPError):
                if not reconnect:
                    raise
                failures += 1
            except ApiError as e:
                if not reconnect or e.status not in (502, 503, 504):
                    raise
                failures += 1
            if not reconnect:
                return
            await asyncio.sleep(retry_delay(failures, 0.25, 5.0, random.random()))

    async def cleanup_stale(self) -> StaleCleanup:
        return cast(StaleCleanup, await self._json(_Call("POST", "/v1/cleanup/stale")))

    async def cleanup_all(self) -> FullCleanup:
        return cast(FullCleanup, await self._json(_Call("POST", "/v1/cleanup/all")))

    async def healthz(self) -> None:
        await self._send(_Call("GET", "/healthz", safe=True, auth=False))

    async def readyz(self) -> bool:
        try:
            await self._send(_Call("GET", "/readyz", safe=True, auth=False))
            return True
        except ApiError as e:
            if e.status == 503:
                return False
            raise

    async def metrics(self) -> str:
        return (await self._send(_Call("GET", "/metrics", safe=True))).text

    async def openapi(self) -> Dict[str, Any]:
        return cast(Dict[str, Any], await self._json(_Call("GET", "/openapi.json", safe=True, auth=False)))

    def worker(self, name: str, machine: Optional[Union[str, Mapping[str, Any]]] = None, **options: Any) -> AsyncWorker:
        """The asyncio worker handle (``async with``)."""
        from ._worker import AsyncWorker

        return AsyncWorker(self, name, machine, **options)
