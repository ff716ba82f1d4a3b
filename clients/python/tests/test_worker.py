"""The worker handles against the real server, and worker processes that are
killed, told to stop, exit non-zero, and outlive a server restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from typing import List, Optional, Tuple

import pytest

from rollcall import ApiError, AsyncRollcall, Rollcall, StoppedError, WorkerRecord, crash_kind, offline_class
from rollcall._types import HeartbeatAck

from .conftest import ADMIN, PACKAGE, Server, wait_for

EXAMPLE = str(PACKAGE / "examples" / "jobs_worker.py")


def enroll_token(server: Server) -> str:
    return Rollcall(server.url, token=ADMIN).create_token("enroll", "py-workers")["token"]


def named(admin: Rollcall, name: str, status: Optional[str] = None) -> Optional[WorkerRecord]:
    for w in admin.iter_workers():
        if w["name"] == name and (status is None or w["status"] == status):
            return w
    return None


def spawn(args: List[str], server: Server, token: str, name: str) -> "subprocess.Popen[str]":
    env = dict(os.environ, ROLLCALL_SERVER=server.url, ROLLCALL_TOKEN=token, WORKER_NAME=name, HEARTBEAT_INTERVAL_MS="100")
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, text=True)


def test_registers_heartbeats_drains_and_says_goodbye(server: Server) -> None:
    admin = Rollcall(server.url, token=ADMIN)
    rc = Rollcall(server.url, token=enroll_token(server))
    beats: List[HeartbeatAck] = []
    online: List[WorkerRecord] = []
    with rc.worker(
        name="hb-1", machine="py-m1", labels={"queue": "q"}, heartbeat_interval_ms=100,
        on_heartbeat=beats.append, on_online=online.append,
    ) as w:  # fmt: skip
        worker = w.wait_ready(timeout=15)
        assert worker["status"] == "online" and w.id == worker["id"] and w.phase == "registered"
        wait_for("five heartbeats", lambda: len(beats) >= 5)
        seen = wait_for("the server to show a heartbeat", lambda: (lambda x: x if x["last_heartbeat_at"] else None)(admin.get_worker(worker["id"])))
        assert (seen["status"], seen["session"], seen["labels"]) == ("online", 1, {"queue": "q"})
        assert w.drain(timeout=15)["status"] == "draining"
        n = len(beats)
        wait_for("heartbeats while draining", lambda: len(beats) >= n + 2)
        assert w.status == "draining"
    assert len(online) == 1
    assert w.phase == "stopped" and w.stopping.is_set()
    after = admin.get_worker(worker["id"])
    assert (after["status"], after["offline_reason"]) == ("offline", "shutdown")
    assert w.stop() == w.stop(), "stop() is idempotent"
    with pytest.raises(StoppedError):
        w.drain()


def test_an_exception_leaving_the_block_is_exited(server: Server) -> None:
    admin = Rollcall(server.url, token=ADMIN)
    rc = Rollcall(server.url, token=enroll_token(server))
    with pytest.raises(RuntimeError):
        with rc.worker(name="boom-1", machine="py-m1", handle_signals=False) as w:
            w.wait_ready(timeout=15)
            raise RuntimeError("the job failed")
    assert w.id is not None
    assert admin.get_worker(w.id)["offline_reason"] == "exited"
    # An exception says nothing of how the process will end: no status, a crash.
    [e] = admin.list_events(worker_id=w.id, type="worker.offline")["items"]
    assert (e["exit_code"], e["signal"], offline_class(e)) == (None, None, "crash")


def test_stop_says_how_a_process_ended(server: Server) -> None:
    admin = Rollcall(server.url, token=ADMIN)
    rc = Rollcall(server.url, token=enroll_token(server))
    with rc.worker(name="supervisor-1", machine="py-m1", handle_signals=False) as w:
        w.wait_ready(timeout=15)
        last = w.stop("exited", signal=9)
    assert last is not None and last["offline_reason"] == "exited"
    assert w.id is not None
    [e] = admin.list_events(worker_id=w.id, type="worker.offline")["items"]
    assert (e["exit_code"], e["signal"], offline_class(e), crash_kind(e)) == (None, 9, "crash", "exited")


def test_registers_again_after_a_401(server: Server) -> None:
    admin = Rollcall(server.url, token=ADMIN)
    rc = Rollcall(server.url, token=enroll_token(server))
    replaced: List[str] = []
    with rc.worker(
        name="rotated-1", machine="py-m2", heartbeat_interval_ms=100,
        on_replaced=lambda wid, err: replaced.append(f"{wid}:{err.code}"),
    ) as w:  # fmt: skip
        first = w.wait_ready(timeout=15)
        other = admin.register("rotated-1", "py-m2")  # the same name again rotates the token
        assert other["worker"]["id"] == first["id"]
        wait_for("the handle to register again", lambda: w.registrations == 2)
        assert replaced == [f"{first['id']}:unauthorized"]
        now = admin.get_worker(first["id"])
        assert now["status"] == "online" and now["session"] > other["worker"]["session"]
        assert w.session == now["session"]


def test_keeps_its_session_across_a_server_restart(servers: List[Server]) -> None:
    first = Server.start()
    servers.append(first)
    rc = Rollcall(first.url, token=enroll_token(first))
    errors: List[BaseException] = []
    with rc.worker(
        name="restart-1", machine="py-m3", heartbeat_interval_ms=100, initial_backoff=0.02, on_error=errors.append,
    ) as w:  # fmt: skip
        worker = w.wait_ready(timeout=15)
        first.stop()
        wait_for("the handle to notice the server is gone", lambda: w.consecutive_failures > 0)
        second = first.restart()
        servers.append(second)
        wait_for("a heartbeat after the restart", lambda: w.consecutive_failures == 0)
        assert w.registrations == 1 and w.session == worker["session"]
        after = Rollcall(second.url, token=ADMIN).get_worker(worker["id"])
        assert (after["status"], after["session"]) == ("online", worker["session"])
        assert errors


def test_a_refused_registration_stops_the_handle(server: Server) -> None:
    rc = Rollcall(server.url, token=enroll_token(server))
    w = rc.worker(name="no spaces allowed", machine="py-m4", handle_signals=False).start()
    with pytest.raises(ApiError) as e:
        w.wait_ready(timeout=15)
    assert e.value.code == "invalid_request"
    assert w.stop() is None
    assert w.phase == "stopped"


def test_a_kill_9_python_worker_goes_stale(server: Server) -> None:
    admin = Rollcall(server.url, token=ADMIN)
    child = spawn([EXAMPLE], server, enroll_token(server), "killed-1")
    try:
        wait_for("the example to register", lambda: named(admin, "killed-1", "online"))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        gone = wait_for("the killed worker to go stale", lambda: named(admin, "killed-1", "offline"))
        assert gone["offline_reason"] == "stale"
    finally:
        child.kill()
        child.wait()


def test_sigterm_says_goodbye_and_the_job_loop_ends_cleanly(server: Server) -> None:
    admin = Rollcall(server.url, token=ADMIN)
    child = spawn([EXAMPLE], server, enroll_token(server), "sigterm-1")
    try:
        w = wait_for("the example to register", lambda: named(admin, "sigterm-1", "online"))
        wait_for("a heartbeat from it", lambda: admin.get_worker(w["id"])["last_heartbeat_at"])
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=30)
        assert child.returncode == 0, out
        assert "stopped after" in out
        after = admin.get_worker(w["id"])
        assert (after["status"], after["offline_reason"]) == ("offline", "shutdown")
    finally:
        child.kill()
        child.wait()


CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from rollcall import Rollcall
    rc = Rollcall(os.environ["ROLLCALL_SERVER"], token=os.environ["ROLLCALL_TOKEN"])
    with rc.worker(name=os.environ["WORKER_NAME"], heartbeat_interval_ms=100) as w:
        w.wait_ready()
        print("online", flush=True)
        if sys.argv[1] == "exit":
            time.sleep(0.3)
            sys.exit(3)
        while True:
            time.sleep(1)
    """
)


