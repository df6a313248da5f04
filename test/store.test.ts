import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { OutboxWorker } from '../src/daemon/outbox.js';
import { DeliveryError } from '../src/errors.js';
import { DatabaseSync } from 'node:sqlite';
import type { ResponseEvent, RunEvent, RunTransitionEvent } from '../src/events.js';
import { isRunEvent } from '../src/events.js';
import type { Sink } from '../src/sinks/sink.js';
import { SqliteStore } from '../src/store/sqlite.js';

function event(watchId: string, runId: string, seq: number, to: string, from: string | null = null): RunTransitionEvent {
  return { id: `${watchId}.${seq}`, type: `run.${to}`, seq, watch_id: watchId, thread_id: 'thread_1', run_id: runId, from, to, observed_at: '2026-01-01T00:00:00.000Z', run: { id: runId, status: to } };
}

const store = (): SqliteStore => new SqliteStore(':memory:');

function responseEvent(watchId: string, responseId: string, seq: number, to: string, from: string | null = null): ResponseEvent {
  return { id: `${watchId}.${seq}`, type: `response.${to}`, seq, watch_id: watchId, response_id: responseId, from, to, observed_at: '2026-01-01T00:00:00.000Z', response: { id: responseId, status: to } };
}

/** The run-only schema of 0.x, as a data dir written before responses holds it. */
const SCHEMA_0 = `
CREATE TABLE IF NOT EXISTS watches (
  id TEXT PRIMARY KEY,
  thread_id TEXT NOT NULL,
  run_id TEXT NOT NULL,
  metadata TEXT,
  callback_url TEXT,
  state TEXT NOT NULL DEFAULT 'active',
  status TEXT,
  seq INTEGER NOT NULL DEFAULT 0,
  last_snapshot TEXT,
  error TEXT,
  status_since INTEGER,
  next_poll_at INTEGER,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  finished_at INTEGER,
  created_order INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS watches_run ON watches (thread_id, run_id);
CREATE INDEX IF NOT EXISTS watches_state ON watches (state, created_order);
CREATE TABLE IF NOT EXISTS events (
  pos INTEGER PRIMARY KEY AUTOINCREMENT,
  event_id TEXT NOT NULL UNIQUE,
  watch_id TEXT NOT NULL,
  thread_id TEXT NOT NULL,
  run_id TEXT NOT NULL,
  payload TEXT NOT NULL,
  created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id, pos);
CREATE TABLE IF NOT EXISTS deliveries (
  sink TEXT NOT NULL,
  pos INTEGER NOT NULL,
  state TEXT NOT NULL DEFAULT 'pending',
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_at INTEGER NOT NULL DEFAULT 0,
  first_attempt_at INTEGER,
  last_error TEXT,
  updated_at INTEGER NOT NULL,
  PRIMARY KEY (sink, pos)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (sink, state, pos);
`;

