// rollcall dashboard: vanilla JavaScript, no framework, no build step.
//
// Summary first, so that a fleet of any size opens at once:
//   1. It opens GET /v1/events/stream (fetch() with the token in the
//      Authorization header; EventSource cannot send one) from "now".
//   2. With the stream open, it reads GET /v1/summary: the fleet's counts
//      and the first page of machines, problems first (offline machines,
//      then degraded ones, then the rest), filtered on the server. More
//      machines are read on demand ("Show more"), and a machine's workers
//      when it is opened. A small fleet (or a narrow filter) opens with
//      every machine's workers shown.
//   3. Every event patches what is on screen — the worker's row, its
//      machine's badge and counts — once per animation frame, however many
//      events arrived meanwhile; nothing is re-rendered per event. Events
//      also ask for a fresh summary (counts, order, workers not on screen),
//      which is read at most about once a second, and every few seconds
//      anyway (heartbeats are not events).
//   4. When the stream drops it reconnects with Last-Event-ID and the server
//      replays what was missed.
//
// The token lives in sessionStorage (this tab only) and in memory; it is
// never put in a URL and never logged.

'use strict';

const TOKEN_KEY = 'rollcall.token';
const MACHINE_PAGE = 50;
const WORKER_PAGE = 100;
const ATTENTION_LIMIT = 10;
// A filter that matches at most this many workers shows them all at once.
const AUTO_EXPAND_WORKERS = 300;
const FEED_LIMIT = 100;
// Open incidents shown in the banner (the rest are counted).
const INCIDENT_LIMIT = 20;
const FEED_INTERVAL_MS = 250;
// A summary is read at most this often when events ask for one, or as
// often as three times what the last one took, whichever is longer.
const REFRESH_MIN_MS = 1000;
const REFRESH_IDLE_MS = 5000;
// Events kept to replay on a summary taken before them.
const RECENT_EVENTS = 5000;
// The server sends a keep-alive comment every 10 s; silence for this long
// means the connection is dead even if no error was raised.
const STREAM_SILENCE_MS = 35000;

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
const numberFormat = new Intl.NumberFormat();

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

/** Offline reasons that mean the worker failed rather than stopped. */
const FAILED = new Set(['stale', 'replaced', 'exited']);

function isFailed(w) {
  return w.status === 'offline' && FAILED.has(w.offline_reason);
}

/**
 * Puts `elements` in this order as the children of `parent` (before
 * `end`, a child that stays last), moving only the ones out of place.
 */
function arrange(parent, elements, end = null) {
  let at = parent.firstElementChild;
  for (const el of elements) {
    if (at === el) {
      at = at.nextElementSibling;
    } else {
      parent.insertBefore(el, at === null ? end : at);
    }
  }
  // What is left between the last one and `end` is no longer listed.
  while (at !== null && at !== end) {
    const next = at.nextElementSibling;
    at.remove();
    at = next;
  }
}

// ------------------------------------------------------------------- model