def test_a_child_that_exits_non_zero_is_exited(server: Server) -> None:
    admin = Rollcall(server.url, token=ADMIN)
    child = spawn(["-c", CHILD, "exit"], server, enroll_token(server), "exits-1")
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 3 and "online" in out
    w = named(admin, "exits-1")
    assert w is not None and (w["status"], w["offline_reason"]) == ("offline", "exited")
    # sys.exit(3) leaving the block is reported with its code.
    [e] = admin.list_events(worker_id=w["id"], type="worker.offline")["items"]
    assert (e["exit_code"], e["signal"], offline_class(e)) == (3, None, "crash")


def test_sigterm_without_a_handler_of_its_own_ends_the_process(server: Server) -> None:
    admin = Rollcall(server.url, token=ADMIN)
    child = spawn(["-c", CHILD, "wait"], server, enroll_token(server), "plain-1")
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "online"
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=30)
        assert child.returncode == -signal.SIGTERM, "ended as SIGTERM would have ended it"
        w = named(admin, "plain-1")
        assert w is not None and (w["status"], w["offline_reason"]) == ("offline", "shutdown")
    finally:
        child.kill()
        child.wait()


def test_the_asyncio_worker(server: Server) -> None:
    token = enroll_token(server)

    async def main() -> str:
        beats: List[HeartbeatAck] = []
        rc = Rollcall(server.url, token=token)
        async with rc.aworker(name="async-1", machine="py-m5", heartbeat_interval_ms=100, on_heartbeat=beats.append) as w:
            worker = await w.wait_ready(timeout=15)
            for _ in range(400):
                if len(beats) >= 3:
                    break
                await asyncio.sleep(0.025)
            assert len(beats) >= 3
            assert (await w.drain())["status"] == "draining"
        assert w.phase == "stopped"
        async with AsyncRollcall(server.url, token=ADMIN) as admin:
            after = await admin.get_worker(worker["id"])
        return f"{after['status']}:{after['offline_reason']}"

    assert asyncio.run(main()) == "offline:shutdown"


