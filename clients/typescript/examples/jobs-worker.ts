// A worker that processes jobs and shuts down cleanly.
//
//   ROLLCALL_SERVER=http://127.0.0.1:7373 ROLLCALL_TOKEN=rc_enroll_… node build/examples/jobs-worker.js
//
// In your project, import from "@rollcall/client" instead of "../src/index.js".
import { setTimeout as sleep } from "node:timers/promises";

import { Rollcall } from "../src/index.js";

const rc = new Rollcall({
  urls: (process.env.ROLLCALL_SERVER ?? "http://127.0.0.1:7373").split(","),
  token: process.env.ROLLCALL_TOKEN,
});

const worker = rc.worker({
  name: process.env.WORKER_NAME ?? `jobs-${process.pid}`,
  labels: { queue: "default" },
  ...(process.env.HEARTBEAT_INTERVAL_MS ? { heartbeatIntervalMs: Number(process.env.HEARTBEAT_INTERVAL_MS) } : {}),
});
worker.on("online", (w) => console.log(`online: ${w.id} session ${w.session}`));
worker.on("error", (e) => console.error(`rollcall: ${e instanceof Error ? e.message : String(e)}`));

// With a SIGTERM listener of its own the program decides when to exit: the
// handle says goodbye and aborts `worker.signal`, and the loop below ends
// after the job in hand. (Without one, the process ends right after the
// goodbye, as SIGTERM would have ended it.)
process.on("SIGTERM", () => console.log("SIGTERM: finishing the job in hand"));

await worker.ready();
let done = 0;
while (!worker.signal.aborted) {
  const job = await nextJob(worker.signal);
  if (job === undefined) break;
  await sleep(job.ms); // the work itself: a job is never cut in half
  done += 1;
}
await worker.stop(); // already under way after SIGTERM; resolves when rollcall has the goodbye
console.log(`stopped after ${done} jobs`);

/** Stands for your queue: waits for the next job, or undefined once `signal` aborts. */
async function nextJob(signal: AbortSignal): Promise<{ ms: number } | undefined> {
  try {
    await sleep(50, undefined, { signal });
    return { ms: 20 + Math.floor(Math.random() * 80) };
  } catch {
    return undefined;
  }
}
