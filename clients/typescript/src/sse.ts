/**
 * The event stream as an async iterator: a server-sent-events parser over
 * `fetch`'s body, and reconnection with `Last-Event-ID` so that a dropped
 * connection loses nothing and repeats nothing.
 */

import { retryDelay } from "./backoff.js";
import { ApiError } from "./errors.js";
import type { Event } from "./types.js";

export interface StreamOptions {
  /** Replay every event after this seq first; without it the stream starts live. */
  after?: number;
  /** Stops the iteration (it then ends quietly). */
  signal?: AbortSignal;
  /** Reconnect when the connection drops (default true). False: the iteration ends instead. */
  reconnect?: boolean;
  /**
   * Reconnect when nothing (not even the server's keep-alive comment, sent at
   * least every 15 s) arrived for this long; default 45 000 ms.
   */
  idleTimeoutMs?: number;
}

type Connect = (
  lastEventId: number | undefined,
  signal: AbortSignal,
) => Promise<{ response: Response; url: string; dispose: () => void }>;

/** One parsed message: the fields that matter to rollcall. */
interface Message {
  id: string | undefined;
  event: string | undefined;
  data: string;
}

/** Splits a text/event-stream body into messages (the WHATWG rules that rollcall's server uses). */
export async function* parseMessages(chunks: AsyncIterable<Uint8Array>): AsyncGenerator<Message> {
  const decoder = new TextDecoder();
  let buffer = "";
  let id: string | undefined;
  let event: string | undefined;
  let data: string[] = [];
  for await (const chunk of chunks) {
    buffer += decoder.decode(chunk, { stream: true });
    let newline: number;
    while ((newline = buffer.search(/\r\n|\n|\r/)) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
      if (line === "") {
        if (data.length > 0) yield { id, event, data: data.join("\n") };
        event = undefined;
        data = [];
        continue;
      }
      if (line.startsWith(":")) continue; // keep-alive comment
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "id") id = value;
      else if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
  }
}

/** Yields the body's chunks, aborting the connection when nothing arrives for `idleMs`. */
async function* withIdleTimeout(
  body: ReadableStream<Uint8Array>,
  idleMs: number,
  onIdle: () => void,
): AsyncGenerator<Uint8Array> {
  const reader = body.getReader();
  let timer: NodeJS.Timeout | undefined;
  try {
    for (;;) {
      timer = setTimeout(onIdle, idleMs);
      const { done, value } = await reader.read();
      clearTimeout(timer);
      if (done) return;
      yield value;
    }
  } finally {
    clearTimeout(timer);
    await reader.cancel().catch(() => undefined);
  }
}

export async function* eventStream(options: StreamOptions, connect: Connect): AsyncGenerator<Event> {
  let last = options.after;
  const idleMs = options.idleTimeoutMs ?? 45_000;
  const reconnect = options.reconnect ?? true;
  let failures = 0;
  while (!options.signal?.aborted) {
    const connection = new AbortController();
    const onAbort = (): void => connection.abort(options.signal?.reason);
    options.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      const { response, dispose } = await connect(last, connection.signal);
      try {
        if (!response.body) return;
        const chunks = withIdleTimeout(response.body, idleMs, () => connection.abort(new Error("idle")));
        for await (const message of parseMessages(chunks)) {
          failures = 0;
          const event = JSON.parse(message.data) as Event;
          last = event.seq;
          yield event;
        }
        // The server ended the stream (a restart, say): reconnect after a
        // short pause, longer if it keeps happening without events.
        failures += 1;
      } finally {
        dispose();
      }
    } catch (error) {
      if (options.signal?.aborted) return;
      // Errors the server means (401, 403, 400) end the iteration; a lost
      // connection or an unavailable server is retried.
      if (error instanceof ApiError && error.status !== 503 && error.status !== 502 && error.status !== 504) {
        throw error;
      }
      if (!reconnect) throw error;
      failures += 1;
    } finally {
      options.signal?.removeEventListener("abort", onAbort);
      connection.abort();
    }
    if (!reconnect) return;
    if (failures > 0) {
      await sleep(retryDelay(failures, 250, 5_000, Math.random()), options.signal);
    }
  }
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
