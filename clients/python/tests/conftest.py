"""The real ``rollcall`` binary for the tests: started on port 0 (or a given
port, to restart it in place) with short timings, stopped at the end."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, TypeVar

import pytest

ADMIN = "rc_admin_python-client-tests-0123456789"
ROOT = Path(__file__).resolve().parents[3]
BIN = os.environ.get("ROLLCALL_BIN", str(ROOT / "target" / "debug" / "rollcall"))
PACKAGE = Path(__file__).resolve().parents[1]

T = TypeVar("T")


class Server:
    def __init__(self, data_dir: str, port: int = 0, owns_dir: bool = True) -> None:
        env = dict(os.environ, ROLLCALL_ADMIN_TOKEN=ADMIN, RUST_LOG="warn")
        env.pop("ROLLCALL_SERVER", None)
        env.pop("ROLLCALL_TOKEN", None)
        args = [
            BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir,
            "--heartbeat-interval", "100ms", "--stale-after", "500ms",
            "--sweep-interval", "1s", "--flush-interval", "200ms",
        ]  # fmt: skip
        self.process = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        self.data_dir = data_dir
        self.owns_dir = owns_dir
        lines: "queue.Queue[str]" = queue.Queue()
        stdout = self.process.stdout
        assert stdout is not None

        def pump() -> None:
            for line in stdout:  # keep the pipe drained
                lines.put(line.rstrip("\n"))
            lines.put("")

        threading.Thread(target=pump, daemon=True).start()
        line = lines.get(timeout=60)
        prefix = "rollcall listening on http://"
        if not line.startswith(prefix):
            raise RuntimeError(f"unexpected first line from rollcall serve: {line!r}")
        self.address = line[len(prefix):]
        self.url = f"http://{self.address}"
        self.port = int(self.address.rsplit(":", 1)[1])

    @classmethod
    def start(cls) -> Server:
        return cls(tempfile.mkdtemp(prefix="rollcall-py-"))

    def restart(self) -> Server:
        """The same server again, on the same port and data."""
        return Server(self.data_dir, self.port, owns_dir=False)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)

    def close(self) -> None:
        self.stop()
        if self.owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def wait_for(what: str, check: Callable[[], Optional[T]], timeout: float = 15.0) -> T:
    """Polls ``check`` until it returns something other than None/False, or fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Optional[BaseException] = None
    while True:
        try:
            value = check()
            if value is not None and value is not False:
                return value
        except Exception as e:  # noqa: BLE001 - reported on timeout
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f": {last!r}" if last else ""))
        time.sleep(0.025)


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server.start()
    yield s
    s.close()


@pytest.fixture
def servers() -> Iterator[List[Server]]:
    """For tests that restart: every server started is appended, and all are closed."""
    started: List[Server] = []
    yield started
    for s in started:
        s.close()
