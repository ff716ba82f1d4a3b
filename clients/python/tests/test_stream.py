"""The event stream as an iterator: replay, live events, and resuming with
Last-Event-ID across a server restart with no gap and no duplicate."""

from __future__ import annotations

import asyncio
import threading
from typing import List

from rollcall import AsyncRollcall, Event, Rollcall

from .conftest import ADMIN, Server, wait_for


def test_replays_goes_live_and_resumes_across_a_restart(servers: List[Server]) -> None:
    first = Server.start()
    servers.append(first)
    admin = Rollcall(first.url, token=ADMIN)
    for name in ("s-1", "s-2"):
        admin.register(name, "py-stream")
    logged = admin.list_events(limit=1000)["items"]
    assert len(logged) >= 5
    start = logged[1]["seq"]

    seen: List[Event] = []
    stop = threading.Event()

    def consume() -> None:
        for event in Rollcall(first.url, token=ADMIN).events(after=start):
            seen.append(event)
            if stop.is_set():
                return

    threading.Thread(target=consume, daemon=True).start()
    wait_for("the replay", lambda: len(seen) >= len(logged) - 2)
    assert [e["seq"] for e in seen] == [e["seq"] for e in logged[2:]]
    admin.register("s-3", "py-stream")
    wait_for("a live event", lambda: any(e["seq"] > logged[-1]["seq"] for e in seen))

    # The server goes away; the next one commits events while the iterator is
    # disconnected, and they arrive once it reconnects.
    first.stop()
    second = first.restart()
    servers.append(second)
    admin2 = Rollcall(second.url, token=ADMIN)
    w = admin2.register("s-4", "py-stream-2")
    admin2.offline(w["worker"]["id"])
    everything = wait_for(
        "every event to arrive",
        lambda: (lambda items: items if len(items) == len(seen) else None)(admin2.list_events(after=start, limit=1000)["items"]),
    )
    assert [e["seq"] for e in seen] == [e["seq"] for e in everything], "no gap, no duplicate"
    assert seen[-1]["type"] == "machine.offline"
    stop.set()


def test_the_asyncio_stream_replays_and_goes_live(server: Server) -> None:
    async def main() -> List[str]:
        async with AsyncRollcall(server.url, token=ADMIN) as rc:
            await rc.register("a-1", "py-astream")
            types: List[str] = []
            async for event in rc.events(after=0):
                types.append(event["type"])
                if len(types) == 3:
                    await rc.register("a-2", "py-astream")
                if len(types) == 5:
                    break
            return types

    assert asyncio.run(asyncio.wait_for(main(), 30)) == [
        "worker.registered",
        "worker.online",
        "machine.online",
        "worker.registered",
        "worker.online",
    ]
