// runwatch's live view: plain browser JavaScript, no build step. Every string from the API is
// put in the page as text (textContent, never innerHTML): ids and errors are user data.

const TOKEN_KEY = 'runwatch.token';
const PAGE_SIZE = 50;
/** Events change rows in place at once; the page is read again (order, new watches) at most this often... */
const REFRESH_MS = 1500;
/** ...and never more than a fifth of the time: a page the store reads slowly (Redis, every watch) is read less often. */
const REFRESH_DUTY = 5;
const API = new URL('../v1/', location.href);

const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  /** The log position of the last event seen: the stream resumes after it. */
  lastEventId: 0,
  /** The rows on screen by watch id: an event finds its row without looking at the others. */
  rows: new Map(),
  /** Cursors of the pages before this one (the `after` each was read with). */
  cursors: [],
  after: undefined,
  nextAfter: null,
  refreshTimer: undefined,
  refreshGapMs: REFRESH_MS,
  refreshing: false,
  refreshAgain: false,
  stream: undefined,
  detail: undefined,
  ticker: undefined,
};

/** Creates an element; string children become text nodes, so nothing from the API is parsed as HTML. */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** A status as a CSS class suffix: only the characters a status has, anything else is `other`. */
function statusClass(status) {
  return typeof status === 'string' && /^[a-z_]{1,40}$/.test(status) ? status : 'other';
}

function statusChip(status, extra) {
  const name = status ?? 'none';
  return h('span', { class: `chip st-${statusClass(name)}`, dataset: { status: name } }, name, extra);
}

/** `1h 02m`, `3m 05s`, `42s`: a duration for a dense table. */
function duration(ms) {
  if (!Number.isFinite(ms)) return '–';
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, '0')}s`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours}h ${String(m % 60).padStart(2, '0')}m`;
  return `${Math.floor(hours / 24)}d ${hours % 24}h`;
}

const since = (iso) => (iso ? Date.now() - Date.parse(iso) : NaN);

class Unauthorized extends Error {}

/** One call to the control API with the token; a 401 ends the session with a clear message. */
async function api(path, init = {}) {
  const res = await fetch(new URL(path, API), { ...init, headers: { authorization: `Bearer ${state.token}`, ...(init.headers ?? {}) }, cache: 'no-store' });
  if (res.status === 401) throw new Unauthorized();
  const body = await res.json().catch(() => null);
  if (!res.ok) throw new Error(body?.error ? `${res.status} ${body.error.code}: ${body.error.message}` : `HTTP ${res.status}`);
  return body;
}

function setConn(kind, text) {
  const el = $('conn');
  el.dataset.state = kind;
  el.textContent = text;
}

// ---- login ----

function showLogin(message) {
  stopAll();
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $('app').hidden = true;
  $('logout').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message ?? '';
  setConn('idle', 'not connected');
  $('token').focus();
}

function failed(error) {
  if (error instanceof Unauthorized) showLogin('The daemon refused this token (401 unauthorized): check RUNWATCH_CONTROL_TOKEN and enter it again.');
  else $('list-error').textContent = `The daemon did not answer as expected: ${error.message}`;
}

async function start() {
  $('login').hidden = true;
  let fleet;
  try {
    fleet = await api('fleet');
  } catch (error) {
    if (error instanceof Unauthorized) return failed(error);
    showLogin(`Cannot reach the daemon: ${error.message}`);
    return;
  }
  $('app').hidden = false;
  $('logout').hidden = false;
  renderFleet(fleet);
  // events after this position are replayed by the stream; the list read next already holds earlier ones
  // an SSE id: a position, or one per shard (12.40.7) from a sharded daemon
  state.lastEventId = fleet.last_event_id ?? String(fleet.last_event_pos);
  document.body.dataset.lastEventId = String(state.lastEventId);
  await refresh();
  openMainStream();
  state.ticker = setInterval(tick, 1000);
}

function stopAll() {
  state.stream?.abort();
  state.stream = undefined;
  closeDetail();
  clearInterval(state.ticker);
  clearTimeout(state.refreshTimer);
  state.refreshTimer = undefined;
}

// ---- the event stream: fetch + a ReadableStream parser, since EventSource cannot send headers ----

/**
 * Reads `GET /v1/events` and calls `onEvent(event, id)` per event, resuming after a cut with
 * `Last-Event-ID` (the last event's id: a position, or one per shard) after the server's `retry` delay. Returns an abort function.
 */
