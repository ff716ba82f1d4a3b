// Measures, against a real rollcall server started here:
// 1. batch heartbeats: how many heartbeats per second one Node process
//    sustains for 1,000 workers with `POST /v1/heartbeats` (one batch of
//    1,000 in flight at a time), and the client CPU per heartbeat;
// 2. the memory of one idle worker handle (registered, waiting for its next
//    heartbeat), from 1,000 of them.
//
//   npm run bench                         (BENCH_SECONDS=10, ROLLCALL_BIN as for the tests)
import { Rollcall, type BatchEntry, type WorkerHandle } from "../src/index.js";
import { ADMIN, Server } from "../test/server.js";

const WORKERS = 1000;
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);

function gc(): void {
  const g = (globalThis as { gc?: () => void }).gc;
  if (!g) throw new Error("run with node --expose-gc");
  g();
  g();
}

const server = await Server.start({ args: ["--max-stale-after", "1d"] });
try {
  const admin = new Rollcall({ url: server.url, token: ADMIN });
  const enroll = (await admin.createToken({ kind: "enroll", name: "bench" })).token;
  const rc = new Rollcall({ url: server.url, token: enroll });

  // 1. Batch heartbeats.
  const entries: BatchEntry[] = [];
  for (let i = 0; i < WORKERS; i += 50) {
    const batch = await Promise.all(
      Array.from({ length: 50 }, (_, k) =>
        rc.register({ name: `b-${i + k}`, machine: { id: "bench-ts" }, heartbeat_interval_ms: 10_000 }),
      ),
    );
    entries.push(...batch.map((r) => ({ worker_id: r.worker.id, token: r.token })));
  }
  await rc.heartbeats(entries); // warm-up
  let beats = 0;
  let batches = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  while (performance.now() - t0 < SECONDS * 1000) {
    const results = await rc.heartbeats(entries);
    if (!results.every((r) => r.ok)) throw new Error("a heartbeat was refused");
    beats += results.length;
    batches += 1;
  }
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const cpuUs = cpu.user + cpu.system;
  console.log(
    JSON.stringify({
      bench: "typescript batch heartbeats",
      workers: WORKERS,
      seconds: Number(seconds.toFixed(2)),
      batches,
      heartbeats_per_s: Math.round(beats / seconds),
      client_cpu_us_per_heartbeat: Number((cpuUs / beats).toFixed(2)),
      client_cpu_share: Number((cpuUs / 1e6 / seconds).toFixed(2)),
    }),
  );

  // 2. Idle worker handles.
  gc();
  const heap0 = process.memoryUsage();
  const handles: WorkerHandle[] = [];
  for (let i = 0; i < WORKERS; i++) {
    handles.push(rc.worker({ name: `idle-${i}`, machine: "bench-ts-idle", heartbeatIntervalMs: 60_000, handleSignals: false }));
  }
  await Promise.all(handles.map((h) => h.ready()));
  gc();
  const heap1 = process.memoryUsage();
  console.log(
    JSON.stringify({
      bench: "typescript idle worker handle",
      handles: WORKERS,
      heap_bytes_per_handle: Math.round((heap1.heapUsed - heap0.heapUsed) / WORKERS),
      rss_bytes_per_handle: Math.round((heap1.rss - heap0.rss) / WORKERS),
    }),
  );
  await Promise.all(handles.map((h) => h.stop()));
} finally {
  await server.close();
}
