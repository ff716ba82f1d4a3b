// rollcall dashboard: vanilla JavaScript, no framework, no build step.
//
// How it stays true without reloading:
//   1. It opens GET /v1/events/stream (fetch() with the token in the
//      Authorization header; EventSource cannot send one) from "now".
//   2. With the stream open, it loads the fleet (GET /v1/machines and
//      /v1/workers, every page). Events that arrive meanwhile are held.
//   3. It applies the held events, then every event as it comes. Events are
//      applied in seq order, so whatever the snapshot saw, each worker ends
//      in the state of its last event. Worker events are patched into the
//      model; a worker or machine it does not know yet is fetched.
//   4. When the stream drops it reconnects with Last-Event-ID and the server
//      replays what was missed.
// Heartbeats are not events, so the machines on screen are re-read every few
// seconds to keep "last heartbeat" fresh.
//
// Rendering: events change a model (Maps) at once; the DOM follows in
// requestAnimationFrame batches, a few milliseconds of work per frame, only
// for what changed. Relative times tick once a second for the rows on
// screen only (IntersectionObserver). That keeps 5,000 workers smooth.
//
// The token lives in sessionStorage (this tab only) and in memory; it is
// never put in a URL and never logged.

'use strict';

const TOKEN_KEY = 'rollcall.token';
const PAGE_LIMIT = 1000;
const FEED_LIMIT = 100;
const FEED_INTERVAL_MS = 250;
const FETCH_CONCURRENCY = 4;
const REFRESH_VISIBLE_MS = 5000;
const REFRESH_MACHINES_PER_ROUND = 8;
const RESYNC_MACHINES_MS = 60000;
// The server sends a keep-alive comment every 10 s; silence for this long
// means the connection is dead even if no error was raised.
const STREAM_SILENCE_MS = 35000;
// DOM work per animation frame before yielding to the browser.
const FRAME_BUDGET_MS = 8;

const $ = (id) => document.getElementById(id);

/** A request the token may not make (401 or 403). */
class AuthError extends Error {
  constructor(status) {
    super(status === 401 ? 'unauthorized' : 'forbidden');
    this.status = status;
  }
}