describe('SqliteStore', () => {
  it('creates a watch once per run', () => {
    const s = store();
    const first = s.createWatch({ kind: 'run', id: 'w_1', thread_id: 'thread_1', run_id: 'run_1', metadata: { a: 'b' } }, 1000);
    const again = s.createWatch({ kind: 'run', id: 'w_2', thread_id: 'thread_1', run_id: 'run_1' }, 2000);
    expect(first.created).toBe(true);
    expect(again).toMatchObject({ created: false, watch: { id: 'w_1', metadata: { a: 'b' }, state: 'active', seq: 0 } });
  });

  it('records an event with its watch state and one delivery per sink, in one step', () => {
    const s = store();
    s.createWatch({ kind: 'run', id: 'w_1', thread_id: 'thread_1', run_id: 'run_1', callback_url: 'https://hooks/x' }, 0);
    s.recordEvent(event('w_1', 'run_1', 1, 'in_progress'), ['stdout', 'webhook'], 10);
    expect(s.getWatch('w_1')).toMatchObject({ state: 'active', status: 'in_progress', seq: 1, status_since: 10 });
    expect(s.sinkStats()).toEqual([
      { sink: 'callback', pending: 1, dead: 0 },
      { sink: 'stdout', pending: 1, dead: 0 },
      { sink: 'webhook', pending: 1, dead: 0 },
    ]);
    expect(s.pendingDeliveries('callback', 10)[0]).toMatchObject({ event_id: 'w_1.1', callback_url: 'https://hooks/x' });
    s.recordEvent(event('w_1', 'run_1', 2, 'completed', 'in_progress'), ['stdout'], 20);
    expect(s.getWatch('w_1')).toMatchObject({ state: 'finished', status: 'completed', finished_at: 20 });
    expect(s.activeWatches()).toEqual([]);
  });

  it('keeps the first payload when the same event id is recorded twice', () => {
    const s = store();
    s.createWatch({ kind: 'run', id: 'w_1', thread_id: 'thread_1', run_id: 'run_1' }, 0);
    const pos = s.recordEvent(event('w_1', 'run_1', 1, 'queued'), ['stdout'], 0);
    expect(s.recordEvent(event('w_1', 'run_1', 1, 'in_progress'), ['stdout'], 5)).toBe(pos);
    expect(s.eventsAfter(0, {}, 10)).toHaveLength(1);
    expect(JSON.parse(s.eventsAfter(0, {}, 10)[0]!.payload)).toMatchObject({ to: 'queued' });
  });

  it('marks a watch failed on watch.error and deleted on an abort', () => {
    const s = store();
    for (const id of ['w_1', 'w_2']) s.createWatch({ kind: 'run', id, thread_id: 'thread_1', run_id: `run_${id}` }, 0);
    const error = (watchId: string, code: 'run_not_found' | 'aborted'): RunEvent => ({ ...event(watchId, `run_${watchId}`, 1, 'x'), type: 'watch.error', to: null, error: { code, message: code }, run: null });
    s.recordEvent(error('w_1', 'run_not_found'), [], 1);
    s.recordEvent(error('w_2', 'aborted'), [], 1);
    expect(s.getWatch('w_1')).toMatchObject({ state: 'failed', error: { code: 'run_not_found' } });
    expect(s.getWatch('w_2')).toMatchObject({ state: 'deleted' });
  });

  it('filters and pages the event log', () => {
    const s = store();
    s.createWatch({ kind: 'run', id: 'w_a', thread_id: 'thread_1', run_id: 'run_a' }, 0);
    s.createWatch({ kind: 'run', id: 'w_b', thread_id: 'thread_1', run_id: 'run_b' }, 0);
    s.recordEvent(event('w_a', 'run_a', 1, 'queued'), [], 0);
    s.recordEvent(event('w_b', 'run_b', 1, 'queued'), [], 0);
    s.recordEvent(event('w_a', 'run_a', 2, 'in_progress', 'queued'), [], 0);
    expect(s.eventsAfter(0, { run_id: 'run_a' }, 10).map((e) => e.event_id)).toEqual(['w_a.1', 'w_a.2']);
    expect(s.eventsAfter(1, {}, 1).map((e) => e.event_id)).toEqual(['w_b.1']);
    expect(s.lastPosition()).toBe(3);
  });

  it('prunes delivered events and ended watches past retention, never pending ones', () => {
    const s = store();
    s.createWatch({ kind: 'run', id: 'w_1', thread_id: 'thread_1', run_id: 'run_1' }, 0);
    const p1 = s.recordEvent(event('w_1', 'run_1', 1, 'queued'), ['stdout'], 0);
    s.recordEvent(event('w_1', 'run_1', 2, 'completed', 'queued'), ['stdout'], 0);
    s.markDelivered('stdout', p1, 1);
    // one delivered event and the ended watch; the pending event stays
    expect(s.prune(10_000, { eventsMs: 1000, watchesMs: 1000 })).toBe(2);
    expect(s.eventsAfter(0, {}, 10).map((e) => e.event_id)).toEqual(['w_1.2']);
    expect(s.getWatch('w_1')).toBeUndefined();
  });

  it('stores response watches beside runs: one per response, their own terminal set, filtered by response_id', () => {
    const s = store();
    s.createWatch({ kind: 'run', id: 'w_run', thread_id: 'thread_1', run_id: 'resp_1' }, 0);
    const first = s.createWatch({ kind: 'response', id: 'w_r', response_id: 'resp_1' }, 0);
    // a run whose id happens to equal the response's is another target
    expect(first).toMatchObject({ created: true, watch: { kind: 'response', response_id: 'resp_1', state: 'active' } });
    expect(first.watch).not.toHaveProperty('thread_id');
    expect(s.createWatch({ kind: 'response', id: 'w_r2', response_id: 'resp_1' }, 0)).toMatchObject({ created: false, watch: { id: 'w_r' } });
    s.recordEvent(responseEvent('w_r', 'resp_1', 1, 'in_progress'), ['stdout'], 5);
    s.recordEvent(event('w_run', 'resp_1', 1, 'queued'), ['stdout'], 5);
    // incomplete ends a response
    s.recordEvent(responseEvent('w_r', 'resp_1', 2, 'incomplete', 'in_progress'), ['stdout'], 9);
    expect(s.getWatch('w_r')).toMatchObject({ state: 'finished', status: 'incomplete', seq: 2, last_snapshot: { id: 'resp_1', status: 'incomplete' }, finished_at: 9 });
    expect(s.eventsAfter(0, { response_id: 'resp_1' }, 10).map((e) => e.event_id)).toEqual(['w_r.1', 'w_r.2']);
    expect(s.eventsAfter(0, { run_id: 'resp_1' }, 10).map((e) => e.event_id)).toEqual(['w_run.1']);
    expect(s.activeWatches().map((w) => w.id)).toEqual(['w_run']);
  });

  it('migrates a data dir of the run-only schema in place: watches, positions and pending deliveries kept', () => {
    const file = path.join(mkdtempSync(path.join(tmpdir(), 'runwatch-store-')), 'runwatch.db');
    const old = new DatabaseSync(file);
    old.exec(SCHEMA_0);
    old.exec(`INSERT INTO watches (id, thread_id, run_id, state, status, seq, created_at, updated_at, created_order) VALUES ('w_old', 'thread_1', 'run_1', 'active', 'queued', 7, 1, 1, 1)`);
    old.exec(`INSERT INTO events (pos, event_id, watch_id, thread_id, run_id, payload, created_at) VALUES (41, 'w_old.7', 'w_old', 'thread_1', 'run_1', '{}', 1)`);
    old.exec(`INSERT INTO deliveries (sink, pos, updated_at) VALUES ('stdout', 41, 1)`);
    // the newest event was pruned: its position must never be handed out again
    old.exec(`INSERT INTO events (pos, event_id, watch_id, thread_id, run_id, payload, created_at) VALUES (42, 'w_old.8', 'w_old', 'thread_1', 'run_1', '{}', 1); DELETE FROM events WHERE pos = 42`);
    old.close();
    const s = new SqliteStore(file);
    expect(s.activeWatches()).toMatchObject([{ kind: 'run', id: 'w_old', thread_id: 'thread_1', run_id: 'run_1', seq: 7 }]);
    expect(s.createWatch({ kind: 'run', id: 'w_new', thread_id: 'thread_1', run_id: 'run_1' }, 2)).toMatchObject({ created: false, watch: { id: 'w_old' } });
    expect(s.pendingDeliveries('stdout', 10).map((d) => d.pos)).toEqual([41]);
    s.createWatch({ kind: 'response', id: 'w_r', response_id: 'resp_1' }, 2);
    expect(s.recordEvent(responseEvent('w_r', 'resp_1', 1, 'queued'), [], 3)).toBe(43);
    s.close();
    // opening again is a no-op
    const again = new SqliteStore(file);
    expect(again.listWatches({ limit: 10 }).map((w) => w.id)).toEqual(['w_old', 'w_r']);
    again.close();
  });

  it('refuses a data dir written by a newer schema, naming the way out', () => {
    const file = path.join(mkdtempSync(path.join(tmpdir(), 'runwatch-store-')), 'runwatch.db');
    const newer = new DatabaseSync(file);
    newer.exec('PRAGMA user_version = 99');
    newer.close();
    expect(() => new SqliteStore(file)).toThrow(/newer runwatch \(schema 99.*empty data dir/);
  });

  it('remembers the actions done from their events: handled tool calls and a cancel, across a reopen', () => {
    const file = path.join(mkdtempSync(path.join(tmpdir(), 'runwatch-store-')), 'runwatch.db');
    const a = new SqliteStore(file);
    a.createWatch({ kind: 'run', id: 'w_1', thread_id: 'thread_1', run_id: 'run_1' }, 0);
    expect(a.getWatch('w_1')?.actions).toEqual({ handledCalls: null, cancelRequested: false });
    a.recordEvent(event('w_1', 'run_1', 1, 'requires_action'), [], 0);
    a.recordEvent({ ...event('w_1', 'run_1', 2, 'action_failed', 'requires_action'), to: 'requires_action', reason: 'submit_tool_outputs', tool_call_ids: ['call_1', 'call_2'], error: { code: 'tool_handler_failed', message: 'x' } }, [], 1);
    // a stall event changes nothing it remembers
    a.recordEvent({ ...event('w_1', 'run_1', 3, 'stalled', 'requires_action'), to: 'requires_action', stalled_for_ms: 5 }, [], 2);
    expect(a.getWatch('w_1')?.actions).toEqual({ handledCalls: 'call_1,call_2', cancelRequested: false });
    a.recordEvent({ ...event('w_1', 'run_1', 4, 'cancel_requested', 'requires_action'), to: 'requires_action', reason: 'stalled' }, [], 3);
    a.close();
    const b = new SqliteStore(file);
    expect(b.getWatch('w_1')).toMatchObject({ seq: 4, status: 'requires_action', actions: { handledCalls: 'call_1,call_2', cancelRequested: true } });
    b.close();
  });

  it('survives a reopen of the same file', () => {
    const file = path.join(mkdtempSync(path.join(tmpdir(), 'runwatch-store-')), 'sub', 'runwatch.db');
    const a = new SqliteStore(file);
    a.createWatch({ kind: 'run', id: 'w_1', thread_id: 'thread_1', run_id: 'run_1' }, 0);
    a.recordEvent(event('w_1', 'run_1', 1, 'queued'), ['stdout'], 0);
    a.close();
    const b = new SqliteStore(file);
    expect(b.activeWatches()).toMatchObject([{ id: 'w_1', status: 'queued', seq: 1 }]);
    expect(b.pendingDeliveries('stdout', 10)).toHaveLength(1);
    expect(b.healthy()).toBe(true);
    b.close();
    expect(b.healthy()).toBe(false);
  });
});

describe('OutboxWorker', () => {
  const options = { retryForMs: 60_000, backoff: { baseMs: 20, capMs: 40 }, logger: pino({ level: 'silent' }) };

  it('holds back a failing run only, and delivers its events in order once the sink recovers', async () => {
    const s = store();
    for (const run of ['a', 'b']) s.createWatch({ kind: 'run', id: `w_${run}`, thread_id: 'thread_1', run_id: `run_${run}` }, 0);
    for (let seq = 1; seq <= 3; seq++) {
      s.recordEvent(event('w_a', 'run_a', seq, `s${seq}`), ['test'], 0);
      s.recordEvent(event('w_b', 'run_b', seq, `s${seq}`), ['test'], 0);
    }
    const delivered: string[] = [];
    let failuresLeft = 3;
    const sink: Sink = {
      name: 'test',
      deliver(e) {
        if (isRunEvent(e) && e.run_id === 'run_a' && e.seq === 2 && failuresLeft-- > 0) throw new DeliveryError('receiver down');
        delivered.push(e.id);
      },
    };
    const outcomes: string[] = [];
    const worker = new OutboxWorker(s, sink, { ...options, onOutcome: (_, outcome) => outcomes.push(outcome) });
    worker.start();
    await until(() => delivered.length === 6);
    await worker.stop(100);
    expect(delivered.filter((id) => id.startsWith('w_a'))).toEqual(['w_a.1', 'w_a.2', 'w_a.3']);
    expect(delivered.filter((id) => id.startsWith('w_b'))).toEqual(['w_b.1', 'w_b.2', 'w_b.3']);
    // run b was not held back by run a's failures
    expect(delivered.indexOf('w_b.3')).toBeLessThan(delivered.indexOf('w_a.2'));
    expect(outcomes.filter((o) => o === 'retry')).toHaveLength(3);
    expect(s.sinkStats()).toEqual([{ sink: 'test', pending: 0, dead: 0 }]);
  });

  it('dead-letters a permanent failure at once and one that outlives retryForMs, then goes on', async () => {
    const s = store();
    s.createWatch({ kind: 'run', id: 'w_a', thread_id: 'thread_1', run_id: 'run_a' }, 0);
    for (let seq = 1; seq <= 3; seq++) s.recordEvent(event('w_a', 'run_a', seq, `s${seq}`), ['test'], 0);
    const delivered: number[] = [];
    const sink: Sink = {
      name: 'test',
      deliver(e) {
        if (e.seq === 1) throw new DeliveryError('bad request', { permanent: true });
        if (e.seq === 2) throw new DeliveryError('still down');
        delivered.push(e.seq);
      },
    };
    const worker = new OutboxWorker(s, sink, { ...options, retryForMs: 50 });
    worker.start();
    await until(() => delivered.length === 1);
    await worker.stop(100);
    expect(delivered).toEqual([3]);
    expect(s.sinkStats()).toEqual([{ sink: 'test', pending: 0, dead: 2 }]);
  });

  it('stops within the flush timeout even when the sink hangs, leaving the event pending', async () => {
    const s = store();
    s.createWatch({ kind: 'run', id: 'w_a', thread_id: 'thread_1', run_id: 'run_a' }, 0);
    s.recordEvent(event('w_a', 'run_a', 1, 's1'), ['test'], 0);
    let started = false;
    const sink: Sink = {
      name: 'test',
      deliver: (_e, context) =>
        new Promise((_, reject) => {
          started = true;
          context?.signal?.addEventListener('abort', () => reject(new Error('aborted')));
        }),
    };
    const worker = new OutboxWorker(s, sink, options);
    worker.start();
    await until(() => started);
    const t0 = Date.now();
    await worker.stop(200);
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(s.sinkStats()).toEqual([{ sink: 'test', pending: 1, dead: 0 }]);
  });
});

/** Waits for a condition driven by the worker's own progress (bounded). */
async function until(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > end) throw new Error('condition not met');
    await new Promise((resolve) => setImmediate(resolve));
  }
}