function openStream(query, getLastId, onEvent, onConn) {
  const controller = new AbortController();
  let retryMs = 1000;
  const run = async () => {
    while (!controller.signal.aborted) {
      try {
        const res = await fetch(new URL(`events${query}`, API), {
          headers: { authorization: `Bearer ${state.token}`, accept: 'text/event-stream', 'last-event-id': String(getLastId()) },
          signal: controller.signal,
          cache: 'no-store',
        });
        if (res.status === 401) throw new Unauthorized();
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        onConn('live');
        await readEvents(res.body, (frame) => {
          if (frame.retry !== undefined) retryMs = frame.retry;
          if (frame.data === undefined) return onConn('live');
          onEvent(JSON.parse(frame.data), frame.id);
        });
      } catch (error) {
        if (controller.signal.aborted) return;
        if (error instanceof Unauthorized) return failed(error);
      }
      if (controller.signal.aborted) return;
      onConn('reconnecting');
      await new Promise((resolve) => setTimeout(resolve, retryMs));
    }
  };
  void run();
  return { abort: () => controller.abort() };
}

/** Parses server-sent events from a byte stream: one `{ id, event, data, retry }` per blank-line-ended block; comments reach `onFrame` as an empty frame (a keep-alive). */
async function readEvents(body, onFrame) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + (buffer[end] === '\r' ? 4 : 2));
      const frame = {};
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'data') data.push(text);
        else if (field === 'id') frame.id = text;
        else if (field === 'event') frame.event = text;
        else if (field === 'retry' && /^\d+$/.test(text)) frame.retry = Number(text);
      }
      if (data.length > 0) frame.data = data.join('\n');
      onFrame(frame);
    }
  }
}

function openMainStream() {
  state.stream = openStream(
    '',
    () => state.lastEventId,
    (event, id) => {
      state.lastEventId = id;
      document.body.dataset.lastEventId = id;
      applyEvent(event);
      if (state.detail?.id === event.watch_id) state.detail.add(event);
      scheduleRefresh();
    },
    (kind) => {
      setConn(kind, kind === 'live' ? 'live' : 'reconnecting…');
      // a keep-alive or a (re)connection also brings the fleet figures up to date
      if (kind === 'live') scheduleRefresh();
    },
  );
}

// ---- the fleet ----

function renderFleet(fleet) {
  const counts = Object.entries(fleet.active_by_status).sort((a, b) => b[1] - a[1]);
  const total = counts.reduce((sum, [, n]) => sum + n, 0);
  $('fleet-status').replaceChildren(h('span', { class: 'total' }, `${total} active`), ...counts.map(([status, n]) => statusChip(status, h('b', {}, ` ${n}`))));
  $('fleet-polls').textContent = fleet.polls_per_second.toFixed(1);
  $('fleet-429').textContent = `${(fleet.throttled_share * 100).toFixed(1)}%`;
  $('fleet-429').classList.toggle('warn', fleet.throttled_share > 0.05);
  const pending = fleet.outbox.reduce((sum, o) => sum + o.pending, 0);
  const dead = fleet.outbox.reduce((sum, o) => sum + o.dead, 0);
  $('fleet-outbox').textContent = String(pending);
  $('fleet-outbox-sub').textContent = fleet.outbox.length === 0 ? 'no sinks' : `${dead} dead · ${fleet.outbox.map((o) => `${o.sink} ${o.pending}`).join(' · ')}`;
  $('fleet-budget').textContent = `${fleet.budget.rate_per_second.toFixed(1)}/s`;
  $('fleet-budget-sub').textContent = `${fleet.budget.in_flight} in flight · ${fleet.budget.queued} queued`;
  const replicas = fleet.replicas;
  $('fleet-replicas-card').hidden = !replicas;
  if (replicas) $('fleet-replicas').replaceChildren(...Object.entries(replicas).map(([id, n]) => h('span', { class: 'chip replica' }, id, h('b', {}, ` ${n}`))));
}

// ---- the table ----

function listQuery() {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE), order: $('f-order').value });
  if ($('f-state').value) params.set('state', $('f-state').value);
  if ($('f-status').value) params.set('status', $('f-status').value);
  const search = $('f-search').value.trim();
  if (search) params.set('q', search);
  if (state.after) params.set('after', state.after);
  return `watches?${params}`;
}

