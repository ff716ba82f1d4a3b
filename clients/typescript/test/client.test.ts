// Every call of the contract against the real server; typed errors;
// fail-over; AbortSignal.
import assert from "node:assert/strict";
import { createServer, type Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";

import { heartbeatDelay, retryCeiling, retryDelay } from "../src/backoff.js";
import { ApiError, Rollcall, TransportError, crashKind, isApiError, offlineClass, type ExitStatus } from "../src/index.js";
import { ADMIN, Server } from "./server.js";

/** A local HTTP peer that answers every request with `status`, counting them; or never answers. */
async function fakePeer(status: number | "hang"): Promise<{ url: string; hits: () => number; close: () => Promise<void> }> {
  let hits = 0;
  const server: HttpServer = createServer((req, res) => {
    hits += 1;
    req.resume();
    if (status === "hang") return;
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify({ error: { code: "unavailable", message: "fake peer" } }));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    hits: () => hits,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

/** A port nothing listens on. */
async function deadPort(): Promise<string> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((r) => s.close(() => r()));
  return `http://127.0.0.1:${port}`;
}

describe("backoff arithmetic", () => {
  it("jitters heartbeats by ±10 % and caps retries at the interval", () => {
    assert.equal(heartbeatDelay(30_000, 0), 27_000);
    assert.equal(heartbeatDelay(30_000, 0.5), 30_000);
    assert.equal(heartbeatDelay(30_000, Number.NaN), 27_000);
    assert.equal(heartbeatDelay(30_000, 7), 33_000);
    assert.deepEqual(
      [1, 2, 3, 4, 5, 9].map((n) => retryCeiling(n, 250, 3_000)),
      [250, 500, 1_000, 2_000, 3_000, 3_000],
    );
    assert.equal(retryDelay(3, 250, 3_000, 0), 500);
    assert.equal(retryDelay(3, 250, 3_000, 1), 1_000);
  });
});

describe("the client against a real server", () => {
  let server: Server;
  let admin: Rollcall;

  before(async () => {
    server = await Server.start();
    admin = new Rollcall({ url: server.url, token: ADMIN });
  });
  after(async () => server.close());

  it("makes every call of the contract", async () => {
    await admin.healthz();
    assert.equal(await admin.readyz(), true);
    const spec = (await admin.openapi()) as { openapi: string; paths: Record<string, unknown> };
    assert.match(spec.openapi, /^3\./);
    assert.ok("/v1/workers" in spec.paths);

    const enroll = await admin.createToken({ kind: "enroll", name: "ts-fleet" });
    assert.equal(enroll.kind, "enroll");
    assert.match(enroll.token, /^rc_enroll_/);
    const read = await admin.createToken({ kind: "read", name: "ts-read", expires_in_ms: 3_600_000 });
    assert.ok(read.expires_at);
    const tokens = await admin.listTokens({ limit: 1000 });
    assert.ok(tokens.items.some((t) => t.id === enroll.id && t.name === "ts-fleet"));
    assert.ok(tokens.items.every((t) => !("token" in t)), "the secret is never listed");
    assert.equal(enroll.scope, null);

    const rc = new Rollcall({ url: server.url, token: enroll.token });
    const reg = await rc.register({
      name: "calls-1",
      machine: { id: "ts-host", hostname: "ts-host.example", labels: { rack: "a" } },
      labels: { queue: "gpu" },
      heartbeat_interval_ms: 1_000,
    });
    assert.equal(reg.worker.status, "online");
    assert.equal(reg.worker.stale_after_ms, 3_000);
    assert.deepEqual(reg.worker.labels, { queue: "gpu" });
    assert.match(reg.token, /^rc_worker_/);
    const id = reg.worker.id;

    const ack = await rc.heartbeat(id, { token: reg.token });
    assert.deepEqual([ack.status, ack.session, ack.resumed, ack.heartbeat_interval_ms], ["online", 1, false, 1_000]);
    const results = await rc.heartbeats([
      { worker_id: id, token: reg.token },
      { worker_id: id, token: "rc_worker_not-a-real-token" },
    ]);
    assert.equal(results.length, 2);
    const first = results[0]!;
    assert.ok(first.ok);
    assert.deepEqual(
      { ...first, deadline_at: typeof first.deadline_at },
      { worker_id: id, ok: true, status: "online", session: 1, resumed: false, deadline_at: "string" },
    );
    assert.equal(results[1]!.ok, false);
    assert.equal(!results[1]!.ok && results[1]!.error.code, "unauthorized");

    const reader = new Rollcall({ url: server.url, token: read.token });
    const got = await reader.getWorker(id);
    assert.equal(got.machine_id, "ts-host");
    const listed = await reader.listWorkers({ machine_id: "ts-host", status: "online" });
    assert.deepEqual(
      listed.items.map((w) => w.id),
      [id],
    );
    const all = [];
    for await (const w of reader.allWorkers({ limit: 1 })) all.push(w.id);
    assert.deepEqual(all, [id]);
    const machine = await reader.getMachine("ts-host");
    assert.equal(machine.status, "online");
    assert.equal(machine.hostname, "ts-host.example");
    assert.deepEqual(
      machine.workers.map((w) => w.id),
      [id],
    );
    assert.equal((await reader.listMachines({ status: "online" })).items.length, 1);

    const drained = await rc.drain(id, { token: reg.token });
    assert.equal(drained.status, "draining");
    const off = await rc.offline(id, "shutdown", { token: reg.token });
    assert.deepEqual([off.status, off.offline_reason], ["offline", "shutdown"]);
    const again = await rc.offline(id, "shutdown", { token: reg.token });
    assert.deepEqual(again, off, "a second goodbye changes nothing");

    const events = await reader.listEvents({ worker_id: id });
    assert.deepEqual(
      events.items.map((e) => [e.type, e.reason]),
      [
        ["worker.registered", null],
        ["worker.online", "registered"],
        ["worker.draining", null],
        ["worker.offline", "shutdown"],
      ],
    );
    const machineEvents = await reader.listEvents({ machine_id: "ts-host", type: "machine.offline" });
    assert.equal(machineEvents.items.length, 1);

    const stale = await admin.cleanupStale();
    assert.equal(stale.success, true);
    const full = await admin.cleanupAll();
    assert.equal(full.success, true);
    assert.equal(typeof full.duration_ms, "number");
    assert.match(await admin.metrics(), /rollcall_heartbeats_accepted_total/);

    await admin.deleteWorker(id);
    await assert.rejects(reader.getWorker(id), (e) => isApiError(e, "not_found"));
    await admin.deleteToken(read.id);
    await assert.rejects(reader.listWorkers(), (e) => isApiError(e, "unauthorized"));
  });

  it("limits a scoped enroll token to the workers inside its scope", async () => {
    const scope = { machines: ["gpu-*"], labels: { pool: "gpu" } };
    const gpus = await admin.createToken({ kind: "enroll", name: "ts-gpus", scope });
    assert.deepEqual(gpus.scope, scope);
    const listed = await admin.listTokens({ limit: 1000 });
    assert.deepEqual(listed.items.find((t) => t.id === gpus.id)?.scope, scope);
    const scoped = new Rollcall({ url: server.url, token: gpus.token });
    const inside = await scoped.register({ name: "gpu-w", machine: { id: "gpu-1" }, labels: { pool: "gpu" } });
    assert.equal(inside.worker.machine_id, "gpu-1");
    await assert.rejects(
      scoped.register({ name: "gpu-w", machine: { id: "cpu-1" }, labels: { pool: "gpu" } }),
      (e) => isApiError(e, "forbidden"),
    );
    await assert.rejects(
      admin.createToken({ kind: "read", name: "ts-bad", scope }),
      (e) => isApiError(e, "invalid_request"),
    );
    await admin.deleteWorker(inside.worker.id);
    await admin.deleteToken(gpus.id);
  });

  it("reports how a process ended, and classifies the offline", async () => {
    const ended = async (name: string, exit?: ExitStatus): Promise<string> => {
      const reg = await admin.register({ name, machine: { id: "ts-exits" } });
      const off = await admin.offline(reg.worker.id, "exited", { token: reg.token, ...(exit ? { exit } : {}) });
      assert.deepEqual([off.status, off.offline_reason], ["offline", "exited"]);
      return reg.worker.id;
    };
    const zero = await ended("exit-0", { exit_code: 0 });
    const three = await ended("exit-3", { exit_code: 3 });
    const killed = await ended("killed-9", { signal: 9 });
    const unknown = await ended("unknown");
    const bye = await admin.register({ name: "bye", machine: { id: "ts-exits" } });
    await admin.offline(bye.worker.id, "shutdown", { token: bye.token });
    // A repeat changes nothing, its status included.
    await admin.offline(three, "exited", { exit: { exit_code: 1 } });
    // An exit status goes only with "exited", and must be in range.
    const other = await admin.register({ name: "refused", machine: { id: "ts-exits" } });
    await assert.rejects(
      admin.offline(other.worker.id, "shutdown", { exit: { exit_code: 1 } }),
      (e) => isApiError(e, "invalid_request"),
    );
    await assert.rejects(
      admin.offline(other.worker.id, "exited", { exit: { signal: 65 } }),
      (e) => isApiError(e, "invalid_request"),
    );
    assert.equal((await admin.getWorker(other.worker.id)).status, "online", "a refused call changes nothing");

    const offlines = (await admin.listEvents({ machine_id: "ts-exits", type: "worker.offline", limit: 1000 })).items;
    const of = (id: string) => {
      const mine = offlines.filter((e) => e.worker_id === id);
      assert.equal(mine.length, 1, `one offline event for ${id}`);
      const e = mine[0]!;
      return [e.reason, e.exit_code, e.signal, offlineClass(e), crashKind(e)];
    };
    assert.deepEqual(of(zero), ["exited", 0, null, "graceful", null]);
    assert.deepEqual(of(three), ["exited", 3, null, "crash", "exited"]);
    assert.deepEqual(of(killed), ["exited", null, 9, "crash", "exited"]);
    assert.deepEqual(of(unknown), ["exited", null, null, "crash", "exited"]);
    assert.deepEqual(of(bye.worker.id), ["shutdown", null, null, "graceful", null]);
    // Only worker.offline events have a class.
    const registered = (await admin.listEvents({ worker_id: zero, type: "worker.registered" })).items[0]!;
    assert.equal(offlineClass(registered), null);
    // The other reasons, as the server records them.
    const base = { ...offlines[0]!, exit_code: null, signal: null };
    assert.deepEqual(
      (["stale", "replaced", "revoked"] as const).map((reason) => [offlineClass({ ...base, reason }), crashKind({ ...base, reason })]),
      [
        ["crash", "stale"],
        ["crash", "replaced"],
        ["administrative", null],
      ],
    );
  });

  it("throws typed errors carrying the contract's code", async () => {
    const anonymous = new Rollcall({ url: server.url });
    await assert.rejects(anonymous.listWorkers(), (e: unknown) => {
      assert.ok(e instanceof ApiError);
      assert.equal(e.status, 401);
      assert.equal(e.code, "unauthorized");
      return true;
    });
    await assert.rejects(admin.register({ name: "bad name!", machine: { id: "ts-host" } }), (e: unknown) => {
      assert.ok(e instanceof ApiError);
      assert.deepEqual([e.status, e.code], [400, "invalid_request"]);
      assert.ok(e.message.length > 0);
      return true;
    });
    await assert.rejects(admin.listWorkers({ limit: 5000 }), (e) => isApiError(e, "invalid_request"));
    const reg = await admin.register({ name: "typed-1", machine: { id: "ts-host-2" } });
    // A worker token on another worker's path is 403.
    await assert.rejects(admin.heartbeat("wkr_someone_else", { token: reg.token }), (e) => isApiError(e, "forbidden"));
    // A heartbeat from an admin token is 403 too: only the worker's own token proves life.
    await assert.rejects(admin.heartbeat(reg.worker.id), (e) => isApiError(e, "forbidden"));
    await admin.offline(reg.worker.id);
    await assert.rejects(admin.drain(reg.worker.id), (e) => isApiError(e, "conflict"));
  });

  it("fails over to the next server when one cannot be reached", async () => {
    const rc = new Rollcall({ urls: [await deadPort(), server.url], token: ADMIN });
    const reg = await rc.register({ name: "failover-1", machine: { id: "ts-host-3" } });
    assert.equal(reg.worker.status, "online");
    assert.equal((await rc.getWorker(reg.worker.id)).id, reg.worker.id);
  });

  it("never sends an unsafe call twice, but repeats a safe one", async () => {
    const peer = await fakePeer(502);
    try {
      const rc = new Rollcall({ urls: [peer.url, server.url], token: ADMIN });
      // 502 from a proxy: the registration may have happened behind it, so it is not repeated.
      await assert.rejects(rc.register({ name: "unsafe-1", machine: { id: "ts-host-4" } }), (e) => {
        assert.ok(e instanceof ApiError);
        assert.equal(e.status, 502);
        return true;
      });
      assert.equal(peer.hits(), 1);
      const missing = await admin.listWorkers({ machine_id: "ts-host-4" });
      assert.equal(missing.items.length, 0, "the real server never saw the registration");
      // A read is safe to repeat: it moves on to the real server.
      const rc2 = new Rollcall({ urls: [peer.url, server.url], token: ADMIN });
      await rc2.listWorkers();
      assert.equal(peer.hits(), 2);
    } finally {
      await peer.close();
    }
    const unavailable = await fakePeer(503);
    try {
      // 503 means "did not act": even a registration moves on.
      const rc = new Rollcall({ urls: [unavailable.url, server.url], token: ADMIN });
      const reg = await rc.register({ name: "unsafe-2", machine: { id: "ts-host-4" } });
      assert.equal(reg.worker.status, "online");
      assert.equal(unavailable.hits(), 1);
    } finally {
      await unavailable.close();
    }
  });

  it("is aborted by an AbortSignal, and times out as a TransportError", async () => {
    const peer = await fakePeer("hang");
    try {
      const rc = new Rollcall({ url: peer.url, token: ADMIN });
      const controller = new AbortController();
      const call = rc.listWorkers({}, { signal: controller.signal });
      setTimeout(() => controller.abort(), 50);
      await assert.rejects(call, (e: unknown) => (e as Error).name === "AbortError");
      const impatient = new Rollcall({ url: peer.url, token: ADMIN, timeoutMs: 200 });
      await assert.rejects(impatient.listWorkers(), (e: unknown) => e instanceof TransportError);
    } finally {
      await peer.close();
    }
  });
});
