"""A worker that processes jobs and shuts down cleanly.

    ROLLCALL_SERVER=http://127.0.0.1:7373 ROLLCALL_TOKEN=rc_enroll_… python examples/jobs_worker.py
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from types import FrameType
from typing import Optional

from rollcall import Rollcall


def next_job(stopping: threading.Event) -> Optional[float]:
    """Stands for your queue: waits for the next job (here: how long it takes), None once stopping."""
    if stopping.wait(0.05):
        return None
    return random.uniform(0.02, 0.1)


def on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
    print("SIGTERM: finishing the job in hand", flush=True)


def main() -> None:
    rc = Rollcall(
        urls=os.environ.get("ROLLCALL_SERVER", "http://127.0.0.1:7373").split(","),
        token=os.environ.get("ROLLCALL_TOKEN"),
    )
    # With a SIGTERM handler of its own the program decides when to exit: the
    # worker says goodbye and sets `w.stopping`, and the loop below ends after
    # the job in hand. (Without one, the process ends right after the goodbye,
    # as SIGTERM would have ended it.)
    signal.signal(signal.SIGTERM, on_sigterm)
    interval = os.environ.get("HEARTBEAT_INTERVAL_MS")
    done = 0
    with rc.worker(
        name=os.environ.get("WORKER_NAME", f"jobs-{os.getpid()}"),
        labels={"queue": "default"},
        heartbeat_interval_ms=int(interval) if interval else None,
    ) as w:
        w.wait_ready()
        print(f"online: {w.id} session {w.session}", flush=True)
        while not w.stopping.is_set():
            job = next_job(w.stopping)
            if job is None:
                break
            time.sleep(job)  # the work itself: a job is never cut in half
            done += 1
    # Leaving the block said goodbye: reason "shutdown", or "exited" if an exception ended it.
    print(f"stopped after {done} jobs", flush=True)


if __name__ == "__main__":
    main()
