"""Measures, against a real rollcall server started here:

1. batch heartbeats: how many heartbeats per second one Python process
   sustains for 1,000 workers with ``POST /v1/heartbeats`` (one batch of
   1,000 in flight at a time), and the client CPU per heartbeat;
2. the memory of one idle worker handle (registered, waiting for its next
   heartbeat), from 1,000 of them: threads (``rc.worker``) and asyncio tasks
   (``rc.aworker``).

    .venv/bin/python bench/bench.py        (BENCH_SECONDS=10, ROLLCALL_BIN as for the tests)
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path
from typing import List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rollcall import AsyncRollcall, AsyncWorker, Rollcall, Worker  # noqa: E402
from tests.conftest import ADMIN, Server  # noqa: E402

WORKERS = 1000
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def batch(rc: Rollcall) -> None:
    entries: List[Tuple[str, str]] = []
    for i in range(WORKERS):
        r = rc.register(f"b-{i}", "bench-py", heartbeat_interval_ms=10_000)
        entries.append((r["worker"]["id"], r["token"]))
    rc.heartbeats(entries)  # warm-up
    beats = batches = 0
    cpu0 = time.process_time()
    t0 = time.monotonic()
    while time.monotonic() - t0 < SECONDS:
        results = rc.heartbeats(entries)
        if not all(r["ok"] for r in results):
            raise RuntimeError("a heartbeat was refused")
        beats += len(results)
        batches += 1
    seconds = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    print(json.dumps({
        "bench": "python batch heartbeats",
        "workers": WORKERS,
        "seconds": round(seconds, 2),
        "batches": batches,
        "heartbeats_per_s": round(beats / seconds),
        "client_cpu_us_per_heartbeat": round(cpu * 1e6 / beats, 2),
        "client_cpu_share": round(cpu / seconds, 2),
    }), flush=True)  # fmt: skip


def idle_threads(rc: Rollcall) -> None:
    gc.collect()
    tracemalloc.start()
    rss0 = rss()
    handles: List[Worker] = []
    for i in range(WORKERS):
        handles.append(rc.worker(name=f"idle-{i}", machine="bench-py-idle", heartbeat_interval_ms=60_000, handle_signals=False).start())
    for h in handles:
        h.wait_ready(timeout=60)
    gc.collect()
    heap = tracemalloc.get_traced_memory()[0]
    rss1 = rss()
    tracemalloc.stop()
    print(json.dumps({
        "bench": "python idle worker handle (thread)",
        "handles": WORKERS,
        "python_heap_bytes_per_handle": round(heap / WORKERS),
        "rss_bytes_per_handle": round((rss1 - rss0) / WORKERS),
    }), flush=True)  # fmt: skip
    for h in handles:
        h.stop()


def idle_tasks(url: str, token: str) -> None:
    async def main() -> None:
        async with AsyncRollcall(url, token=token) as rc:
            gc.collect()
            tracemalloc.start()
            rss0 = rss()
            handles: List[AsyncWorker] = [
                rc.worker(name=f"aidle-{i}", machine="bench-py-aidle", heartbeat_interval_ms=60_000, handle_signals=False).start()
                for i in range(WORKERS)
            ]
            await asyncio.gather(*(h.wait_ready(timeout=120) for h in handles))
            gc.collect()
            heap = tracemalloc.get_traced_memory()[0]
            rss1 = rss()
            tracemalloc.stop()
            print(json.dumps({
                "bench": "python idle worker handle (asyncio task)",
                "handles": WORKERS,
                "python_heap_bytes_per_handle": round(heap / WORKERS),
                "rss_bytes_per_handle": round((rss1 - rss0) / WORKERS),
            }), flush=True)  # fmt: skip
            await asyncio.gather(*(h.stop() for h in handles))

    asyncio.run(main())


def run() -> None:
    server = Server.start()
    try:
        admin = Rollcall(server.url, token=ADMIN)
        token = admin.create_token("enroll", "bench")["token"]
        rc = Rollcall(server.url, token=token)
        batch(rc)
        idle_threads(rc)
        idle_tasks(server.url, token)
    finally:
        server.close()


if __name__ == "__main__":
    run()
