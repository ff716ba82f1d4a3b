/**
 * The real `rollcall` binary for the tests: started on port 0 (or a given
 * port, to restart it in place) with short timings, stopped at the end.
 */

import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export const ADMIN = "rc_admin_typescript-client-tests-0123456789";

/** The binary: `ROLLCALL_BIN`, else the workspace's debug build. */
export const BIN = process.env.ROLLCALL_BIN ?? fileURLToPath(new URL("../../../../target/debug/rollcall", import.meta.url));

/** This package's root (the tests run from `build/test`). */
export const PACKAGE_ROOT = fileURLToPath(new URL("../../", import.meta.url));

export interface ServerOptions {
  dataDir?: string;
  port?: number;
  args?: string[];
}

export class Server {
  private constructor(
    readonly process: ChildProcess,
    readonly url: string,
    readonly port: number,
    readonly dataDir: string,
    private readonly ownsDir: boolean,
  ) {}

  static async start(options: ServerOptions = {}): Promise<Server> {
    const ownsDir = options.dataDir === undefined;
    const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), "rollcall-ts-"));
    const args = [
      "serve",
      "--listen",
      `127.0.0.1:${options.port ?? 0}`,
      "--data-dir",
      dataDir,
      "--heartbeat-interval",
      "100ms",
      "--stale-after",
      "500ms",
      "--sweep-interval",
      "1s",
      "--flush-interval",
      "200ms",
      ...(options.args ?? []),
    ];
    const env: NodeJS.ProcessEnv = { ...process.env, ROLLCALL_ADMIN_TOKEN: ADMIN, RUST_LOG: "warn" };
    delete env.ROLLCALL_SERVER;
    delete env.ROLLCALL_TOKEN;
    const child = spawn(BIN, args, { env, stdio: ["ignore", "pipe", "inherit"] });
    const lines = createInterface({ input: child.stdout! });
    const line = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("rollcall serve printed no listening line in 60 s")), 60_000);
      lines.once("line", (l) => {
        clearTimeout(timer);
        resolve(l);
      });
      child.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`rollcall serve exited with ${code} before listening`));
      });
    });
    lines.on("line", () => undefined); // keep the pipe drained
    const match = /^rollcall listening on (http:\/\/127\.0\.0\.1:(\d+))$/.exec(line);
    if (!match) throw new Error(`unexpected first line: ${line}`);
    return new Server(child, match[1]!, Number(match[2]), dataDir, ownsDir);
  }

  /** Starts the same server again, on the same port and data. */
  restart(): Promise<Server> {
    return Server.start({ dataDir: this.dataDir, port: this.port });
  }

  /** SIGTERM, and waits for the exit. */
  async stop(): Promise<void> {
    await this.signal("SIGTERM");
  }

  async signal(signal: NodeJS.Signals): Promise<void> {
    if (this.process.exitCode !== null || this.process.signalCode !== null) return;
    const exited = new Promise((resolve) => this.process.once("exit", resolve));
    this.process.kill(signal);
    await exited;
  }

  /** Stops it and removes its data (unless the data was the caller's). */
  async close(): Promise<void> {
    await this.stop();
    if (this.ownsDir) rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** Polls `check` until it returns a value other than undefined/false, or fails after `timeoutMs`. */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 15_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined && value !== false) return value;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${String(lastError)}` : ""}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}
