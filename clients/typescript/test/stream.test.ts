// The event stream as an async iterator: replay, live events, and resuming
// with Last-Event-ID across a server restart with no gap and no duplicate.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { Rollcall, type Event } from "../src/index.js";
import { ADMIN, Server, waitFor } from "./server.js";

describe("the event stream", () => {
  it("replays after a seq, goes live, and resumes across a restart with no gap", async () => {
    const first = await Server.start();
    let server = first;
    try {
      const admin = new Rollcall({ url: server.url, token: ADMIN });
      for (const name of ["s-1", "s-2"]) await admin.register({ name, machine: { id: "ts-stream" } });
      const logged = (await admin.listEvents({ limit: 1000 })).items;
      assert.ok(logged.length >= 5);

      // Replay after the second event, then live.
      const seen: Event[] = [];
      const controller = new AbortController();
      const rc = new Rollcall({ urls: [server.url], token: ADMIN });
      const consumer = (async () => {
        for await (const event of rc.events({ after: logged[1]!.seq, signal: controller.signal })) seen.push(event);
      })();
      await waitFor("the replay", () => seen.length >= logged.length - 2);
      assert.deepEqual(
        seen.map((e) => e.seq),
        logged.slice(2).map((e) => e.seq),
      );
      await admin.register({ name: "s-3", machine: { id: "ts-stream" } });
      await waitFor("a live event", () => seen.some((e) => e.type === "worker.registered" && e.seq > logged.at(-1)!.seq));

      // The server goes away; events are committed by the next one while the
      // iterator is disconnected, and arrive once it reconnects.
      await server.stop();
      server = await first.restart();
      const admin2 = new Rollcall({ url: server.url, token: ADMIN });
      const w = await admin2.register({ name: "s-4", machine: { id: "ts-stream-2" } });
      await admin2.offline(w.worker.id);
      const all = await waitFor("every event to arrive", async () => {
        const items = (await admin2.listEvents({ after: logged[1]!.seq, limit: 1000 })).items;
        return seen.length === items.length && items;
      });
      assert.deepEqual(
        seen.map((e) => e.seq),
        all.map((e) => e.seq),
        "no gap, no duplicate",
      );
      assert.deepEqual(seen.at(-1)!.type, "machine.offline");
      controller.abort();
      await consumer; // an aborted iteration ends quietly
    } finally {
      await server.close();
    }
  });

  it("ends with `break`, and a stream without `after` starts live", async () => {
    const server = await Server.start();
    try {
      const admin = new Rollcall({ url: server.url, token: ADMIN });
      await admin.register({ name: "old", machine: { id: "ts-live" } });
      const logged = (await admin.listEvents()).items;
      const iterator = admin.events();
      const next = iterator.next();
      // The stream is connected once the server counts a subscriber; poll by
      // producing events until one arrives.
      const got = await waitFor("a live event", async () => {
        await admin.register({ name: "new", machine: { id: "ts-live" } });
        const r = await Promise.race([next, new Promise<undefined>((r) => setTimeout(() => r(undefined), 100))]);
        return r;
      });
      assert.ok(!got.done && got.value.seq > logged.at(-1)!.seq, "nothing from before the stream");
      await iterator.return(undefined);
    } finally {
      await server.close();
    }
  });
});