function isAbort(e) {
  return e && e.name === 'AbortError';
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

// ---------------------------------------------------------------- formatting

function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, '0')} s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h} h ${String(m % 60).padStart(2, '0')} min`;
  const d = Math.floor(h / 24);
  return `${d} d ${h % 24} h`;
}

function ago(ms) {
  return ms < 1000 ? 'just now' : `${duration(ms)} ago`;
}

const clockFormat = new Intl.DateTimeFormat(undefined, {
  hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false,
});
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

function parseTime(iso) {
  if (!iso) return null;
  const t = Date.parse(iso);
  return Number.isNaN(t) ? null : t;
}

/** Sets text only when it changed: DOM writes are what costs. */
function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

function setAttr(el, name, value) {
  if (value === null || value === undefined) {
    if (el.hasAttribute(name)) el.removeAttribute(name);
  } else if (el.getAttribute(name) !== value) {
    el.setAttribute(name, value);
  }
}

function setBadge(el, status, reason) {
  setAttr(el, 'data-status', status);
  setAttr(el, 'data-reason', reason || null);
  setText(el, reason ? `${status} · ${reason}` : status);
}

function labelPairs(labels) {
  return Object.entries(labels || {}).map(([k, v]) => (v === '' ? k : `${k}=${v}`));
}

function setLabels(ul, labels) {
  const pairs = labelPairs(labels);
  const key = pairs.join('\u0000');
  if (ul.dataset.key === key) return;
  ul.dataset.key = key;
  ul.replaceChildren(...pairs.map((p) => {
    const li = document.createElement('li');
    li.textContent = p;
    return li;
  }));
}

function byKey(a, b) {
  return a.sortKey < b.sortKey ? -1 : a.sortKey > b.sortKey ? 1 : 0;
}

/**
 * Inserts `items` (sorted by `byKey`) among the children of `parent` (also
 * sorted, each child's entry found by `entryOf`), moving no existing child.
 */
function mergeInto(parent, items, elementOf, entryOf) {
  let next = parent.firstElementChild;
  for (const item of items) {
    while (next !== null) {
      const entry = entryOf(next);
      if (entry && byKey(entry, item) > 0) break;
      next = next.nextElementSibling;
    }
    parent.insertBefore(elementOf(item), next);
  }
}

// ------------------------------------------------------------------- model

/** The fleet as this tab knows it, kept current from the event stream. */
class Dashboard {
  constructor(token, ui) {
    this.token = token;
    this.ui = ui;
    this.abort = new AbortController();
    this.stopped = false;

    this.machines = new Map(); // id -> machine entry
    this.workers = new Map(); // id -> worker entry
    this.deleted = new Map(); // worker id -> seq of its worker.deleted event
    this.lastSeq = null; // the seq of the last event received
    this.loading = true; // a snapshot is being loaded; events are held
    this.held = [];
    this.snapshotGeneration = 0;
    this.skewMs = 0; // server clock minus ours, when it matters

    this.dirtyWorkers = new Set();
    this.dirtyMachines = new Set();
    this.refilter = false;
    this.feedQueue = [];
    this.lastFeed = 0;
    this.feedTimer = 0;
    this.frame = 0;

    this.queue = new Map(); // fetches to make, by "w:<id>" / "m:<id>"
    this.inflight = 0;

    this.filter = { status: 'all', terms: [] };
    this.onScreen = new Set(); // worker and machine entries near the viewport
    this.entryOf = new WeakMap(); // element -> entry, for the observer
    this.observer = new IntersectionObserver((entries) => this.onIntersect(entries), {
      rootMargin: '200px 0px',
    });

    this.timers = [
      setInterval(() => this.tick(), 1000),
      setInterval(() => this.refreshVisible(), REFRESH_VISIBLE_MS),
      setInterval(() => this.resyncMachines(), RESYNC_MACHINES_MS),
    ];
  }

  start() {
    this.streamLoop();
  }

  stop() {
    this.stopped = true;
    this.abort.abort();
    for (const t of this.timers) clearInterval(t);
    if (this.frame) cancelAnimationFrame(this.frame);
    clearTimeout(this.feedTimer);
    this.observer.disconnect();
  }

  now() {
    return Date.now() + this.skewMs;
  }

  /** Learns the server's clock from a response, to show true ages. */
  noteClock(res) {
    const date = parseTime(res.headers.get('date'));
    if (date === null) return;
    const skew = date - Date.now();
    // The Date header has a one-second resolution: ignore small skews.
    this.skewMs = Math.abs(skew) > 2000 ? skew : 0;
  }

  async api(path) {
    const res = await fetch(path, {
      headers: { Authorization: `Bearer ${this.token}`, Accept: 'application/json' },
      signal: this.abort.signal,
      cache: 'no-store',
    });
    this.noteClock(res);
    if (res.status === 401 || res.status === 403) throw new AuthError(res.status);
    if (res.status === 404) return null;
    if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
    return res.json();
  }

  async pages(path) {
    const items = [];
    let cursor = null;
    for (;;) {
      const sep = path.includes('?') ? '&' : '?';
      const url = `${path}${sep}limit=${PAGE_LIMIT}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
      const page = await this.api(url);
      if (page === null) return items;
      items.push(...page.items);
      if (!page.next_cursor) return items;
      cursor = page.next_cursor;
    }
  }

  /** Errors of background work: auth ends the session, the rest retries. */
  onBackgroundError(e) {
    if (this.stopped || isAbort(e)) return;
    if (e instanceof AuthError) {
      this.ui.authLost(e.status);
      return;
    }
    this.ui.notice('Some data could not be loaded; retrying.');
  }

  // ------------------------------------------------------------ the stream

  async streamLoop() {
    let attempt = 0;
    while (!this.stopped) {
      const resume = this.lastSeq;
      const conn = new AbortController();
      const onStop = () => conn.abort();
      this.abort.signal.addEventListener('abort', onStop, { once: true });
      let watchdog = 0;
      try {
        const headers = {
          Authorization: `Bearer ${this.token}`,
          Accept: 'text/event-stream',
        };
        if (resume !== null) headers['Last-Event-ID'] = String(resume);
        this.ui.connection(attempt === 0 && resume === null ? 'connecting' : 'reconnecting');
        const res = await fetch('/v1/events/stream', {
          headers, signal: conn.signal, cache: 'no-store',
        });
        this.noteClock(res);
        if (res.status === 401 || res.status === 403) {
          this.ui.authLost(res.status);
          return;
        }
        if (!res.ok || !res.body) throw new Error(`event stream: HTTP ${res.status}`);
        attempt = 0;
        this.ui.connection('live');
        if (resume === null) {
          // Live from now: the snapshot fills in everything before.
          this.held = [];
          this.loadSnapshot();
        }
        let lastData = Date.now();
        watchdog = setInterval(() => {
          if (Date.now() - lastData > STREAM_SILENCE_MS) conn.abort();
        }, 5000);
        await this.readStream(res.body.getReader(), () => { lastData = Date.now(); });
      } catch (e) {
        if (this.stopped) return;
        // Network failures (TypeError) and the watchdog (AbortError) just
        // reconnect; anything else is a bug worth seeing in the console.
        if (!isAbort(e) && !(e instanceof TypeError)) reportError(e);
      } finally {
        clearInterval(watchdog);
        this.abort.signal.removeEventListener('abort', onStop);
      }
      if (this.stopped) return;
      // The server ended the stream (it restarted, or this tab fell behind)
      // or the network failed: resume from the last event received.
      this.ui.connection('reconnecting');
      const backoff = Math.min(10000, 500 * 2 ** Math.min(attempt, 5));
      attempt += 1;
      await sleep(backoff / 2 + Math.random() * (backoff / 2), this.abort.signal);
    }
  }

  async readStream(reader, onData) {
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      onData();
      buffer += decoder.decode(value, { stream: true });
      if (buffer.indexOf('\n\n') < 0) continue;
      const blocks = buffer.split('\n\n');
      buffer = blocks.pop();
      for (const block of blocks) this.onMessage(block);
    }
  }

  /** One server-sent-events message (comments are keep-alives). */
  onMessage(block) {
    let id = null;
    let data = null;
    for (const raw of block.split('\n')) {
      const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
      if (line === '' || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'id') id = value;
      else if (field === 'data') data = data === null ? value : `${data}\n${value}`;
    }
    if (data === null) return;
    const event = JSON.parse(data);
    if (id !== null && id !== '') this.lastSeq = Number(id);
    this.feedQueue.push(event);
    if (this.feedQueue.length > FEED_LIMIT) this.feedQueue.splice(0, this.feedQueue.length - FEED_LIMIT);
    if (this.loading) this.held.push(event);
    else this.apply(event);
    this.schedule();
  }

  // ----------------------------------------------------- applying changes

  apply(ev) {
    switch (ev.type) {
      case 'worker.registered':
        // A new worker, or a new session with new labels: read it.
        this.enqueue('w', ev.worker_id);
        break;
      case 'worker.online':
      case 'worker.draining':
      case 'worker.offline': {
        const w = this.workers.get(ev.worker_id);
        if (!w) {
          this.enqueue('w', ev.worker_id);
          break;
        }
        const d = w.data;
        d.status = ev.type.slice('worker.'.length);
        d.offline_reason = d.status === 'offline' ? ev.reason : null;
        if (ev.session !== null && ev.session !== undefined) d.session = ev.session;
        d.status_changed_at = ev.at;
        if (d.status === 'offline') d.deadline_at = null;
        // A heartbeat brought it back: that heartbeat is its last one.
        if (ev.type === 'worker.online' && ev.reason === 'heartbeat') d.last_heartbeat_at = ev.at;
        w.seq = ev.seq;
        this.touchWorker(w);
        break;
      }
      case 'worker.deleted': {
        // A read that began before this event must not bring it back.
        this.deleted.set(ev.worker_id, ev.seq);
        const w = this.workers.get(ev.worker_id);
        if (w) this.removeWorker(w);
        break;
      }
      case 'machine.online':
      case 'machine.offline': {
        const m = this.machines.get(ev.machine_id);
        if (!m || m.placeholder) {
          this.enqueue('m', ev.machine_id);
          break;
        }
        m.data.status = ev.type.slice('machine.'.length);
        m.data.status_changed_at = ev.at;
        m.seq = ev.seq;
        this.touchMachine(m);
        break;
      }
      default:
        // A newer server may send more types; they change nothing here.
        break;
    }
  }

  async loadSnapshot() {
    const generation = ++this.snapshotGeneration;
    this.loading = true;
    try {
      const machines = await this.pages('/v1/machines');
      const workers = await this.pages('/v1/workers');
      if (generation !== this.snapshotGeneration || this.stopped) return;
      this.replaceAll(machines, workers);
      this.loading = false;
      const held = this.held;
      this.held = [];
      for (const ev of held) this.apply(ev);
      this.ui.loaded();
      this.schedule();
    } catch (e) {
      if (generation !== this.snapshotGeneration || this.stopped || isAbort(e)) return;
      this.onBackgroundError(e);
      if (e instanceof AuthError) return;
      await sleep(2000, this.abort.signal);
      if (generation === this.snapshotGeneration && !this.stopped) this.loadSnapshot();
    }
  }

  /** Takes a full snapshot as the truth, keeping the elements it can. */
  replaceAll(machines, workers) {
    const seenMachines = new Set();
    const seenWorkers = new Set();
    for (const md of machines) {
      seenMachines.add(md.id);
      const m = this.ensureMachine(md.id, false);
      m.data = md;
      m.placeholder = false;
      m.seq = 0;
      this.touchMachine(m);
    }
    // Nothing is newer than a snapshot: it replaces what was known.
    this.deleted.clear();
    for (const wd of workers) {
      seenWorkers.add(wd.id);
      this.mergeWorker(wd, Infinity).seq = 0;
    }
    for (const w of [...this.workers.values()]) {
      if (!seenWorkers.has(w.id)) this.removeWorker(w);
    }
    for (const m of [...this.machines.values()]) {
      if (!seenMachines.has(m.id) && m.workers.size === 0) this.removeMachine(m);
    }
  }

  ensureMachine(id, fetchIfNew = true) {
    let m = this.machines.get(id);
    if (m) return m;
    m = {
      id,
      sortKey: id,
      data: {
        id, hostname: null, labels: {}, status: 'offline', status_changed_at: null,
      },
      placeholder: true,
      workers: new Set(),
      seq: 0,
      el: null,
      shown: true,
      collapsed: false,
      near: false, // near the viewport: its rows are observed
      haystack: id.toLowerCase(),
      refreshedAt: 0,
    };
    this.machines.set(id, m);
    this.touchMachine(m);
    if (fetchIfNew) this.enqueue('m', id);
    return m;
  }

  /**
   * Takes a worker record read from the API. `since` is the last seq this
   * tab had received when the read began: an event newer than that already
   * applied to the worker is newer than the record's status, so it stays.
   */
  mergeWorker(data, since) {
    if ((this.deleted.get(data.id) ?? -1) > since) return null;
    let w = this.workers.get(data.id);
    const m = this.ensureMachine(data.machine_id);
    if (!w) {
      w = {
        id: data.id, data, machine: m, seq: 0, el: null, shown: true,
        sortKey: `${data.name}\u0000${data.id}`, haystack: '',
      };
      this.workers.set(data.id, w);
      m.workers.add(w);
    } else {
      const old = w.data;
      if (w.seq > since) {
        for (const k of ['status', 'offline_reason', 'session', 'status_changed_at', 'deadline_at']) {
          data[k] = old[k];
        }
      }
      const oldBeat = parseTime(old.last_heartbeat_at);
      const newBeat = parseTime(data.last_heartbeat_at);
      if (oldBeat !== null && (newBeat === null || oldBeat > newBeat)) {
        data.last_heartbeat_at = old.last_heartbeat_at;
      }
      w.data = data;
    }
    if (since !== Infinity) w.seq = Math.max(w.seq, since);
    w.haystack = [data.name, data.id, ...labelPairs(data.labels)].join(' ').toLowerCase();
    this.touchWorker(w);
    return w;
  }

  mergeMachine(data, since) {
    const m = this.ensureMachine(data.id, false);
    if (m.seq > since && !m.placeholder) {
      data.status = m.data.status;
      data.status_changed_at = m.data.status_changed_at;
    }
    m.data = data;
    m.placeholder = false;
    m.seq = Math.max(m.seq, since);
    this.touchMachine(m);
    return m;
  }

  removeWorker(w) {
    w.removed = true;
    this.workers.delete(w.id);
    w.machine.workers.delete(w);
    this.dirtyWorkers.add(w);
    this.touchMachine(w.machine);
  }

  removeMachine(m) {
    m.removed = true;
    this.machines.delete(m.id);
    this.dirtyMachines.add(m);
    this.schedule();
  }

  touchWorker(w) {
    this.dirtyWorkers.add(w);
    this.touchMachine(w.machine);
  }

  touchMachine(m) {
    m.haystack = [m.id, m.data.hostname || '', ...labelPairs(m.data.labels)].join(' ').toLowerCase();
    this.dirtyMachines.add(m);
    this.schedule();
  }

  // -------------------------------------------------------------- fetching

  enqueue(kind, id) {
    if (!id) return;
    const key = `${kind}:${id}`;
    if (this.queue.has(key)) return;
    this.queue.set(key, { kind, id });
    this.pump();
  }

  pump() {
    while (!this.stopped && this.inflight < FETCH_CONCURRENCY && this.queue.size > 0) {
      const [key, job] = this.queue.entries().next().value;
      this.queue.delete(key);
      this.inflight += 1;
      this.run(job)
        .catch((e) => {
          this.onBackgroundError(e);
          if (!this.stopped && !(e instanceof AuthError) && !isAbort(e)) {
            sleep(2000, this.abort.signal).then(() => this.enqueue(job.kind, job.id));
          }
        })
        .finally(() => {
          this.inflight -= 1;
          this.pump();
        });
    }
  }

  async run(job) {
    const since = this.lastSeq ?? 0;
    if (job.kind === 'w') {
      const data = await this.api(`/v1/workers/${encodeURIComponent(job.id)}`);
      if (this.stopped) return;
      const w = this.workers.get(job.id);
      if (data === null) {
        if (w && w.seq <= since) this.removeWorker(w);
      } else {
        this.mergeWorker(data, since);
      }
      return;
    }
    const detail = await this.api(`/v1/machines/${encodeURIComponent(job.id)}`);
    if (this.stopped) return;
    const m = this.machines.get(job.id);
    if (detail === null) {
      if (m && m.workers.size === 0) this.removeMachine(m);
      return;
    }
    const { workers, ...machine } = detail;
    const entry = this.mergeMachine(machine, since);
    entry.refreshedAt = Date.now();
    const seen = new Set();
    for (const wd of workers || []) {
      seen.add(wd.id);
      this.mergeWorker(wd, since);
    }
    for (const w of [...entry.workers]) {
      // Gone from the machine, and nothing newer says otherwise.
      if (!seen.has(w.id) && w.seq <= since) this.removeWorker(w);
    }
  }

  /** Heartbeats are not events: re-read the machines on screen. */
  refreshVisible() {
    if (this.loading || document.visibilityState !== 'visible') return;
    const due = [...this.onScreen]
      .filter((e) => e.kind === 'machine' && !e.entry.removed)
      .map((e) => e.entry)
      .filter((m) => Date.now() - m.refreshedAt >= REFRESH_VISIBLE_MS - 500)
      .sort((a, b) => a.refreshedAt - b.refreshedAt)
      .slice(0, REFRESH_MACHINES_PER_ROUND);
    for (const m of due) this.enqueue('m', m.id);
  }

  /** Machines are forgotten without an event: re-read the list now and then. */
  async resyncMachines() {
    if (this.loading || this.stopped || document.visibilityState !== 'visible') return;
    try {
      const since = this.lastSeq ?? 0;
      const list = await this.pages('/v1/machines');
      if (this.stopped) return;
      const seen = new Set();
      for (const md of list) {
        seen.add(md.id);
        this.mergeMachine(md, since);
      }
      for (const m of [...this.machines.values()]) {
        if (!seen.has(m.id) && m.workers.size === 0 && m.seq <= since) this.removeMachine(m);
      }
    } catch (e) {
      this.onBackgroundError(e);
    }
  }

  // ---------------------------------------------------------------- filter

  setFilter(status, text) {
    this.filter = {
      status,
      terms: text.toLowerCase().split(/\s+/).filter(Boolean),
    };
    this.refilter = true;
    this.schedule();
  }

  workerMatches(w) {
    const f = this.filter;
    if (f.status !== 'all' && w.data.status !== f.status) return false;
    if (f.terms.length === 0) return true;
    const hay = `${w.haystack} ${w.machine.haystack}`;
    return f.terms.every((t) => hay.includes(t));
  }

  machineMatches(m) {
    for (const w of m.workers) if (w.shown) return true;
    const f = this.filter;
    return m.workers.size === 0 && f.status === 'all'
      && f.terms.every((t) => m.haystack.includes(t));
  }

  // -------------------------------------------------------------- rendering

  schedule() {
    if (!this.frame && !this.stopped) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    const started = performance.now();
    const now = this.now();
    const added = new Map(); // machine -> rows added this frame

    if (this.refilter) {
      this.refilter = false;
      for (const w of this.workers.values()) this.applyWorkerFilter(w);
      for (const m of this.machines.values()) this.dirtyMachines.add(m);
    }

    for (const w of this.dirtyWorkers) {
      this.dirtyWorkers.delete(w);
      if (w.removed) {
        if (w.el) {
          this.observer.unobserve(w.el.row);
          this.onScreen.delete(w.el.ref);
          w.el.row.remove();
        }
        continue;
      }
      if (!w.el) {
        this.createWorkerRow(w);
        if (!added.has(w.machine)) added.set(w.machine, []);
        added.get(w.machine).push(w);
      }
      this.renderWorker(w, now);
      this.applyWorkerFilter(w);
      this.dirtyMachines.add(w.machine);
      if (performance.now() - started > FRAME_BUDGET_MS) break;
    }

    const newMachines = [];
    for (const [m, rows] of added) {
      if (!m.el) {
        this.createMachine(m);
        newMachines.push(m);
      }
      this.placeRows(m, rows);
      for (const w of rows) this.ui.nameInFeed(w.id, w.data.name);
    }

    for (const m of this.dirtyMachines) {
      this.dirtyMachines.delete(m);
      if (m.removed) {
        if (m.el) {
          this.observer.unobserve(m.el.root);
          this.onScreen.delete(m.el.ref);
          m.el.root.remove();
        }
        continue;
      }
      if (!m.el) {
        this.createMachine(m);
        newMachines.push(m);
      }
      this.renderMachine(m, now);
      const shown = this.machineMatches(m);
      if (shown !== m.shown) {
        m.shown = shown;
        m.el.root.hidden = !shown;
      }
    }
    if (newMachines.length > 0) this.placeMachines(newMachines);

    this.renderCounts();
    this.renderFeed();

    if (this.dirtyWorkers.size > 0 || this.dirtyMachines.size > 0) this.schedule();
  }

  createWorkerRow(w) {
    const row = this.ui.templates.worker.cloneNode(true);
    const ref = { kind: 'worker', entry: w };
    w.el = {
      row,
      ref,
      name: row.querySelector('.w-name'),
      id: row.querySelector('.w-id'),
      badge: row.querySelector('.badge'),
      heartbeat: row.querySelector('.w-heartbeat'),
      session: row.querySelector('.w-session'),
      since: row.querySelector('.w-since'),
      labels: row.querySelector('.w-labels'),
    };
    row.dataset.workerId = w.id;
    w.shown = true;
    this.entryOf.set(row, ref);
    // Rows are watched only while their machine is near the viewport:
    // thousands of observed rows would cost the browser on every frame.
    if (w.machine.near) this.observer.observe(row);
  }

  renderWorker(w, now) {
    const d = w.data;
    const el = w.el;
    w.sortKey = `${d.name}\u0000${d.id}`;
    setAttr(el.row, 'data-status', d.status);
    setAttr(el.row, 'data-reason', d.offline_reason || null);
    setAttr(el.row, 'data-session', String(d.session));
    setText(el.name, d.name);
    setText(el.id, d.id);
    setBadge(el.badge, d.status, d.offline_reason);
    setText(el.session, String(d.session));
    setLabels(el.labels, d.labels);
    w.heartbeatMs = parseTime(d.last_heartbeat_at);
    w.sinceMs = parseTime(d.status_changed_at);
    setAttr(el.heartbeat, 'datetime', d.last_heartbeat_at || null);
    setAttr(el.heartbeat, 'title', w.heartbeatMs === null ? null : fullFormat.format(w.heartbeatMs));
    setAttr(el.since, 'datetime', d.status_changed_at || null);
    setAttr(el.since, 'title', w.sinceMs === null ? null : `since ${fullFormat.format(w.sinceMs)}`);
    this.tickWorker(w, now);
  }

  tickWorker(w, now) {
    setText(w.el.heartbeat, w.heartbeatMs === null ? 'never' : ago(now - w.heartbeatMs));
    setText(w.el.since, w.sinceMs === null ? '' : duration(now - w.sinceMs));
  }

  applyWorkerFilter(w) {
    if (!w.el) return;
    const shown = this.workerMatches(w);
    if (shown !== w.shown) {
      w.shown = shown;
      w.el.row.hidden = !shown;
      this.dirtyMachines.add(w.machine);
    }
  }

  /**
   * Puts new rows in name order. The rows already there are in order and
   * stay where they are (moving thousands of nodes would make the browser
   * restyle and lay out all of them): the new ones, sorted, are merged in.
   */
  placeRows(m, rows) {
    mergeInto(m.el.tbody, rows.sort(byKey), (w) => w.el.row, (row) => this.entryOf.get(row)?.entry);
  }

  createMachine(m) {
    const root = this.ui.templates.machine.cloneNode(true);
    const ref = { kind: 'machine', entry: m };
    const tableId = `workers-${this.ui.nextId()}`;
    m.el = {
      root,
      ref,
      toggle: root.querySelector('.toggle'),
      name: root.querySelector('.m-name'),
      badge: root.querySelector('.badge'),
      host: root.querySelector('.m-host'),
      count: root.querySelector('.m-count'),
      sinceWrap: root.querySelector('.m-since'),
      since: root.querySelector('.m-since time'),
      labels: root.querySelector('.m-labels'),
      tableWrap: root.querySelector('.table-wrap'),
      caption: root.querySelector('caption'),
      tbody: root.querySelector('tbody'),
    };
    m.el.tableWrap.id = tableId;
    m.el.toggle.setAttribute('aria-controls', tableId);
    m.el.toggle.addEventListener('click', () => {
      m.collapsed = !m.collapsed;
      m.el.toggle.setAttribute('aria-expanded', String(!m.collapsed));
      m.el.tableWrap.hidden = m.collapsed;
    });
    root.dataset.machineId = m.id;
    m.shown = true;
    this.entryOf.set(root, ref);
    this.observer.observe(root);
  }

  renderMachine(m, now) {
    const d = m.data;
    const el = m.el;
    let live = 0;
    for (const w of m.workers) if (w.data.status === 'online' || w.data.status === 'draining') live += 1;
    setAttr(el.root, 'data-status', d.status);
    setText(el.name, d.id);
    setText(el.caption, `Workers on ${d.id}`);
    setBadge(el.badge, d.status, null);
    setText(el.host, d.hostname && d.hostname !== d.id ? d.hostname : '');
    const total = m.workers.size;
    setText(el.count, `${live} of ${total} worker${total === 1 ? '' : 's'} live`);
    setLabels(el.labels, d.labels);
    m.sinceMs = parseTime(d.status_changed_at);
    el.sinceWrap.hidden = m.sinceMs === null;
    setAttr(el.since, 'datetime', d.status_changed_at || null);
    this.tickMachine(m, now);
  }

  tickMachine(m, now) {
    if (m.sinceMs !== null && m.sinceMs !== undefined) setText(m.el.since, duration(now - m.sinceMs));
  }

  placeMachines(newMachines) {
    mergeInto(this.ui.machinesEl, newMachines.sort(byKey), (m) => m.el.root,
      (root) => this.entryOf.get(root)?.entry);
  }

  renderCounts() {
    const workers = { online: 0, draining: 0, offline: 0 };
    let shown = 0;
    for (const w of this.workers.values()) {
      workers[w.data.status] = (workers[w.data.status] || 0) + 1;
      if (w.shown) shown += 1;
    }
    const machines = { online: 0, offline: 0 };
    let machinesShown = 0;
    for (const m of this.machines.values()) {
      machines[m.data.status] = (machines[m.data.status] || 0) + 1;
      if (m.shown) machinesShown += 1;
    }
    this.ui.counts(machines, workers, shown, this.workers.size, machinesShown, this.loading);
  }

  /**
   * The feed follows at most a few times a second: in a burst nobody reads
   * each entry, and rebuilding a hundred entries every frame costs.
   */
  renderFeed() {
    if (this.feedQueue.length === 0) return;
    const wait = this.lastFeed + FEED_INTERVAL_MS - performance.now();
    if (wait > 0) {
      if (!this.feedTimer) {
        this.feedTimer = setTimeout(() => {
          this.feedTimer = 0;
          this.schedule();
        }, wait);
      }
      return;
    }
    this.lastFeed = performance.now();
    const events = this.feedQueue;
    this.feedQueue = [];
    this.ui.feed(events, (ev) => this.describe(ev));
  }

  describe(ev) {
    const w = ev.worker_id ? this.workers.get(ev.worker_id) : null;
    const isWorker = ev.type.startsWith('worker.');
    const what = ev.type.slice(ev.type.indexOf('.') + 1);
    let status = 'event';
    if (what === 'online' || what === 'draining' || what === 'offline') status = what;
    const subject = isWorker
      ? `${w ? w.data.name : ev.worker_id} on ${ev.machine_id}`
      : `machine ${ev.machine_id}`;
    // A worker not known yet is named once it has been read.
    const unnamed = isWorker && !w ? ev.worker_id : null;
    const details = [];
    if (ev.reason && !(status === 'offline')) details.push(ev.reason);
    if (ev.session !== null && ev.session !== undefined) details.push(`session ${ev.session}`);
    if (ev.detection_lag_ms !== null && ev.detection_lag_ms !== undefined) {
      details.push(`detected ${ev.detection_lag_ms} ms after its deadline`);
    }
    return {
      status,
      reason: status === 'offline' ? ev.reason : null,
      label: status === 'event' ? what : null,
      subject,
      unnamed,
      detail: details.join(' · '),
    };
  }

  // ----------------------------------------------------------------- ticks

  onIntersect(entries) {
    const now = this.now();
    for (const e of entries) {
      const ref = this.entryOf.get(e.target);
      if (!ref) continue;
      if (e.isIntersecting) {
        this.onScreen.add(ref);
        if (ref.kind === 'worker' && ref.entry.el) this.tickWorker(ref.entry, now);
        if (ref.kind === 'machine' && ref.entry.el) {
          const m = ref.entry;
          m.near = true;
          for (const w of m.workers) if (w.el) this.observer.observe(w.el.row);
          this.tickMachine(m, now);
          if (!this.loading && Date.now() - m.refreshedAt > REFRESH_VISIBLE_MS) {
            this.enqueue('m', m.id);
          }
        }
      } else {
        this.onScreen.delete(ref);
        if (ref.kind === 'machine') {
          const m = ref.entry;
          m.near = false;
          for (const w of m.workers) {
            if (!w.el) continue;
            this.observer.unobserve(w.el.row);
            this.onScreen.delete(w.el.ref);
          }
        }
      }
    }
  }

  /** Once a second: the relative times of what is on screen. */
  tick() {
    if (document.visibilityState !== 'visible') return;
    const now = this.now();
    for (const ref of this.onScreen) {
      const entry = ref.entry;
      if (!entry.el || entry.removed) continue;
      if (ref.kind === 'worker') this.tickWorker(entry, now);
      else this.tickMachine(entry, now);
    }
  }
}

