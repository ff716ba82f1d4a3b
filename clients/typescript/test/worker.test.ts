// The worker handle against the real server, and worker processes that are
// killed, told to stop, and that outlive a server restart.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";

import { ApiError, Rollcall, crashKind, offlineClass, type Worker } from "../src/index.js";
import { ADMIN, PACKAGE_ROOT, Server, waitFor } from "./server.js";

const EXAMPLE = join(PACKAGE_ROOT, "build/examples/jobs-worker.js");

async function workerNamed(admin: Rollcall, machine: string, name: string): Promise<Worker | undefined> {
  const page = await admin.listWorkers({ machine_id: machine });
  return page.items.find((w) => w.name === name);
}

function startExample(server: Server, enroll: string, name: string): ChildProcess {
  return spawn(process.execPath, [EXAMPLE], {
    env: { ...process.env, ROLLCALL_SERVER: server.url, ROLLCALL_TOKEN: enroll, WORKER_NAME: name, HEARTBEAT_INTERVAL_MS: "100" },
    stdio: ["ignore", "pipe", "inherit"],
  });
}

describe("the worker handle", () => {
  let server: Server;
  let admin: Rollcall;
  let enroll: string;

  before(async () => {
    server = await Server.start();
    admin = new Rollcall({ url: server.url, token: ADMIN });
    enroll = (await admin.createToken({ kind: "enroll", name: "ts-workers" })).token;
  });
  after(async () => server.close());

  it("registers, heartbeats and says goodbye on stop()", async () => {
    const rc = new Rollcall({ url: server.url, token: enroll });
    const handle = rc.worker({ name: "hb-1", machine: "ts-m1", labels: { queue: "q" }, heartbeatIntervalMs: 100, handleSignals: false });
    const online: Worker[] = [];
    handle.on("online", (w) => online.push(w));
    let beats = 0;
    handle.on("heartbeat", () => (beats += 1));
    const worker = await handle.ready();
    assert.equal(worker.status, "online");
    assert.equal(handle.id, worker.id);
    assert.equal(handle.phase, "registered");
    assert.equal(online.length, 1);
    await waitFor("five acknowledged heartbeats", () => beats >= 5);
    const seen = await waitFor("the server to show a heartbeat", async () => {
      const w = await admin.getWorker(worker.id);
      return w.last_heartbeat_at !== null && w;
    });
    assert.deepEqual([seen.status, seen.session, seen.labels], ["online", 1, { queue: "q" }]);

    const drained = await handle.drain();
    assert.equal(drained.status, "draining");
    const before = beats;
    await waitFor("heartbeats while draining", () => beats >= before + 2);
    assert.equal(handle.status, "draining");

    const stopped = once(handle, "stopped");
    const last = await handle.stop();
    assert.deepEqual([last?.status, last?.offline_reason], ["offline", "shutdown"]);
    assert.equal(handle.stop(), handle.stop(), "stop() is idempotent");
    await stopped;
    assert.equal(handle.phase, "stopped");
    assert.equal(handle.signal.aborted, true);
    const after = beats;
    // Nothing more is sent: the worker stays offline (shutdown) on the server.
    const w = await admin.getWorker(worker.id);
    assert.deepEqual([w.status, w.offline_reason], ["offline", "shutdown"]);
    assert.equal(beats, after);
  });

  it("says how its process ended with stop(\"exited\", status)", async () => {
    const rc = new Rollcall({ url: server.url, token: enroll });
    const handle = rc.worker({ name: "exits-1", machine: "ts-m3", heartbeatIntervalMs: 100, handleSignals: false });
    const worker = await handle.ready();
    const last = await handle.stop("exited", { signal: 9 });
    assert.deepEqual([last?.status, last?.offline_reason], ["offline", "exited"]);
    const events = await admin.listEvents({ worker_id: worker.id, type: "worker.offline" });
    assert.deepEqual(
      events.items.map((e) => [e.reason, e.exit_code, e.signal, offlineClass(e), crashKind(e)]),
      [["exited", null, 9, "crash", "exited"]],
    );
  });

  it("registers again after a 401 and reports `replaced`", async () => {
    const rc = new Rollcall({ url: server.url, token: enroll });
    const handle = rc.worker({ name: "rotated-1", machine: "ts-m2", heartbeatIntervalMs: 100, handleSignals: false });
    const first = await handle.ready();
    const replaced: string[] = [];
    handle.on("replaced", ({ workerId, error }) => {
      assert.ok(error instanceof ApiError && error.code === "unauthorized");
      replaced.push(workerId);
    });
    // Another registration of the same name on the same machine rotates the token.
    const other = await admin.register({ name: "rotated-1", machine: { id: "ts-m2" } });
    assert.equal(other.worker.id, first.id);
    await waitFor("the handle to register again", () => handle.registrations === 2);
    assert.deepEqual(replaced, [first.id]);
    const w = await admin.getWorker(first.id);
    assert.equal(w.status, "online");
    assert.ok(w.session > other.worker.session, "the handle's registration is the newest session");
    assert.equal(handle.session, w.session);
    await handle.stop();
  });

  it("reports `resumed` when a heartbeat brings the worker back", async () => {
    const rc = new Rollcall({ url: server.url, token: enroll });
    const handle = rc.worker({ name: "resumed-1", machine: "ts-m2", heartbeatIntervalMs: 100, handleSignals: false });
    try {
      const first = await handle.ready();
      const resumed = new Promise<number>((resolve) => handle.once("resumed", (ack) => resolve(ack.session)));
      // An admin marks it offline; its next heartbeat brings it back in a new session.
      await admin.offline(first.id);
      const session = await resumed;
      assert.equal(session, first.session + 1);
      assert.equal(handle.session, session);
      // The heartbeat is answered before the resume is committed; the
      // worker shows online once it is durable.
      const shown = await waitFor("the resume to be shown", async () => {
        const w = await admin.getWorker(first.id);
        return w.status === "online" ? w : undefined;
      });
      assert.equal(shown.session, session);
    } finally {
      // A failed assertion must not leave the handle heartbeating (the
      // test process would never end).
      await handle.stop();
    }
  });

  it("keeps its session across a server restart", async () => {
    const dataServer = await Server.start();
    let current = dataServer;
    try {
      const a = new Rollcall({ url: current.url, token: ADMIN });
      const token = (await a.createToken({ kind: "enroll", name: "restart" })).token;
      const rc = new Rollcall({ url: current.url, token });
      const handle = rc.worker({ name: "restart-1", machine: "ts-m3", heartbeatIntervalMs: 100, initialBackoffMs: 20, handleSignals: false });
      const first = await handle.ready();
      const errors: unknown[] = [];
      handle.on("error", (e) => errors.push(e));
      await current.stop();
      await waitFor("the handle to notice the server is gone", () => handle.consecutiveFailures > 0);
      current = await dataServer.restart();
      let beats = 0;
      handle.on("heartbeat", () => (beats += 1));
      await waitFor("heartbeats after the restart", () => beats >= 3);
      assert.equal(handle.registrations, 1, "no re-registration");
      assert.equal(handle.session, first.session);
      const w = await new Rollcall({ url: current.url, token: ADMIN }).getWorker(first.id);
      assert.deepEqual([w.status, w.session], ["online", first.session]);
      assert.ok(errors.length > 0);
      await handle.stop();
    } finally {
      await current.close();
    }
  });

  it("stops, rejecting ready(), when the registration is refused", async () => {
    const rc = new Rollcall({ url: server.url, token: enroll });
    const handle = rc.worker({ name: "no spaces allowed", machine: "ts-m4", handleSignals: false });
    await assert.rejects(handle.ready(), (e) => e instanceof ApiError && e.code === "invalid_request");
    await once(handle, "stopped");
    assert.equal(handle.phase, "stopped");
  });

  it("a kill -9'd Node worker goes stale", async () => {
    const child = startExample(server, enroll, "killed-1");
    try {
      const machine = (await waitFor("the example to register", async () => {
        const page = await admin.listWorkers({ status: "online" });
        return page.items.find((w) => w.name === "killed-1");
      })).machine_id;
      child.kill("SIGKILL");
      await once(child, "exit");
      const w = await waitFor("the killed worker to go stale", async () => {
        const w = await workerNamed(admin, machine, "killed-1");
        return w?.status === "offline" && w;
      });
      assert.equal(w.offline_reason, "stale");
    } finally {
      child.kill("SIGKILL");
    }
  });

  it("SIGTERM says goodbye (shutdown) and the job loop ends cleanly", async () => {
    const child = startExample(server, enroll, "sigterm-1");
    let out = "";
    child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
    try {
      const registered = await waitFor("the example to register", async () => {
        const page = await admin.listWorkers({ status: "online" });
        return page.items.find((w) => w.name === "sigterm-1");
      });
      await waitFor("a heartbeat from the example", async () => (await admin.getWorker(registered.id)).last_heartbeat_at !== null);
      const exited = once(child, "exit");
      child.kill("SIGTERM");
      const [code, signal] = (await exited) as [number | null, string | null];
      assert.deepEqual([code, signal], [0, null], out);
      assert.match(out, /stopped after \d+ jobs/);
      assert.match(out, /SIGTERM: finishing the job in hand/);
      const w = await admin.getWorker(registered.id);
      assert.deepEqual([w.status, w.offline_reason], ["offline", "shutdown"]);
    } finally {
      child.kill("SIGKILL");
    }
  });

  it("SIGTERM without a listener of the program's own: goodbye, then the process ends by SIGTERM", async () => {
    const index = join(PACKAGE_ROOT, "build/src/index.js");
    const script = `
      import { Rollcall } from ${JSON.stringify(index)};
      const rc = new Rollcall({ url: process.env.ROLLCALL_SERVER, token: process.env.ROLLCALL_TOKEN });
      const w = rc.worker({ name: "plain-1", heartbeatIntervalMs: 100 });
      await w.ready();
      console.log(w.id);
    `;
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
      env: { ...process.env, ROLLCALL_SERVER: server.url, ROLLCALL_TOKEN: enroll },
      stdio: ["ignore", "pipe", "inherit"],
    });
    try {
      const [line] = (await once(child.stdout!, "data")) as [Buffer];
      const id = line.toString().trim();
      const exited = once(child, "exit");
      child.kill("SIGTERM");
      const [code, signal] = (await exited) as [number | null, string | null];
      assert.deepEqual([code, signal], [null, "SIGTERM"]);
      const w = await admin.getWorker(id);
      assert.deepEqual([w.status, w.offline_reason], ["offline", "shutdown"]);
    } finally {
      child.kill("SIGKILL");
    }
  });
});