/** Reads the page and the fleet again, at most once at a time (one more if asked meanwhile). */
async function refresh() {
  if (state.refreshing) {
    state.refreshAgain = true;
    return;
  }
  state.refreshing = true;
  const startedMs = performance.now();
  try {
    const search = $('f-search').value.trim();
    if (search && !/^[A-Za-z0-9_-]{1,128}$/.test(search)) {
      $('list-error').textContent = 'Search by id: letters, digits, _ and - only.';
      return;
    }
    const [page, fleet] = await Promise.all([api(listQuery()), api('fleet')]);
    $('list-error').textContent = '';
    renderFleet(fleet);
    renderRows(page.data);
    state.nextAfter = page.next_after;
    $('next').disabled = !page.next_after;
    $('prev').disabled = state.cursors.length === 0;
    const first = state.cursors.length * PAGE_SIZE;
    $('page-info').textContent = page.data.length === 0 ? '' : `${first + 1}–${first + page.data.length}`;
  } catch (error) {
    failed(error);
  } finally {
    state.refreshing = false;
    state.refreshGapMs = Math.max(REFRESH_MS, (performance.now() - startedMs) * REFRESH_DUTY);
    if (state.refreshAgain) {
      state.refreshAgain = false;
      scheduleRefresh();
    }
  }
}

/** A trailing refresh, at most one per `refreshGapMs` however many events arrive. */
function scheduleRefresh() {
  if (state.refreshTimer !== undefined) return;
  state.refreshTimer = setTimeout(() => {
    state.refreshTimer = undefined;
    void refresh();
  }, state.refreshGapMs);
}

function renderRows(watches) {
  const rows = new Map();
  const body = $('rows');
  body.replaceChildren(
    ...watches.map((watch) => {
      const row = { watch, tr: h('tr', { tabindex: '0', dataset: { watchId: watch.id } }) };
      row.tr.addEventListener('click', () => openDetail(watch.id));
      row.tr.addEventListener('keydown', (e) => e.key === 'Enter' && openDetail(watch.id));
      fillRow(row);
      rows.set(watch.id, row);
      return row.tr;
    }),
  );
  state.rows = rows;
  $('empty').hidden = watches.length > 0;
}

/** The watch's own state beside the resource's status, when it is no longer watched: `failed` is the watch's error, not the run's status. */
function stateBadge(watchState) {
  if (watchState === 'active') return null;
  const label = { finished: 'ended', failed: 'watch error', deleted: 'deleted' }[watchState] ?? 'ended';
  return h('span', { class: `badge ${watchState === 'failed' ? 'bad' : ''}`, title: `watch ${watchState}` }, label);
}

function targetCell(watch) {
  if (watch.kind === 'response') return h('td', { class: 'target' }, h('span', { class: 'id' }, watch.response_id), h('span', { class: 'sub' }, 'response'));
  return h('td', { class: 'target' }, h('span', { class: 'id' }, watch.run_id), h('span', { class: 'sub' }, watch.thread_id));
}

function fillRow(row) {
  const w = row.watch;
  row.tr.dataset.status = w.status ?? 'none';
  row.tr.dataset.state = w.state;
  row.tr.classList.toggle('attention', (w.state === 'active' && (w.stalled || w.status === 'requires_action' || w.last_error !== null)) || w.state === 'failed');
  const badges = [w.stalled ? h('span', { class: 'badge stalled' }, 'stalled') : null, stateBadge(w.state)];
  const error = w.last_error ? h('span', { class: 'error', title: `${w.last_error.code}: ${w.last_error.message}` }, h('b', {}, w.last_error.code), ' ', w.last_error.message) : '';
  row.timeCells = [h('td', { class: 'num' }), h('td', { class: 'num' }), h('td', { class: 'num' })];
  row.tr.replaceChildren(targetCell(w), h('td', { class: 'status' }, statusChip(w.status), ...badges), ...row.timeCells.slice(0, 2), h('td', { class: 'num' }, String(w.polls)), row.timeCells[2], h('td', { class: 'err' }, error), h('td', { class: 'num' }, w.sink_backlog === null ? '–' : String(w.sink_backlog)));
  tickRow(row);
}

/** The cells that count time; rewritten each second for the rows on screen only. */
function tickRow(row) {
  const w = row.watch;
  const [age, inStatus, next] = row.timeCells;
  age.textContent = duration(since(w.created_at));
  inStatus.textContent = w.status_since ? duration(since(w.status_since)) : '–';
  if (w.state !== 'active' || !w.next_poll_at) next.textContent = '–';
  else {
    const inMs = Date.parse(w.next_poll_at) - Date.now();
    next.textContent = inMs <= 0 ? 'due' : duration(inMs);
  }
}

function tick() {
  for (const row of state.rows.values()) tickRow(row);
  state.detail?.tick();
}

