"""Every call of the contract against the real server; typed errors; fail-over."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
from typing import Iterator, List, Optional, Tuple, cast

import pytest

from rollcall import ApiError, AsyncRollcall, Event, Rollcall, TransportError, crash_kind, offline_class
from rollcall._backoff import heartbeat_delay, retry_ceiling, retry_delay

from .conftest import ADMIN, Server


def test_backoff_arithmetic() -> None:
    assert heartbeat_delay(30.0, 0.0) == pytest.approx(27.0)
    assert heartbeat_delay(30.0, 0.5) == pytest.approx(30.0)
    assert heartbeat_delay(30.0, float("nan")) == pytest.approx(27.0)
    assert heartbeat_delay(30.0, 7.0) == pytest.approx(33.0)
    assert [retry_ceiling(n, 0.25, 3.0) for n in (1, 2, 3, 4, 5, 9)] == [0.25, 0.5, 1.0, 2.0, 3.0, 3.0]
    assert retry_delay(3, 0.25, 3.0, 0.0) == pytest.approx(0.5)
    assert retry_delay(3, 0.25, 3.0, 1.0) == pytest.approx(1.0)


def test_every_call_of_the_contract(server: Server) -> None:
    admin = Rollcall(server.url, token=ADMIN)
    admin.healthz()
    assert admin.readyz() is True
    spec = admin.openapi()
    assert spec["openapi"].startswith("3.")
    assert "/v1/workers" in spec["paths"]

    enroll = admin.create_token("enroll", "py-fleet")
    assert enroll["kind"] == "enroll" and enroll["token"].startswith("rc_enroll_")
    read = admin.create_token("read", "py-read", expires_in_ms=3_600_000)
    assert read["expires_at"] is not None
    tokens = admin.list_tokens(limit=1000)["items"]
    assert any(t["id"] == enroll["id"] and t["name"] == "py-fleet" for t in tokens)
    assert all("token" not in t for t in tokens), "the secret is never listed"
    assert enroll["scope"] is None

    # A scoped enroll token registers only the workers inside its scope.
    gpus = admin.create_token("enroll", "py-gpus", machines=["gpu-*"], labels={"pool": "gpu"})
    assert gpus["scope"] == {"machines": ["gpu-*"], "labels": {"pool": "gpu"}}
    listed = [t for t in admin.list_tokens(limit=1000)["items"] if t["id"] == gpus["id"]]
    assert listed[0]["scope"] == gpus["scope"]
    scoped = Rollcall(server.url, token=gpus["token"])
    inside = scoped.register("gpu-w", "gpu-1", labels={"pool": "gpu"})
    with pytest.raises(ApiError) as refused:
        scoped.register("gpu-w", "cpu-1", labels={"pool": "gpu"})
    assert (refused.value.status, refused.value.code) == (403, "forbidden")
    with pytest.raises(ApiError) as bad:
        admin.create_token("read", "py-bad", machines=["gpu-*"])
    assert bad.value.code == "invalid_request"
    admin.delete_worker(inside["worker"]["id"])
    admin.delete_token(gpus["id"])

    rc = Rollcall(server.url, token=enroll["token"])
    reg = rc.register(
        "calls-1",
        "py-host",
        hostname="py-host.example",
        machine_labels={"rack": "a"},
        labels={"queue": "gpu"},
        heartbeat_interval_ms=1000,
    )
    worker = reg["worker"]
    assert worker["status"] == "online" and worker["stale_after_ms"] == 3000
    assert worker["labels"] == {"queue": "gpu"}
    wid = worker["id"]

    ack = rc.heartbeat(wid, token=reg["token"])
    assert (ack["status"], ack["session"], ack["resumed"], ack["heartbeat_interval_ms"]) == ("online", 1, False, 1000)
    results = rc.heartbeats([(wid, reg["token"]), {"worker_id": wid, "token": "rc_worker_not-a-real-token"}])
    ok = dict(results[0])
    assert isinstance(ok.pop("deadline_at"), str)
    assert ok == {"worker_id": wid, "ok": True, "status": "online", "session": 1, "resumed": False}
    assert results[1]["ok"] is False and results[1]["error"]["code"] == "unauthorized"

    reader = Rollcall(server.url, token=read["token"])
    assert reader.get_worker(wid)["machine_id"] == "py-host"
    assert [w["id"] for w in reader.list_workers(machine_id="py-host", status="online")["items"]] == [wid]
    assert [w["id"] for w in reader.iter_workers(machine_id="py-host")] == [wid]
    machine = reader.get_machine("py-host")
    assert (machine["status"], machine["hostname"], machine["labels"]) == ("online", "py-host.example", {"rack": "a"})
    assert [w["id"] for w in machine["workers"]] == [wid]
    assert len(reader.list_machines(status="online")["items"]) == 1

    assert rc.drain(wid, token=reg["token"])["status"] == "draining"
    off = rc.offline(wid, token=reg["token"])
    assert (off["status"], off["offline_reason"]) == ("offline", "shutdown")
    assert rc.offline(wid, token=reg["token"]) == off, "a second goodbye changes nothing"

    events = reader.list_events(worker_id=wid)["items"]
    assert [(e["type"], e["reason"]) for e in events] == [
        ("worker.registered", None),
        ("worker.online", "registered"),
        ("worker.draining", None),
        ("worker.offline", "shutdown"),
    ]
    assert len(reader.list_events(machine_id="py-host", type="machine.offline")["items"]) == 1

    assert admin.cleanup_stale()["success"] is True
    full = admin.cleanup_all()
    assert full["success"] is True and isinstance(full["duration_ms"], int)
    assert "rollcall_heartbeats_accepted_total" in admin.metrics()

    admin.delete_worker(wid)
    with pytest.raises(ApiError) as missing:
        reader.get_worker(wid)
    assert missing.value.code == "not_found"
    admin.delete_token(read["id"])
    with pytest.raises(ApiError) as revoked:
        reader.list_workers()
    assert revoked.value.code == "unauthorized"


def test_typed_errors(server: Server) -> None:
    with pytest.raises(ApiError) as e:
        Rollcall(server.url).list_workers()
    assert (e.value.status, e.value.code) == (401, "unauthorized")
    admin = Rollcall(server.url, token=ADMIN)
    with pytest.raises(ApiError) as e:
        admin.register("bad name!", "py-host")
    assert (e.value.status, e.value.code) == (400, "invalid_request") and e.value.message
    with pytest.raises(ApiError) as e:
        admin.list_workers(limit=5000)
    assert e.value.code == "invalid_request"
    reg = admin.register("typed-1", "py-host-2")
    with pytest.raises(ApiError) as e:
        admin.heartbeat("wkr_someone_else", token=reg["token"])
    assert e.value.code == "forbidden"
    with pytest.raises(ApiError) as e:
        admin.heartbeat(reg["worker"]["id"])  # only the worker's own token proves life
    assert e.value.code == "forbidden"
    admin.offline(reg["worker"]["id"])
    with pytest.raises(ApiError) as e:
        admin.drain(reg["worker"]["id"])
    assert e.value.code == "conflict"


def test_exited_offlines_carry_the_exit_status(server: Server) -> None:
    admin = Rollcall(server.url, token=ADMIN)

    def ended(name: str, **exit: int) -> str:
        reg = admin.register(name, "py-exits")
        off = admin.offline(reg["worker"]["id"], "exited", token=reg["token"], **exit)
        assert (off["status"], off["offline_reason"]) == ("offline", "exited")
        return reg["worker"]["id"]

    zero = ended("exit-0", exit_code=0)
    three = ended("exit-3", exit_code=3)
    killed = ended("killed-9", signal=9)
    unknown = ended("unknown")
    bye = admin.register("bye", "py-exits")
    admin.offline(bye["worker"]["id"], token=bye["token"])
    # A repeat changes nothing, its status included.
    admin.offline(three, "exited", exit_code=1)
    # An exit status goes only with "exited", in range, one of the two.
    other = admin.register("refused", "py-exits")["worker"]["id"]
    refusals: List[Tuple[str, Optional[int], Optional[int]]] = [
        ("shutdown", 1, None),
        ("exited", None, 65),
        ("exited", 256, None),
        ("exited", 1, 9),
    ]
    for reason, code, sig in refusals:
        with pytest.raises(ApiError) as refused:
            admin.offline(other, reason, exit_code=code, signal=sig)
        assert refused.value.code == "invalid_request", (reason, code, sig)
    assert admin.get_worker(other)["status"] == "online", "a refused call changes nothing"

    offlines = admin.list_events(machine_id="py-exits", type="worker.offline", limit=1000)["items"]

    def of(wid: str) -> Tuple[object, ...]:
        mine = [e for e in offlines if e["worker_id"] == wid]
        assert len(mine) == 1, mine
        e = mine[0]
        return (e["reason"], e["exit_code"], e["signal"], offline_class(e), crash_kind(e))

    assert of(zero) == ("exited", 0, None, "graceful", None)
    assert of(three) == ("exited", 3, None, "crash", "exited")
    assert of(killed) == ("exited", None, 9, "crash", "exited")
    assert of(unknown) == ("exited", None, None, "crash", "exited")
    assert of(bye["worker"]["id"]) == ("shutdown", None, None, "graceful", None)
    registered = admin.list_events(worker_id=zero, type="worker.registered")["items"][0]
    assert offline_class(registered) is None
    for reason, expected in [("stale", ("crash", "stale")), ("replaced", ("crash", "replaced")), ("revoked", ("administrative", None))]:
        other_end = cast(Event, {**offlines[0], "reason": reason, "exit_code": None, "signal": None})
        assert (offline_class(other_end), crash_kind(other_end)) == expected

    async def main() -> Tuple[object, ...]:
        async with AsyncRollcall(server.url, token=ADMIN) as rc:
            reg = await rc.register("async-exit", "py-exits")
            await rc.offline(reg["worker"]["id"], "exited", exit_code=0, token=reg["token"])
            events = await rc.list_events(worker_id=reg["worker"]["id"], type="worker.offline")
            e = events["items"][0]
            return (e["exit_code"], offline_class(e))

    assert asyncio.run(main()) == (0, "graceful")


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class _Peer:
    """A local HTTP peer answering every request with one status, counting them."""

    def __init__(self, status: int) -> None:
        self.hits = 0
        peer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                peer.hits += 1
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                body = b'{"error": {"code": "unavailable", "message": "fake peer"}}'
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def peer502() -> Iterator[_Peer]:
    p = _Peer(502)
    yield p
    p.close()


@pytest.fixture
def peer503() -> Iterator[_Peer]:
    p = _Peer(503)
    yield p
    p.close()


def test_fails_over_when_a_server_cannot_be_reached(server: Server) -> None:
    rc = Rollcall(urls=[_dead_url(), server.url], token=ADMIN)
    reg = rc.register("failover-1", "py-host-3")
    assert rc.get_worker(reg["worker"]["id"])["status"] == "online"


def test_never_repeats_an_unsafe_call(server: Server, peer502: _Peer, peer503: _Peer) -> None:
    admin = Rollcall(server.url, token=ADMIN)
    rc = Rollcall(urls=[peer502.url, server.url], token=ADMIN)
    with pytest.raises(ApiError) as e:
        rc.register("unsafe-1", "py-host-4")  # a 502 may hide a registration: not repeated
    assert e.value.status == 502 and peer502.hits == 1
    assert admin.list_workers(machine_id="py-host-4")["items"] == []
    Rollcall(urls=[peer502.url, server.url], token=ADMIN).list_workers()  # a read moves on
    assert peer502.hits == 2
    reg = Rollcall(urls=[peer503.url, server.url], token=ADMIN).register("unsafe-2", "py-host-4")
    assert reg["worker"]["status"] == "online" and peer503.hits == 1  # 503 = did not act


def test_timeouts_are_transport_errors() -> None:
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(TransportError):
            Rollcall(url, token=ADMIN, timeout=0.2).list_workers()


def test_the_asyncio_client(server: Server) -> None:
    async def main() -> Tuple[str, str]:
        async with AsyncRollcall(urls=[_dead_url(), server.url], token=ADMIN) as rc:
            reg = await rc.register("async-1", "py-host-5", heartbeat_interval_ms=1000)
            ack = await rc.heartbeat(reg["worker"]["id"], token=reg["token"])
            assert ack["session"] == 1
            results = await rc.heartbeats([(reg["worker"]["id"], reg["token"])])
            assert results[0]["ok"] is True
            with pytest.raises(ApiError) as e:
                await rc.register("bad name!", "py-host-5")
            assert e.value.code == "invalid_request"
            off = await rc.offline(reg["worker"]["id"], "exited", token=reg["token"])
            machine = await rc.get_machine("py-host-5")
            return off["offline_reason"] or "", machine["status"]

    assert asyncio.run(main()) == ("exited", "offline")