ASYNC_CHILD = textwrap.dedent(
    """
    import asyncio, os
    from rollcall import Rollcall

    async def main():
        rc = Rollcall(os.environ["ROLLCALL_SERVER"], token=os.environ["ROLLCALL_TOKEN"])
        async with rc.aworker(name=os.environ["WORKER_NAME"], heartbeat_interval_ms=100) as w:
            await w.wait_ready()
            print("online", flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def test_sigterm_says_goodbye_for_an_asyncio_worker(server: Server) -> None:
    admin = Rollcall(server.url, token=ADMIN)
    child = spawn(["-c", ASYNC_CHILD], server, enroll_token(server), "async-term-1")
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "online"
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=30)
        assert child.returncode == -signal.SIGTERM
        w = named(admin, "async-term-1")
        assert w is not None and (w["status"], w["offline_reason"]) == ("offline", "shutdown")
    finally:
        child.kill()
        child.wait()


def test_the_goodbye_of_a_block_follows_how_it_ended() -> None:
    from rollcall._worker import _exit_reason

    def leaving(code: object) -> Tuple[str, Optional[int]]:
        try:
            raise SystemExit(code)
        except SystemExit as e:
            return _exit_reason(SystemExit, e)

    assert leaving(0) == leaving(None) == leaving(False) == ("shutdown", None)
    assert leaving(3) == ("exited", 3)
    assert leaving(True) == ("exited", 1), "sys.exit(True) exits 1"
    assert leaving("a message") == ("exited", 1), "a message exits 1"
    assert leaving(300) == ("exited", None), "no code the process could exit with"
    assert _exit_reason(RuntimeError, RuntimeError("boom")) == ("exited", None)
    assert _exit_reason(KeyboardInterrupt, KeyboardInterrupt()) == ("shutdown", None)
    assert _exit_reason(None, None) == ("shutdown", None)