/** An event changes its row in place (if it is on screen): constant work, whatever the number of watches. */
function applyEvent(event) {
  const row = state.rows.get(event.watch_id);
  if (!row || event.seq <= row.watch.seq) return;
  const w = { ...row.watch, seq: event.seq, updated_at: event.observed_at };
  const kind = event.type.slice(event.type.indexOf('.') + 1);
  if (event.type === 'watch.error') {
    w.state = event.error?.code === 'aborted' ? 'deleted' : 'failed';
    w.last_error = event.error ? { code: event.error.code, message: event.error.message } : w.last_error;
  } else if (kind === 'stalled') {
    w.stalled = true;
  } else if (event.to !== null && event.to !== event.from && kind === event.to) {
    w.status = event.to;
    w.status_since = event.observed_at;
    w.stalled = false;
    w.last_error = null;
  }
  row.watch = w;
  fillRow(row);
}

// ---- the detail of one watch ----

function closeDetail() {
  state.detail?.close();
  state.detail = undefined;
  $('detail').hidden = true;
}

async function openDetail(id) {
  closeDetail();
  let watch;
  try {
    watch = await api(`watches/${encodeURIComponent(id)}`);
  } catch (error) {
    return failed(error);
  }
  const events = [];
  let lastId = 0;
  let reloading = false;
  let reloadAgain = false;
  /** Reads the watch again after its events (its state, polls, error): one watch, one request at a time. */
  const reload = async () => {
    if (reloading) {
      reloadAgain = true;
      return;
    }
    reloading = true;
    try {
      const fresh = await api(`watches/${encodeURIComponent(id)}`);
      if (state.detail !== detail) return;
      detail.watch = fresh;
      renderDetail(detail, events);
    } catch (error) {
      if (error instanceof Unauthorized) failed(error);
    } finally {
      reloading = false;
      if (reloadAgain) {
        reloadAgain = false;
        void reload();
      }
    }
  };
  const detail = {
    id,
    watch,
    /** The events whose JSON is open: a re-render keeps them open. */
    expanded: new Set(),
    add(event) {
      if (events.some((e) => e.seq === event.seq)) return;
      events.push(event);
      events.sort((a, b) => a.seq - b.seq);
      if (event.type === 'watch.error') detail.watch = { ...detail.watch, state: event.error?.code === 'aborted' ? 'deleted' : 'failed' };
      else if (event.to && event.to !== event.from) detail.watch = { ...detail.watch, status: event.to };
      renderDetail(detail, events);
      void reload();
    },
    tick: () => renderTimeline(detail, events),
    close: () => stream.abort(),
  };
  const query = watch.kind === 'response' ? `?response_id=${encodeURIComponent(watch.response_id)}` : `?run_id=${encodeURIComponent(watch.run_id)}`;
  // its own stream from the start of the log: the watch's history, then its changes as they come
  const stream = openStream(
    query,
    () => lastId,
    (event, eventId) => {
      lastId = eventId;
      if (event.watch_id === id) detail.add(event);
    },
    () => undefined,
  );
  state.detail = detail;
  $('d-message').textContent = '';
  $('detail').hidden = false;
  renderDetail(detail, events);
  $('d-close').focus();
}

function renderDetail(detail, events) {
  const w = detail.watch;
  $('d-title').textContent = w.kind === 'response' ? w.response_id : w.run_id;
  $('d-status').replaceChildren(statusChip(w.status), stateBadge(w.state) ?? '');
  $('d-cancel').hidden = w.state !== 'active';
  $('d-cancel').textContent = w.kind === 'response' ? 'Cancel response' : 'Cancel run';
  const field = (name, value) => [h('dt', {}, name), h('dd', {}, value ?? '–')];
  $('d-fields').replaceChildren(
    ...field('watch', w.id),
    ...(w.kind === 'run' ? field('thread', w.thread_id) : []),
    ...field('created', w.created_at),
    ...field('polls', String(w.polls)),
    ...field('last error', w.last_error ? `${w.last_error.code}: ${w.last_error.message}` : null),
    ...(w.metadata ? field('metadata', JSON.stringify(w.metadata)) : []),
  );
  const actions = events.filter((e) => /\.(tool_outputs_submitted|tool_approvals_submitted|cancel_requested|action_failed)$/.test(e.type));
  $('d-actions').replaceChildren(
    ...(actions.length === 0
      ? [h('li', { class: 'muted' }, 'none')]
      : actions.map((e) => h('li', {}, h('time', {}, e.observed_at), ' ', h('b', {}, e.type), e.tool_call_ids ? ` · ${e.tool_call_ids.join(', ')}` : '', e.reason ? ` · ${e.reason}` : '', e.error ? ` · ${e.error.code}: ${e.error.message}` : ''))),
  );
  $('d-events').replaceChildren(
    ...events.map((e) =>
      h(
        'li',
        { dataset: { seq: String(e.seq) } },
        h('details', { open: detail.expanded.has(e.seq), ontoggle: (t) => (t.target.open ? detail.expanded.add(e.seq) : detail.expanded.delete(e.seq)) }, h('summary', {}, h('span', { class: 'seq' }, `#${e.seq}`), ' ', h('time', {}, e.observed_at), ' ', h('b', {}, e.type), e.error ? h('span', { class: 'error' }, ` ${e.error.code}: ${e.error.message}`) : ''), h('pre', {}, JSON.stringify(e, null, 2))),
      ),
    ),
  );
  renderTimeline(detail, events);
}