/** The fleet as this tab shows it, kept current from the event stream. */
class Dashboard {
  constructor(token, ui) {
    this.token = token;
    this.ui = ui;
    this.abort = new AbortController();
    this.stopped = false;
    this.skewMs = 0; // server clock minus ours, when it matters

    this.lastSeq = null; // the seq of the last event received
    this.recent = []; // the last events, to replay on an older summary
    this.pending = []; // events not yet patched in
    this.feedQueue = [];
    this.lastFeed = 0;
    this.feedTimer = 0;
    this.frame = 0;

    this.filter = { status: 'all', q: '' };
    this.filterGeneration = 0;
    this.loaded = false;
    this.auto = false; // every matching worker is shown
    this.machinesWanted = MACHINE_PAGE;
    this.machineCursor = null;
    this.machines = new Map(); // id -> machine entry, those on screen
    this.rows = new Map(); // worker id -> worker entry, rows on screen
    this.attention = new Map(); // worker id -> attention entry
    this.names = new Map(); // worker id -> name, for the feed

    this.refreshing = false;
    this.refreshWanted = false;
    this.refreshTimer = 0;
    this.lastRefresh = -Infinity;
    this.refreshTook = 0;
    this.summaries = 0; // summaries applied, for tests and measurements

    this.timers = [
      setInterval(() => this.tick(), 1000),
      setInterval(() => this.requestRefresh(), REFRESH_IDLE_MS),
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
    clearTimeout(this.refreshTimer);
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
        // Live from now (or resumed): a summary fills in everything before.
        this.requestRefresh(true);
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
    this.recent.push(event);
    if (this.recent.length > RECENT_EVENTS * 2) this.recent = this.recent.slice(-RECENT_EVENTS);
    this.pending.push(event);
    this.feedQueue.push(event);
    if (this.feedQueue.length > FEED_LIMIT * 4) this.feedQueue = this.feedQueue.slice(-FEED_LIMIT);
    this.schedule();
  }

  // ----------------------------------------------------- applying changes

  schedule() {
    if (!this.frame && !this.stopped) this.frame = requestAnimationFrame(() => this.flush());
  }

  /** Once per frame: patches what the events of the frame changed. */
  flush() {
    this.frame = 0;
    if (this.pending.length > 0) {
      const events = this.pending;
      this.pending = [];
      let changed = false;
      for (const ev of events) changed = this.apply(ev) || changed;
      if (changed) this.ui.counts(this.counts);
      this.requestRefresh();
      this.ui.onEvents(events);
    }
    this.renderFeed();
  }

  /**
   * Patches one event into the rows and machines on screen. Returns whether
   * the counts changed (a worker on screen changed status).
   */
  apply(ev) {
    if (!this.loaded) return false;
    switch (ev.type) {
      case 'worker.online':
      case 'worker.draining':
      case 'worker.offline': {
        const status = ev.type.slice('worker.'.length);
        const reason = status === 'offline' ? ev.reason : null;
        const w = this.rows.get(ev.worker_id) || this.attention.get(ev.worker_id);
        if (!w) return false;
        const d = w.data;
        if (ev.session !== null && ev.session !== undefined && ev.session < d.session) return false;
        if (d.status === status && d.offline_reason === reason && d.status_changed_at === ev.at) {
          return false;
        }
        const before = { status: d.status, offline_reason: d.offline_reason };
        d.status = status;
        d.offline_reason = reason;
        if (ev.session !== null && ev.session !== undefined) d.session = ev.session;
        d.status_changed_at = ev.at;
        if (status === 'offline') d.deadline_at = null;
        // A heartbeat brought it back: that heartbeat is its last one.
        if (status === 'online' && ev.reason === 'heartbeat') d.last_heartbeat_at = ev.at;
        const row = this.rows.get(ev.worker_id);
        if (row) this.renderWorker(row, this.now());
        const att = this.attention.get(ev.worker_id);
        if (att && att !== row) {
          att.data = d;
          this.renderAttention(att, this.now());
        }
        const m = this.machines.get(ev.machine_id);
        const changed = before.status !== d.status || isFailed(before) !== isFailed(d);
        if (changed) {
          if (m) {
            this.recount(m.data, before, -1);
            this.recount(m.data, d, 1);
            this.renderMachine(m, this.now());
          }
          if (this.counts) {
            this.recount(this.counts, before, -1, true);
            this.recount(this.counts, d, 1, true);
          }
        }
        return changed;
      }
      case 'machine.online':
      case 'machine.offline': {
        const m = this.machines.get(ev.machine_id);
        if (!m) return false;
        m.data.status = ev.type.slice('machine.'.length);
        this.renderMachine(m, this.now());
        return false;
      }
      default:
        // Registrations and deletions change lists: the next summary shows
        // them. A newer server may send more types.
        return false;
    }
  }

  /** Moves a worker in or out of a machine's (or the fleet's) counts. */
  recount(c, w, sign, fleet = false) {
    if (fleet) {
      const k = c.workers;
      k[w.status] += sign;
      if (isFailed(w)) k.failed += sign;
      if (w.status === 'offline' && w.offline_reason in c.offline_reasons) {
        c.offline_reasons[w.offline_reason] += sign;
      }
      return;
    }
    c[`workers_${w.status}`] += sign;
    if (isFailed(w)) c.workers_failed += sign;
  }

  // -------------------------------------------------------------- summary

  summaryQuery() {
    const p = new URLSearchParams();
    if (this.filter.status !== 'all') p.set('status', this.filter.status);
    if (this.filter.q) p.set('q', this.filter.q);
    return p;
  }

  /**
   * Asks for a fresh summary: at once when `now`, else within the refresh
   * interval. At most one is read at a time.
   */
  requestRefresh(now = false) {
    if (this.stopped) return;
    if (document.visibilityState !== 'visible' && this.loaded && !now) return;
    this.refreshWanted = true;
    if (this.refreshing) {
      if (now) this.refreshUrgent = true;
      return;
    }
    const interval = Math.max(REFRESH_MIN_MS, this.refreshTook * 3);
    const wait = now ? 0 : Math.max(0, this.lastRefresh + interval - performance.now());
    if (this.refreshTimer) {
      if (!now) return;
      clearTimeout(this.refreshTimer);
    }
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = 0;
      this.refresh();
    }, wait);
  }

  /** The banner of open incidents (a server without alerting: none). */
  applyIncidents(page) {
    const items = page && Array.isArray(page.items) ? page.items : [];
    const banner = $('incidents');
    banner.hidden = items.length === 0;
    const more = page && page.next_cursor ? '+' : '';
    setText($('incidents-title'), `Open incidents: ${items.length}${more}`);
    const rows = items.map((i) => {
      const li = document.createElement('li');
      li.dataset.severity = i.severity;
      const sev = document.createElement('span');
      sev.className = 'severity';
      sev.textContent = i.severity;
      const text = document.createElement('span');
      text.textContent = ` ${i.summary}`;
      const when = document.createElement('span');
      when.className = 'muted small';
      const opened = parseTime(i.opened_at);
      when.textContent = opened === null ? '' : ` — opened ${ago(Date.now() + this.skewMs - opened)}`;
      const acked = document.createElement('span');
      acked.className = 'muted small';
      acked.textContent = i.acked_by ? ` (acknowledged by ${i.acked_by})` : '';
      li.append(sev, text, when, acked);
      return li;
    });
    $('incidents-list').replaceChildren(...rows);
  }

  async refresh() {
    if (this.refreshing || this.stopped) return;
    this.refreshing = true;
    this.refreshWanted = false;
    this.lastRefresh = performance.now();
    const generation = this.filterGeneration;
    let again = false;
    try {
      const p = this.summaryQuery();
      p.set('limit', String(Math.min(1000, this.machinesWanted)));
      p.set('workers_limit', String(ATTENTION_LIMIT));
      p.set('machine_workers', String(this.auto ? AUTO_EXPAND_WORKERS : 0));
      const [s, incidents] = await Promise.all([
        this.api(`/v1/summary?${p}`),
        this.api(`/v1/incidents?status=open&limit=${INCIDENT_LIMIT}`),
      ]);
      if (this.stopped) return;
      this.applyIncidents(incidents);
      if (generation !== this.filterGeneration) {
        this.refreshWanted = true;
        return;
      }
      const auto = s.matching.workers <= AUTO_EXPAND_WORKERS;
      this.applySummary(s, auto && this.auto);
      if (auto !== this.auto) {
        // Small enough to show every worker (or no longer): read again.
        this.auto = auto;
        again = auto;
        if (!auto) for (const m of this.machines.values()) if (!m.opened) this.collapse(m);
      }
      // Machines opened by hand follow too.
      for (const m of [...this.machines.values()]) {
        if (m.opened && !this.auto && generation === this.filterGeneration) {
          await this.loadWorkers(m, false);
        }
      }
    } catch (e) {
      this.onBackgroundError(e);
      if (!(e instanceof AuthError)) this.refreshWanted = true;
    } finally {
      this.refreshTook = performance.now() - this.lastRefresh;
      this.refreshing = false;
      const urgent = this.refreshUrgent;
      this.refreshUrgent = false;
      if (again || urgent) this.requestRefresh(true);
      else if (this.refreshWanted) this.requestRefresh();
    }
  }

  applySummary(s, withWorkers) {
    const now = this.now();
    this.counts = s.counts;
    this.ui.counts(s.counts);
    this.machineCursor = s.machines.next_cursor;
    const shown = [];
    const seen = new Set();
    for (const md of s.machines.items) {
      let m = this.machines.get(md.id);
      if (!m) {
        m = this.createMachine(md);
        this.machines.set(md.id, m);
      }
      m.data = md;
      seen.add(md.id);
      this.renderMachine(m, now);
      if (withWorkers) {
        if (!m.closed) {
          this.expand(m);
          this.showWorkers(m, md.workers, false);
          m.workersCursor = null;
          m.el.more.hidden = true;
        }
      }
      shown.push(m.el.root);
    }
    for (const m of [...this.machines.values()]) {
      if (seen.has(m.id)) continue;
      // A machine opened by hand stays (after the page) while it has
      // matching workers, even if it moved off the first page.
      if (m.opened && !this.auto) shown.push(m.el.root);
      else this.dropMachine(m);
    }
    arrange(this.ui.machinesEl, shown);
    this.ui.shown(s.machines.items.length, s.matching, this.machineCursor !== null);

    // Needs attention: failed and draining workers, newest first.
    const problems = s.workers.items.filter((w) => isFailed(w) || w.status === 'draining');
    const keep = new Set(problems.map((w) => w.id));
    for (const [id, a] of this.attention) {
      if (!keep.has(id)) {
        a.el.remove();
        this.attention.delete(id);
      }
    }
    const items = problems.map((wd) => {
      this.names.set(wd.id, wd.name);
      let a = this.attention.get(wd.id);
      if (!a) {
        a = { id: wd.id, data: wd, el: this.ui.templates.attention.cloneNode(true) };
        a.el.dataset.attentionId = wd.id;
        this.attention.set(wd.id, a);
      }
      a.data = wd;
      this.renderAttention(a, now);
      return a.el;
    });
    arrange($('attention'), items);
    $('attention-none').hidden = items.length > 0;

    // Events newer than the summary: patch them in again.
    const newer = this.recent.filter((ev) => ev.seq > s.seq);
    this.recent = newer;
    this.loaded = true;
    for (const ev of newer) this.apply(ev);
    this.ui.counts(this.counts);
    if (this.summaries === 0) {
      // For measurements: when the first summary was on screen.
      performance.mark('rollcall:first-summary');
      requestAnimationFrame(() => performance.mark('rollcall:first-summary-painted'));
    }
    this.summaries += 1;
    this.ui.loaded(s.matching.machines === 0);
  }

  /** The next page of machines. */
  async moreMachines() {
    if (this.machineCursor === null) return;
    const generation = this.filterGeneration;
    const p = this.summaryQuery();
    p.set('limit', String(MACHINE_PAGE));
    p.set('cursor', this.machineCursor);
    p.set('workers_limit', '0');
    try {
      const s = await this.api(`/v1/summary?${p}`);
      if (this.stopped || generation !== this.filterGeneration) return;
      const now = this.now();
      for (const md of s.machines.items) {
        if (this.machines.has(md.id)) continue;
        const m = this.createMachine(md);
        this.machines.set(md.id, m);
        this.renderMachine(m, now);
        this.ui.machinesEl.append(m.el.root);
      }
      this.machinesWanted = this.machines.size;
      this.machineCursor = s.machines.next_cursor;
      this.ui.shown(this.machines.size, s.matching, this.machineCursor !== null);
    } catch (e) {
      this.onBackgroundError(e);
    }
  }

  /** A machine's workers, read when it is opened; `more` reads the next page. */
  async loadWorkers(m, more) {
    const p = this.summaryQuery();
    p.set('machine_id', m.id);
    p.set('limit', '1');
    if (more && m.workersCursor) {
      p.set('workers_limit', String(WORKER_PAGE));
      p.set('workers_cursor', m.workersCursor);
    } else {
      p.set('workers_limit', String(Math.min(1000, Math.max(WORKER_PAGE, m.workersShown || 0))));
    }
    const generation = this.filterGeneration;
    m.el.loading.hidden = m.workersShown > 0;
    try {
      const s = await this.api(`/v1/summary?${p}`);
      if (this.stopped || generation !== this.filterGeneration || m.removed) return;
      if (s.machines.items.length === 0 && m.opened) {
        // No longer matching (or forgotten): it goes, like the others.
        this.dropMachine(m);
        return;
      }
      if (s.machines.items[0]) {
        m.data = s.machines.items[0];
        this.renderMachine(m, this.now());
      }
      this.showWorkers(m, s.workers.items, more);
      m.workersCursor = s.workers.next_cursor;
      m.el.more.hidden = m.workersCursor === null;
      const newer = this.recent.filter((ev) => ev.seq > s.seq && ev.machine_id === m.id);
      for (const ev of newer) this.apply(ev);
    } catch (e) {
      this.onBackgroundError(e);
    } finally {
      m.el.loading.hidden = true;
    }
  }

  // ------------------------------------------------------------ rendering

  createMachine(md) {
    const root = this.ui.templates.machine.cloneNode(true);
    const m = {
      id: md.id,
      data: md,
      workers: new Map(), // id -> worker entry
      expanded: false,
      opened: false, // opened by hand
      closed: false, // closed by hand
      workersCursor: null,
      workersShown: 0,
      removed: false,
      el: {
        root,
        toggle: root.querySelector('.toggle'),
        name: root.querySelector('.m-name'),
        badge: root.querySelector('.badge'),
        condition: root.querySelector('.condition'),
        host: root.querySelector('.m-host'),
        count: root.querySelector('.m-count'),
        sinceWrap: root.querySelector('.m-since'),
        since: root.querySelector('.m-since time'),
        labels: root.querySelector('.m-labels'),
        mix: [...root.querySelectorAll('.mix i')],
        tableWrap: root.querySelector('.table-wrap'),
        caption: root.querySelector('caption'),
        tbody: root.querySelector('tbody'),
        loading: root.querySelector('.w-loading'),
        more: root.querySelector('.more-workers'),
      },
    };
    const tableId = `workers-${this.ui.nextId()}`;
    m.el.tableWrap.id = tableId;
    m.el.toggle.setAttribute('aria-controls', tableId);
    m.el.toggle.addEventListener('click', () => {
      if (m.expanded) {
        m.closed = true;
        m.opened = false;
        this.collapse(m);
      } else {
        m.closed = false;
        m.opened = !this.auto;
        this.expand(m);
        if (this.auto) this.requestRefresh(true);
        else this.loadWorkers(m, false);
      }
    });
    m.el.more.addEventListener('click', () => this.loadWorkers(m, true));
    root.dataset.machineId = md.id;
    this.collapse(m);
    return m;
  }

  expand(m) {
    m.expanded = true;
    m.el.toggle.setAttribute('aria-expanded', 'true');
    m.el.tableWrap.hidden = false;
  }

  collapse(m) {
    m.expanded = false;
    m.el.toggle.setAttribute('aria-expanded', 'false');
    m.el.tableWrap.hidden = true;
    for (const w of m.workers.values()) this.rows.delete(w.id);
    m.workers.clear();
    m.workersShown = 0;
    m.workersCursor = null;
    m.el.tbody.replaceChildren();
    m.el.more.hidden = true;
  }

  dropMachine(m) {
    m.removed = true;
    for (const w of m.workers.values()) this.rows.delete(w.id);
    this.machines.delete(m.id);
    m.el.root.remove();
  }

  /** Shows a machine's workers in this order (after those shown if `append`). */
  showWorkers(m, list, append) {
    const now = this.now();
    const seen = new Set(append ? m.workers.keys() : []);
    const els = append ? [...m.el.tbody.children] : [];
    for (const wd of list) {
      if (seen.has(wd.id) && append) continue;
      seen.add(wd.id);
      this.names.set(wd.id, wd.name);
      let w = m.workers.get(wd.id);
      if (!w) {
        w = this.createWorker(wd, m);
        m.workers.set(wd.id, w);
      } else {
        w.data = wd;
      }
      this.rows.set(wd.id, w);
      this.renderWorker(w, now);
      els.push(w.el.row);
    }
    for (const [id, w] of m.workers) {
      if (!seen.has(id)) {
        m.workers.delete(id);
        if (this.rows.get(id) === w) this.rows.delete(id);
      }
    }
    arrange(m.el.tbody, els);
    m.workersShown = m.workers.size;
    for (const id of seen) this.ui.nameInFeed(id, this.names.get(id));
  }

  createWorker(wd, m) {
    const row = this.ui.templates.worker.cloneNode(true);
    row.dataset.workerId = wd.id;
    return {
      id: wd.id,
      data: wd,
      machine: m,
      el: {
        row,
        name: row.querySelector('.w-name'),
        id: row.querySelector('.w-id'),
        badge: row.querySelector('.badge'),
        heartbeat: row.querySelector('.w-heartbeat'),
        session: row.querySelector('.w-session'),
        since: row.querySelector('.w-since'),
        labels: row.querySelector('.w-labels'),
      },
    };
  }

  renderWorker(w, now) {
    const d = w.data;
    const el = w.el;
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

  renderAttention(a, now) {
    const d = a.data;
    setBadge(a.el.querySelector('.badge'), d.status, d.offline_reason);
    setText(a.el.querySelector('.att-name'), d.name);
    setText(a.el.querySelector('.att-machine'), `on ${d.machine_id}`);
    a.sinceMs = parseTime(d.status_changed_at);
    const t = a.el.querySelector('.att-since');
    setAttr(t, 'datetime', d.status_changed_at || null);
    setText(t, a.sinceMs === null ? '' : ago(now - a.sinceMs));
  }

  renderMachine(m, now) {
    const d = m.data;
    const el = m.el;
    // The condition follows the counts, which events patch.
    if (d.status === 'offline') d.condition = 'offline';
    else d.condition = d.workers_failed + d.workers_draining > 0 ? 'degraded' : 'ok';
    setAttr(el.root, 'data-status', d.status);
    setAttr(el.root, 'data-condition', d.condition);
    setText(el.name, d.id);
    setText(el.caption, `Workers on ${d.id}`);
    setBadge(el.badge, d.status, null);
    const condition = d.status === 'online' && (d.workers_failed > 0 || d.workers_draining > 0)
      ? [d.workers_failed > 0 ? `${d.workers_failed} failed` : '',
        d.workers_draining > 0 ? `${d.workers_draining} draining` : ''].filter(Boolean).join(', ')
      : '';
    setText(el.condition, condition);
    setText(el.host, d.hostname && d.hostname !== d.id ? d.hostname : '');
    const live = d.workers_online + d.workers_draining;
    const total = d.workers_total;
    let count = `${live} of ${total} worker${total === 1 ? '' : 's'} live`;
    if (d.workers_matching !== total) count += ` · ${d.workers_matching} match`;
    setText(el.count, count);
    setLabels(el.labels, d.labels);
    const parts = [d.workers_online, d.workers_draining, d.workers_failed,
      d.workers_offline - d.workers_failed];
    el.mix.forEach((i, k) => {
      const width = total > 0 ? `${(100 * parts[k]) / total}%` : '0%';
      if (i.style.width !== width) i.style.width = width;
    });
    m.sinceMs = parseTime(d.last_change_at);
    el.sinceWrap.hidden = m.sinceMs === null;
    setAttr(el.since, 'datetime', d.last_change_at || null);
    this.tickMachine(m, now);
  }

  tickMachine(m, now) {
    if (m.sinceMs !== null && m.sinceMs !== undefined) setText(m.el.since, duration(now - m.sinceMs));
  }

  // ---------------------------------------------------------------- filter

  setFilter(status, text) {
    const q = text.trim().split(/\s+/).filter(Boolean).join(' ');
    if (status === this.filter.status && q === this.filter.q) return;
    this.filter = { status, q };
    this.filterGeneration += 1;
    this.machinesWanted = MACHINE_PAGE;
    // Whether every match can be shown is known from the next summary.
    this.auto = false;
    for (const m of this.machines.values()) {
      m.opened = false;
      m.closed = false;
    }
    this.requestRefresh(true);
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
    const events = this.feedQueue.slice(-FEED_LIMIT);
    this.feedQueue = [];
    this.ui.feed(events, (ev) => this.describe(ev));
  }

  describe(ev) {
    const name = ev.worker_id ? this.names.get(ev.worker_id) : null;
    const isWorker = ev.type.startsWith('worker.');
    const what = ev.type.slice(ev.type.indexOf('.') + 1);
    if (ev.type.startsWith('incident.')) {
      // An alert rule's incident: about a worker, a machine or the fleet.
      let subject = `machine ${ev.machine_id}`;
      if (ev.machine_id === '*') subject = 'the fleet';
      else if (ev.worker_id) subject = `${name || ev.worker_id} on ${ev.machine_id}`;
      return {
        status: 'event',
        reason: null,
        label: `incident ${what}`,
        subject,
        unnamed: ev.worker_id && !name ? ev.worker_id : null,
        detail: ev.incident_id || '',
      };
    }
    let status = 'event';
    if (what === 'online' || what === 'draining' || what === 'offline') status = what;
    const subject = isWorker
      ? `${name || ev.worker_id} on ${ev.machine_id}`
      : `machine ${ev.machine_id}`;
    // A worker not known yet is named once it has been read.
    const unnamed = isWorker && !name ? ev.worker_id : null;
    const details = [];
    if (ev.reason && !(status === 'offline')) details.push(ev.reason);
    if (ev.session !== null && ev.session !== undefined) details.push(`session ${ev.session}`);
    if (ev.exit_code !== null && ev.exit_code !== undefined) details.push(`exit code ${ev.exit_code}`);
    if (ev.signal !== null && ev.signal !== undefined) details.push(`signal ${ev.signal}`);
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

  /** Once a second: the relative times on screen. */
  tick() {
    if (document.visibilityState !== 'visible') return;
    const now = this.now();
    for (const w of this.rows.values()) this.tickWorker(w, now);
    for (const m of this.machines.values()) this.tickMachine(m, now);
    for (const a of this.attention.values()) {
      if (a.sinceMs !== null && a.sinceMs !== undefined) {
        setText(a.el.querySelector('.att-since'), ago(now - a.sinceMs));
      }
    }
  }
}

// ---------------------------------------------------------------- health

const HEALTH_TOP = 20;
const HEALTH_REFRESH_MS = 2000;
const TIMELINE_LIMIT = 50;

function percent(a) {
  if (a === null || a === undefined) return 'no data';
  const p = a * 100;
  if (p === 100) return '100 %';
  return `${p >= 99.995 ? '99.99' : p.toFixed(p >= 99 ? 2 : 1)} %`;
}

/** The colour of a status-page bar: no data, up, some trouble, down. */
function barLevel(b) {
  if (b.availability === null || b.availability === undefined) return 'none';
  if (b.availability >= 0.999 && b.crashes === 0) return 'up';
  if (b.availability >= 0.95) return 'warn';
  return 'down';
}

function fillBars(container, buckets) {
  const spans = buckets.map((b) => {
    const i = document.createElement('i');
    const level = barLevel(b);
    i.dataset.level = level;
    const from = parseTime(b.from);
    const parts = [fullFormat.format(from)];
    parts.push(level === 'none' ? 'no data' : `${percent(b.availability)} available`);
    if (b.crashes > 0) parts.push(`${b.crashes} crash${b.crashes === 1 ? '' : 'es'}`);
    if (b.no_data_ms > 0 && level !== 'none') parts.push(`${duration(b.no_data_ms)} without data`);
    i.title = parts.join(' · ');
    return i;
  });
  container.replaceChildren(...spans);
  container.setAttribute('role', 'img');
  const down = buckets.filter((b) => barLevel(b) === 'down').length;
  const none = buckets.filter((b) => barLevel(b) === 'none').length;
  container.setAttribute('aria-label',
    `${buckets.length} bars: ${down} with downtime, ${none} without data`);
}

/** The Health view: machines by crashes or downtime, with their history. */
class HealthView {
  constructor(dashboard, ui) {
    this.dashboard = dashboard;
    this.ui = ui;
    this.active = false;
    this.sort = 'crashes';
    this.entries = new Map(); // machine id -> entry
    this.loading = false;
    this.wanted = false;
    this.timer = 0;
    this.last = -Infinity;
    this.loads = 0; // completed loads, for tests
  }

  api(path) {
    return this.dashboard.api(path);
  }

  show() {
    this.active = true;
    this.request(true);
  }

  hide() {
    this.active = false;
  }

  setSort(sort) {
    this.sort = sort;
    this.request(true);
  }

  /** Events that may change the history: refresh, at most every 2 s. */
  onEvents(events) {
    if (!this.active) return;
    if (events.some((e) => e.type.startsWith('worker.') || e.type.startsWith('machine.'))) {
      this.request(false);
    }
  }

  request(now) {
    this.wanted = true;
    if (this.loading || (this.timer && !now)) return;
    clearTimeout(this.timer);
    const wait = now ? 0 : Math.max(0, this.last + HEALTH_REFRESH_MS - performance.now());
    this.timer = setTimeout(() => {
      this.timer = 0;
      this.load();
    }, wait);
  }

  async load() {
    if (!this.active || this.loading || this.dashboard.stopped) return;
    this.loading = true;
    this.wanted = false;
    this.last = performance.now();
    try {
      const fleet = await this.api(`/v1/health?window=30d&top=${HEALTH_TOP}`);
      if (fleet === null) throw new Error('the server has no health history');
      this.renderFleet(fleet);
      const byId = new Map();
      for (const m of [...fleet.top_machines_by_crashes, ...fleet.top_machines_by_downtime]) {
        byId.set(m.machine_id, m);
      }
      const ranked = [...byId.values()].sort((a, b) => (this.sort === 'crashes'
        ? (b.crashes.total - a.crashes.total) || (b.down_ms - a.down_ms)
        : (b.down_ms - a.down_ms) || (b.crashes.total - a.crashes.total))
        || (a.machine_id < b.machine_id ? -1 : 1));
      if (ranked.length < HEALTH_TOP) {
        // Room for more: machines without crashes or downtime, by id.
        const s = await this.api(`/v1/summary?limit=${HEALTH_TOP}&workers_limit=0`);
        const calm = (s ? s.machines.items : [])
          .filter((m) => !byId.has(m.id))
          .sort((a, b) => (a.id < b.id ? -1 : 1));
        for (const m of calm.slice(0, HEALTH_TOP - ranked.length)) {
          const r = {
            machine_id: m.id,
            hostname: m.hostname,
            availability: null,
            down_ms: 0,
            crashes: { total: 0, stale: 0, replaced: 0, exited: 0 },
            mtbf_ms: null,
            last_crash: null,
          };
          byId.set(m.id, r);
          ranked.push(r);
        }
      }
      const details = await Promise.all(ranked.map((m) => this.machineHealth(m.machine_id)));
      const els = [];
      ranked.forEach((m, i) => {
        let e = this.entries.get(m.machine_id);
        if (!e) {
          e = this.createEntry(m.machine_id);
          this.entries.set(m.machine_id, e);
        }
        e.ranked = m;
        e.day = details[i].day;
        e.month = details[i].month;
        this.renderEntry(e);
        els.push(e.el.root);
      });
      for (const [id, e] of this.entries) {
        if (!byId.has(id)) {
          e.el.root.remove();
          this.entries.delete(id);
        }
      }
      arrange($('health-machines'), els);
      $('health-empty').hidden = els.length > 0;
      $('health-loading').hidden = true;
      setText($('health-shown'), `${els.length} of ${numberFormat.format(fleet.machines)} machines`);
      for (const e of this.entries.values()) if (e.open) this.loadTimeline(e);
      this.loads += 1;
    } catch (e) {
      this.dashboard.onBackgroundError(e);
      if (!(e instanceof AuthError)) this.wanted = true;
    } finally {
      this.loading = false;
      if (this.wanted && this.active) this.request(false);
    }
  }

  async machineHealth(id) {
    const path = `/v1/machines/${encodeURIComponent(id)}/health`;
    const [day, month] = await Promise.all([
      this.api(`${path}?window=24h&buckets=24`),
      this.api(`${path}?window=30d&buckets=30`),
    ]);
    return { day, month };
  }

  renderFleet(f) {
    const facts = [
      ['availability', percent(f.availability)],
      ['crashes', String(f.crashes.total)],
      ['went stale', String(f.crashes.stale)],
      ['restarted without a goodbye', String(f.crashes.replaced)],
      ['exited with a failure', String(f.crashes.exited)],
      ['graceful stops', String(f.graceful ?? 0)],
      ['downtime', duration(f.down_ms)],
      ['without data', duration(f.no_data_ms)],
    ];
    $('health-fleet').replaceChildren(...facts.map(([k, v]) => {
      const div = document.createElement('div');
      const dt = document.createElement('dt');
      dt.textContent = k;
      const dd = document.createElement('dd');
      dd.textContent = v;
      div.append(dt, dd);
      return div;
    }));
  }

  createEntry(id) {
    const root = this.ui.templates.health.cloneNode(true);
    root.dataset.machineId = id;
    const e = {
      id,
      open: false,
      el: {
        root,
        toggle: root.querySelector('.toggle'),
        name: root.querySelector('.hm-name'),
        avail: root.querySelector('.hm-avail'),
        crashes: root.querySelector('.hm-crashes'),
        mtbf: root.querySelector('.hm-mtbf'),
        last: root.querySelector('.hm-last'),
        day: root.querySelector('.bars-day'),
        month: root.querySelector('.bars-month'),
        detail: root.querySelector('.hm-detail'),
        workers: root.querySelector('.hm-workers'),
        timeline: root.querySelector('.timeline'),
      },
    };
    e.el.toggle.addEventListener('click', () => {
      e.open = !e.open;
      e.el.toggle.setAttribute('aria-expanded', String(e.open));
      e.el.detail.hidden = !e.open;
      if (e.open) {
        this.renderWorkers(e);
        this.loadTimeline(e);
      }
    });
    return e;
  }

  renderEntry(e) {
    const m = e.month || {};
    const r = e.ranked;
    setText(e.el.name, r.hostname && r.hostname !== r.machine_id ? `${r.machine_id} (${r.hostname})` : r.machine_id);
    e.el.root.dataset.crashes = String(m.crashes ? m.crashes.total : r.crashes.total);
    setText(e.el.avail, `${percent(m.availability ?? r.availability)} available`);
    const c = m.crashes || r.crashes;
    const kinds = ['stale', 'replaced', 'exited'].filter((k) => c[k] > 0).map((k) => `${c[k]} ${k}`);
    setText(e.el.crashes, `${c.total} crash${c.total === 1 ? '' : 'es'}${kinds.length ? ` (${kinds.join(', ')})` : ''}`);
    const mtbf = m.mtbf_ms ?? r.mtbf_ms;
    setText(e.el.mtbf, mtbf === null || mtbf === undefined ? 'MTBF —' : `MTBF ${duration(mtbf)}`);
    const last = m.last_crash ?? r.last_crash;
    setText(e.el.last, last ? `last crash ${ago(this.dashboard.now() - parseTime(last.at))} (${last.kind})` : '');
    if (m.flapping) e.el.root.dataset.flapping = 'true';
    else delete e.el.root.dataset.flapping;
    if (e.day) fillBars(e.el.day, e.day.buckets || []);
    if (e.month) fillBars(e.el.month, e.month.buckets || []);
    if (e.open) this.renderWorkers(e);
  }

  renderWorkers(e) {
    const workers = (e.day && e.day.workers) || [];
    const rows = workers.map((w) => {
      const row = document.createElement('div');
      row.className = 'bars-row hw';
      row.dataset.workerId = w.worker_id;
      row.dataset.crashes = String(w.crashes.total);
      const label = document.createElement('span');
      label.className = 'bars-label';
      label.textContent = w.name ?? w.worker_id;
      label.title = w.worker_id;
      const bars = document.createElement('span');
      bars.className = 'bars';
      fillBars(bars, w.buckets || []);
      const facts = document.createElement('span');
      facts.className = 'muted small';
      facts.textContent = `${percent(w.availability)} · ${w.crashes.total} crash${w.crashes.total === 1 ? '' : 'es'}`;
      row.append(label, bars, facts);
      return row;
    });
    e.el.workers.replaceChildren(...rows);
  }

  /** The machine's latest transitions from the event log, newest first. */
  async loadTimeline(e) {
    const latest = [];
    let after = 0;
    try {
      for (let page = 0; page < 20; page += 1) {
        const r = await this.api(`/v1/events?machine_id=${encodeURIComponent(e.id)}&after=${after}&limit=1000`);
        if (r === null) break;
        latest.push(...r.items);
        if (latest.length > TIMELINE_LIMIT) latest.splice(0, latest.length - TIMELINE_LIMIT);
        if (!r.next_cursor) break;
        after = r.next_cursor;
      }
    } catch (err) {
      this.dashboard.onBackgroundError(err);
      return;
    }
    const items = latest.reverse().map((ev) => {
      const li = this.ui.templates.event.cloneNode(true);
      const d = this.dashboard.describe(ev);
      const at = parseTime(ev.at);
      const time = li.querySelector('.e-time');
      time.dateTime = ev.at;
      time.textContent = at === null ? '' : fullFormat.format(at);
      const badge = li.querySelector('.badge');
      if (d.label) {
        setAttr(badge, 'data-status', 'event');
        badge.textContent = d.label;
      } else {
        setBadge(badge, d.status, d.reason);
      }
      li.querySelector('.e-subject').textContent = d.subject;
      li.querySelector('.e-detail').textContent = d.detail;
      li.dataset.seq = String(ev.seq);
      li.dataset.type = ev.type;
      return li;
    });
    e.el.timeline.replaceChildren(...items);
  }
}

// ---------------------------------------------------------------- the page

/** The page around the dashboard: sign-in, views, filters, counts, feed. */
class Page {
  constructor() {
    this.dashboard = null;
    this.health = null;
    this.idCounter = 0;
    this.machinesEl = $('machines');
    this.templates = {
      machine: $('machine-template').content.firstElementChild,
      worker: $('worker-template').content.firstElementChild,
      event: $('event-template').content.firstElementChild,
      attention: $('attention-template').content.firstElementChild,
      health: $('health-machine-template').content.firstElementChild,
    };
    this.countEls = {
      machines: {
        online: $('count-machines-online'),
        degraded: $('count-machines-degraded'),
        offline: $('count-machines-offline'),
        total: $('count-machines-total'),
      },
      workers: {
        online: $('count-workers-online'),
        draining: $('count-workers-draining'),
        offline: $('count-workers-offline'),
        failed: $('count-workers-failed'),
        total: $('count-workers-total'),
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
      this.searchTimer = setTimeout(() => this.applyFilter(), 200);
    });
    // Escape in the search box clears it (type=search does so natively in
    // some browsers only).
    $('search').addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && e.target.value !== '') {
        e.target.value = '';
        this.applyFilter();
      }
    });
    $('more-machines').addEventListener('click', () => this.dashboard?.moreMachines());
    for (const tab of document.querySelectorAll('.view-tab')) {
      tab.addEventListener('click', () => this.showView(tab.dataset.view));
    }
    $('health-sort').addEventListener('change', (e) => this.health?.setSort(e.target.value));

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
    $('attention').replaceChildren();
    $('health-machines').replaceChildren();
    this.dashboard = new Dashboard(token, this);
    this.health = new HealthView(this.dashboard, this);
    this.showView('fleet');
    this.probeHealth();
    this.applyFilter();
    this.dashboard.start();
  }

  /**
   * The Health tab is offered only by a server that keeps health history:
   * its OpenAPI document lists `GET /v1/health`.
   */
  async probeHealth() {
    const d = this.dashboard;
    try {
      const res = await fetch('/openapi.json', { signal: d.abort.signal, cache: 'no-store' });
      const spec = res.ok ? await res.json() : {};
      const offered = Boolean(spec.paths && spec.paths['/v1/health']);
      $('tab-health').hidden = !offered;
      $('views').hidden = !offered;
    } catch {
      $('tab-health').hidden = true;
      $('views').hidden = true;
    }
  }

  showView(view) {
    for (const tab of document.querySelectorAll('.view-tab')) {
      setAttr(tab, 'aria-current', tab.dataset.view === view ? 'page' : null);
    }
    $('view-fleet').hidden = view !== 'fleet';
    $('view-health').hidden = view !== 'health';
    if (!this.health) return;
    if (view === 'health') this.health.show();
    else this.health.hide();
  }

  signOut(message) {
    if (this.dashboard) this.dashboard.stop();
    this.dashboard = null;
    if (this.health) this.health.hide();
    this.health = null;
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // nothing stored
    }
    this.machinesEl.replaceChildren();
    $('events').replaceChildren();
    $('attention').replaceChildren();
    $('health-machines').replaceChildren();
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

  onEvents(events) {
    if (this.health) this.health.onEvents(events);
  }

  /** Names a worker in the feed entries written before it was known. */
  nameInFeed(workerId, name) {
    if (this.unnamed === 0 || !name) return;
    this.unnamed = 0;
    for (const li of $('events').querySelectorAll('li[data-unnamed]')) {
      this.unnamed += 1;
      if (li.dataset.unnamed !== workerId) continue;
      li.querySelector('.e-subject').textContent = `${name} on ${li.dataset.machine}`;
      delete li.dataset.unnamed;
      this.unnamed -= 1;
    }
  }

  loaded(empty) {
    $('loading').hidden = true;
    $('empty').hidden = !empty;
  }

  counts(c) {
    if (!c) return;
    const m = c.machines;
    const w = c.workers;
    const put = (el, n) => {
      setText(el, numberFormat.format(n));
      el.dataset.value = String(n);
    };
    put(this.countEls.machines.online, m.online);
    put(this.countEls.machines.degraded, m.degraded);
    put(this.countEls.machines.offline, m.offline);
    put(this.countEls.machines.total, m.total);
    for (const k of ['online', 'draining', 'offline', 'failed', 'total']) put(this.countEls.workers[k], w[k]);
  }

  shown(machines, matching, more) {
    setText($('shown'), `Showing ${machines} of ${matching.machines} machines · ${matching.workers} workers match`);
    $('more-machines').hidden = !more;
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