// ---------------------------------------------------------------- the page

/** The page around the dashboard: sign-in, filters, counts, feed. */
class Page {
  constructor() {
    this.dashboard = null;
    this.idCounter = 0;
    this.machinesEl = $('machines');
    this.templates = {
      machine: $('machine-template').content.firstElementChild,
      worker: $('worker-template').content.firstElementChild,
      event: $('event-template').content.firstElementChild,
    };
    this.countEls = {
      machines: { online: $('count-machines-online'), offline: $('count-machines-offline') },
      workers: {
        online: $('count-workers-online'),
        draining: $('count-workers-draining'),
        offline: $('count-workers-offline'),
      },
    };
    this.searchTimer = 0;
    this.unnamed = 0; // feed entries naming a worker by id until it is read

    $('sign-in-form').addEventListener('submit', (e) => {
      e.preventDefault();
      this.signIn();
    });
    $('sign-out').addEventListener('click', () => this.signOut(''));
    $('filters').addEventListener('submit', (e) => e.preventDefault());
    $('filters').addEventListener('change', () => this.applyFilter());
    $('search').addEventListener('input', () => {
      clearTimeout(this.searchTimer);
      this.searchTimer = setTimeout(() => this.applyFilter(), 120);
    });
    // Escape in the search box clears it (type=search does so natively in
    // some browsers only).
    $('search').addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && e.target.value !== '') {
        e.target.value = '';
        this.applyFilter();
      }
    });

    let token = null;
    try {
      token = sessionStorage.getItem(TOKEN_KEY);
    } catch {
      token = null; // storage disabled: ask every time
    }
    if (token) this.open(token);
    else this.showSignIn('');
  }

  nextId() {
    this.idCounter += 1;
    return this.idCounter;
  }

  showSignIn(message) {
    $('dashboard').hidden = true;
    $('sign-out').hidden = true;
    $('sign-in').hidden = false;
    $('sign-in-error').textContent = message;
    this.connection('idle');
    $('token').focus();
  }

  async signIn() {
    const input = $('token');
    const token = input.value.trim();
    const error = $('sign-in-error');
    if (!token) {
      error.textContent = 'Enter a token.';
      return;
    }
    error.textContent = 'Checking…';
    let res;
    try {
      res = await fetch('/v1/machines?limit=1', {
        headers: { Authorization: `Bearer ${token}`, Accept: 'application/json' },
        cache: 'no-store',
      });
    } catch {
      error.textContent = 'The server could not be reached.';
      return;
    }
    if (res.status === 401) {
      error.textContent = 'This token is unknown, expired or revoked.';
      return;
    }
    if (res.status === 403) {
      error.textContent = 'This token may not read the fleet: use a read or admin token.';
      return;
    }
    if (!res.ok) {
      error.textContent = `The server answered HTTP ${res.status}.`;
      return;
    }
    input.value = '';
    error.textContent = '';
    try {
      sessionStorage.setItem(TOKEN_KEY, token);
    } catch {
      // Storage disabled: the token lives in memory for this page only.
    }
    this.open(token);
    $('fleet').focus();
  }

  open(token) {
    $('sign-in').hidden = true;
    $('dashboard').hidden = false;
    $('sign-out').hidden = false;
    $('loading').hidden = false;
    this.machinesEl.replaceChildren();
    $('events').replaceChildren();
    this.dashboard = new Dashboard(token, this);
    this.applyFilter();
    this.dashboard.start();
  }

  signOut(message) {
    if (this.dashboard) this.dashboard.stop();
    this.dashboard = null;
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // nothing stored
    }
    this.machinesEl.replaceChildren();
    $('events').replaceChildren();
    this.showSignIn(message);
  }

  authLost(status) {
    this.signOut(status === 403
      ? 'This token may not read the fleet: use a read or admin token.'
      : 'The token stopped working (revoked or expired). Enter another one.');
  }

  applyFilter() {
    if (!this.dashboard) return;
    const status = new FormData($('filters')).get('status') || 'all';
    this.dashboard.setFilter(String(status), $('search').value);
  }

  connection(state) {
    const el = $('connection');
    el.dataset.state = state;
    el.textContent = {
      idle: 'Not connected',
      connecting: 'Connecting…',
      live: 'Live',
      reconnecting: 'Reconnecting…',
    }[state];
  }

  notice(text) {
    // Shown in the connection line; the stream state replaces it.
    const el = $('connection');
    if (el.dataset.state === 'live') el.title = text;
  }

  /** Names a worker in the feed entries written before it was known. */
  nameInFeed(workerId, name) {
    if (this.unnamed === 0) return;
    this.unnamed = 0;
    for (const li of $('events').querySelectorAll('li[data-unnamed]')) {
      this.unnamed += 1;
      if (li.dataset.unnamed !== workerId) continue;
      li.querySelector('.e-subject').textContent = `${name} on ${li.dataset.machine}`;
      delete li.dataset.unnamed;
      this.unnamed -= 1;
    }
  }

  loaded() {
    $('loading').hidden = true;
  }

  counts(machines, workers, shown, total, machinesShown, loading) {
    for (const [k, el] of Object.entries(this.countEls.machines)) setText(el, String(machines[k] || 0));
    for (const [k, el] of Object.entries(this.countEls.workers)) setText(el, String(workers[k] || 0));
    setText($('shown'), loading ? '' : `Showing ${shown} of ${total} workers`);
    $('empty').hidden = loading || machinesShown > 0;
  }

  feed(events, describe) {
    const list = $('events');
    const frag = document.createDocumentFragment();
    for (let i = events.length - 1; i >= 0; i -= 1) {
      const ev = events[i];
      const d = describe(ev);
      const li = this.templates.event.cloneNode(true);
      const at = parseTime(ev.at);
      const time = li.querySelector('.e-time');
      time.dateTime = ev.at;
      time.textContent = at === null ? '' : clockFormat.format(at);
      if (at !== null) time.title = fullFormat.format(at);
      const badge = li.querySelector('.badge');
      if (d.label) {
        setAttr(badge, 'data-status', 'event');
        badge.textContent = d.label;
      } else {
        setBadge(badge, d.status, d.reason);
      }
      li.querySelector('.e-subject').textContent = d.subject;
      if (d.unnamed) {
        this.unnamed += 1;
        li.dataset.unnamed = d.unnamed;
        li.dataset.machine = ev.machine_id;
      }
      li.querySelector('.e-detail').textContent = d.detail;
      li.dataset.seq = String(ev.seq);
      li.dataset.type = ev.type;
      // Highlight a trickle of new entries, not a flood.
      if (events.length <= 5) li.classList.add('fresh');
      frag.append(li);
    }
    if (events.length >= FEED_LIMIT) {
      list.replaceChildren(frag);
    } else {
      list.prepend(frag);
      while (list.childElementCount > FEED_LIMIT) list.lastElementChild.remove();
    }
  }
}

document.addEventListener('DOMContentLoaded', () => {
  window.rollcall = new Page();
});