/** One segment per status, to scale, from the first event to the end (or now while it runs). */
function renderTimeline(detail, events) {
  const changes = events.filter((e) => e.to !== null && e.from !== e.to);
  const ended = events.find((e) => e.type === 'watch.error') ?? (detail.watch.state !== 'active' ? events.at(-1) : undefined);
  if (changes.length === 0) {
    $('d-timeline').replaceChildren(h('span', { class: 'muted' }, 'no status seen yet'));
    $('d-axis').replaceChildren();
    return;
  }
  const startMs = Date.parse(changes[0].observed_at);
  const endMs = Math.max(ended ? Date.parse(ended.observed_at) : Date.now(), startMs + 1);
  const spanMs = endMs - startMs;
  const segments = changes.map((e, i) => {
    const from = Date.parse(e.observed_at);
    const to = i + 1 < changes.length ? Date.parse(changes[i + 1].observed_at) : endMs;
    const ms = Math.max(0, to - from);
    const last = i === changes.length - 1;
    // a terminal status is a point in time: give it a sliver so it shows
    const width = last && ended ? Math.max(2, (ms / spanMs) * 100) : (ms / spanMs) * 100;
    return h('div', { class: `seg st-${statusClass(e.to)}`, title: `${e.to}: ${duration(ms)} from ${e.observed_at}`, dataset: { status: e.to, width: width.toFixed(2) } }, width > 8 ? `${e.to} ${duration(ms)}` : '');
  });
  $('d-timeline').replaceChildren(...segments);
  // widths set as properties: the page's CSP allows no inline style attributes
  for (const seg of segments) seg.style.flexGrow = seg.dataset.width;
  $('d-axis').replaceChildren(h('span', {}, changes[0].observed_at.replace('T', ' ').slice(0, 19)), h('span', {}, `${duration(spanMs)}${ended ? '' : ' so far'}`));
}

async function cancelDetail() {
  const detail = state.detail;
  if (!detail) return;
  const w = detail.watch;
  const target = w.kind === 'response' ? `response ${w.response_id}` : `run ${w.run_id}`;
  if (!confirm(`Cancel ${target}? runwatch asks the provider to cancel it; this cannot be undone.`)) return;
  $('d-cancel').disabled = true;
  try {
    const watch = await api(`watches/${encodeURIComponent(w.id)}/cancel`, { method: 'POST' });
    $('d-message').textContent = `Cancel requested for ${target}: the watch goes on to cancelled.`;
    detail.watch = { ...detail.watch, ...watch };
  } catch (error) {
    if (error instanceof Unauthorized) return failed(error);
    $('d-message').textContent = `The cancel failed: ${error.message}`;
  } finally {
    $('d-cancel').disabled = false;
  }
}

// ---- wiring ----

function resetPaging() {
  state.cursors = [];
  state.after = undefined;
  void refresh();
}

$('login-form').addEventListener('submit', (e) => {
  e.preventDefault();
  state.token = $('token').value;
  $('token').value = '';
  sessionStorage.setItem(TOKEN_KEY, state.token);
  void start();
});
$('logout').addEventListener('click', () => showLogin(''));
for (const id of ['f-state', 'f-status', 'f-order']) $(id).addEventListener('change', resetPaging);
let searchTimer;
$('f-search').addEventListener('input', () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(resetPaging, 250);
});
$('controls').addEventListener('submit', (e) => e.preventDefault());
$('next').addEventListener('click', () => {
  if (!state.nextAfter) return;
  state.cursors.push(state.after);
  state.after = state.nextAfter;
  void refresh();
});
$('prev').addEventListener('click', () => {
  if (state.cursors.length === 0) return;
  state.after = state.cursors.pop();
  void refresh();
});
$('d-close').addEventListener('click', closeDetail);
document.addEventListener('keydown', (e) => e.key === 'Escape' && state.detail && closeDetail());
$('d-cancel').addEventListener('click', () => void cancelDetail());

if (state.token) void start();
else showLogin('');
