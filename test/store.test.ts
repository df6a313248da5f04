import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Cluster, Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { OutboxWorker } from '../src/daemon/outbox.js';
import { DeliveryError } from '../src/errors.js';
import { DatabaseSync } from 'node:sqlite';
import type { ResponseEvent, RunEvent, RunTransitionEvent, WatchEvent } from '../src/events.js';
import { isRunEvent } from '../src/events.js';
import { RUN_KIND } from '../src/resource.js';
import type { ResourceKind, Snapshot } from '../src/resource.js';
import type { Sink } from '../src/sinks/sink.js';
import type { Progress } from '../src/step.js';
import { initialProgress } from '../src/step.js';
import { MemoryStore } from '../src/store/memory.js';
import { RedisStore } from '../src/store/redis.js';
import { fleetBudgetKey, RedisKeys, shardPrefix } from '../src/store/redis-keys.js';
import { SqliteStore } from '../src/store/sqlite.js';
import type { WatchState, WatchStore } from '../src/store/store.js';
import { attentionRank } from '../src/store/store.js';
import { requireClusterTools, startCluster } from './cluster.js';
import { REDIS_URL, removeKeys, requireRedis, testPrefix } from './redis.js';

function event(watchId: string, runId: string, seq: number, to: string, from: string | null = null): RunTransitionEvent {
  return { id: `${watchId}.${seq}`, type: `run.${to}`, seq, watch_id: watchId, thread_id: 'thread_1', run_id: runId, from, to, observed_at: '2026-01-01T00:00:00.000Z', run: { id: runId, status: to } };
}

function responseEvent(watchId: string, responseId: string, seq: number, to: string, from: string | null = null): ResponseEvent {
  return { id: `${watchId}.${seq}`, type: `response.${to}`, seq, watch_id: watchId, response_id: responseId, from, to, observed_at: '2026-01-01T00:00:00.000Z', response: { id: responseId, status: to } };
}

/** A progress at a status and seq, as the driver would commit it. */
function progressAt(status: string | null, seq: number, extra: Partial<Progress> = {}): Progress {
  const base = initialProgress(RUN_KIND as unknown as ResourceKind<object, Snapshot>, { startedAtMs: 0, timeoutMs: undefined, expiresGraceMs: 0, defaultTimeoutMs: 60_000 }, {}, 0);
  return { ...base, status, seq, lastSnapshot: status ? { id: 'x', status } : null, ...extra };
}

/** Commits one event as the driver does: from the seq before it, with the watch's state after it. */
function record(s: WatchStore, e: WatchEvent, state: WatchState = 'active', extra: Partial<Progress> = {}) {
  const error = e.type === 'watch.error' ? e.error : undefined;
  return s.commit(e.watch_id, e.seq - 1, { progress: progressAt(e.to, e.seq, extra), events: [e], state, error });
}

const redisAvailable = await requireRedis();
const redisClients: Redis[] = [];
const prefixes: string[] = [];
// one shard's keyspace on a local Redis Cluster: every script of the store must touch one slot
const cluster = requireClusterTools() ? await startCluster(3) : undefined;
const clusterClients: Cluster[] = [];
afterAll(async () => {
  for (const redis of redisClients) redis.disconnect();
  for (const prefix of prefixes) await removeKeys(prefix);
  for (const redis of clusterClients) redis.disconnect();
  await cluster?.stop();
});

const stores = [
  { name: 'memory', skip: false, open: (): WatchStore => new MemoryStore({ sinks: ['stdout'] }) },
  { name: 'sqlite', skip: false, open: (): WatchStore => new SqliteStore(':memory:', { sinks: ['stdout'] }) },
  {
    name: 'redis',
    skip: !redisAvailable,
    open: (): WatchStore => {
      const redis = new Redis(REDIS_URL);
      redisClients.push(redis);
      const prefix = testPrefix();
      prefixes.push(prefix);
      return new RedisStore(redis, prefix, 4);
    },
  },
  {
    name: 'redis shard on a Redis Cluster',
    skip: !cluster,
    open: (): WatchStore => {
      const redis = new Cluster(cluster!.ports.map((port) => ({ host: '127.0.0.1', port })));
      clusterClients.push(redis);
      const prefix = testPrefix();
      return new RedisStore(redis, new RedisKeys(shardPrefix(prefix, 1), fleetBudgetKey(prefix)), 4);
    },
  },
];

describe.each(stores)('WatchStore contract: $name', ({ skip, open }) => {
  it.skipIf(skip)('creates a watch once per target, runs and responses apart', async () => {
    const s = open();
    const first = await s.create({ kind: 'run', id: 'w_1', thread_id: 'thread_1', run_id: 'run_1', metadata: { a: 'b' } }, 1000);
    const again = await s.create({ kind: 'run', id: 'w_2', thread_id: 'thread_1', run_id: 'run_1' }, 2000);
    expect(first.created).toBe(true);
    expect(again).toMatchObject({ created: false, watch: { id: 'w_1', metadata: { a: 'b' }, state: 'active' } });
    // a response whose id equals a run's is another target
    const response = await s.create({ kind: 'response', id: 'w_r', response_id: 'run_1' }, 0);
    expect(response).toMatchObject({ created: true, watch: { kind: 'response', response_id: 'run_1', state: 'active' } });
    expect(response.watch).not.toHaveProperty('thread_id');
  });

  it.skipIf(skip)('writes a step with its events only from the seq it started from, and keeps the first payload', async () => {
    const s = open();
    await s.create({ kind: 'run', id: 'w_1', thread_id: 'thread_1', run_id: 'run_1' }, 0);
    expect(await record(s, event('w_1', 'run_1', 1, 'queued'))).toBe('ok');
    // a late or repeated step (same seq, same event id) is refused and writes nothing
    expect(await record(s, event('w_1', 'run_1', 1, 'in_progress'))).toBe('stale');
    expect((await s.eventsAfter(0, {}, 10)).map((e) => JSON.parse(e.payload) as WatchEvent).map((e) => e.to)).toEqual(['queued']);
    expect(await s.get('w_1')).toMatchObject({ state: 'active', progress: { status: 'queued', seq: 1 } });
    expect(await s.loadProgress('w_1')).toMatchObject({ status: 'queued', seq: 1 });
    expect(await record(s, event('w_nope', 'run_9', 1, 'queued'))).toBe('missing');
  });

  it.skipIf(skip)('keeps the state the driver gives: an unknown status stays active, watch.error ends failed or deleted, then nothing more is written', async () => {
    const s = open();
    for (const id of ['w_1', 'w_2', 'w_3']) await s.create({ kind: 'run', id, thread_id: 'thread_1', run_id: `run_${id}` }, 0);
    await record(s, event('w_3', 'run_w_3', 1, 'thinking'));
    expect(await s.get('w_3')).toMatchObject({ state: 'active', progress: { status: 'thinking' } });
    expect((await collect(s.active())).map((w) => w.id)).toContain('w_3');
    const error = (watchId: string, code: 'run_not_found' | 'aborted'): RunEvent => ({ ...event(watchId, `run_${watchId}`, 1, 'x'), type: 'watch.error', to: null, error: { code, message: code }, run: null });
    await record(s, error('w_1', 'run_not_found'), 'failed');
    await record(s, error('w_2', 'aborted'), 'deleted');
    expect(await s.get('w_1')).toMatchObject({ state: 'failed', error: { code: 'run_not_found' } });
    expect(await s.get('w_2')).toMatchObject({ state: 'deleted', error: { code: 'aborted' } });
    expect((await s.get('w_1'))?.finished_at).not.toBeNull();
    expect(await record(s, event('w_1', 'run_w_1', 2, 'queued'))).toBe('ended');
    expect((await collect(s.active())).map((w) => w.id)).toEqual(['w_3']);
  });

  it.skipIf(skip)('keeps what the watch did in its progress (handled tool calls, a cancel sent)', async () => {
    const s = open();
    await s.create({ kind: 'run', id: 'w_1', thread_id: 'thread_1', run_id: 'run_1' }, 0);
    await record(s, event('w_1', 'run_1', 1, 'requires_action'), 'active', { handledCalls: 'call_1,call_2', cancelRequested: true });
    expect(await s.loadProgress('w_1')).toMatchObject({ handledCalls: 'call_1,call_2', cancelRequested: true });
  });

  it.skipIf(skip)('filters and pages the event log by run and by response', async () => {
    const s = open();
    await s.create({ kind: 'run', id: 'w_a', thread_id: 'thread_1', run_id: 'run_a' }, 0);
    await s.create({ kind: 'run', id: 'w_b', thread_id: 'thread_1', run_id: 'run_b' }, 0);
    await s.create({ kind: 'response', id: 'w_r', response_id: 'resp_1' }, 0);
    await record(s, event('w_a', 'run_a', 1, 'queued'));
    await record(s, event('w_b', 'run_b', 1, 'queued'));
    await record(s, event('w_a', 'run_a', 2, 'in_progress', 'queued'));
    await record(s, responseEvent('w_r', 'resp_1', 1, 'incomplete'), 'finished');
    expect((await s.eventsAfter(0, { run_id: 'run_a' }, 10)).map((e) => e.event_id)).toEqual(['w_a.1', 'w_a.2']);
    expect((await s.eventsAfter(0, { response_id: 'resp_1' }, 10)).map((e) => e.event_id)).toEqual(['w_r.1']);
    const first = (await s.eventsAfter(0, {}, 1))[0]!;
    expect((await s.eventsAfter(first.pos, {}, 1)).map((e) => e.event_id)).toEqual(['w_b.1']);
    expect(await s.lastPosition()).toBe((await s.eventsAfter(0, {}, 10)).at(-1)!.pos);
    expect((await s.list({ limit: 2 })).map((w) => w.id)).toEqual(['w_a', 'w_b']);
    expect((await s.list({ limit: 10, after: 'w_a' })).map((w) => w.id)).toEqual(['w_b', 'w_r']);
    expect((await s.list({ limit: 10, state: 'finished' })).map((w) => w.id)).toEqual(['w_r']);
  });

  it.skipIf(skip)('lists by status and by id, and needing attention first (stalled, waiting for an action, failing polls, then failed), pages in that order', async () => {
    const s = open();
    const runs = ['ok', 'stall', 'wait', 'err', 'new', 'fail', 'done'];
    for (const name of runs) await s.create({ kind: 'run', id: `w_${name}`, thread_id: 'thread_1', run_id: `run_${name}` }, 0);
    await s.create({ kind: 'response', id: 'w_resp', response_id: 'resp_find' }, 0);
    await record(s, event('w_ok', 'run_ok', 1, 'in_progress'));
    await record(s, event('w_stall', 'run_stall', 1, 'in_progress'), 'active', { stallReported: true });
    await record(s, event('w_wait', 'run_wait', 1, 'requires_action'));
    await record(s, event('w_err', 'run_err', 1, 'queued'));
    // a failing poll writes no event: SQLite keeps it as a checkpoint, which the attention order must see
    expect(await s.commit('w_err', 1, { progress: progressAt('queued', 1, { consecutiveErrors: 2 }), events: [], state: 'active' })).toBe('ok');
    await record(s, { ...event('w_fail', 'run_fail', 1, 'x'), type: 'watch.error', to: null, error: { code: 'run_not_found', message: 'gone' }, run: null }, 'failed');
    await record(s, event('w_done', 'run_done', 1, 'completed'), 'finished');
    await record(s, responseEvent('w_resp', 'resp_find', 1, 'in_progress'));
    const ids = async (query: Parameters<WatchStore['list']>[0]) => (await s.list(query)).map((w) => w.id);

    expect(await ids({ limit: 20, order: 'attention' })).toEqual(['w_stall', 'w_wait', 'w_err', 'w_fail', 'w_ok', 'w_new', 'w_resp', 'w_done']);
    expect(await ids({ limit: 3, order: 'attention' })).toEqual(['w_stall', 'w_wait', 'w_err']);
    expect(await ids({ limit: 3, order: 'attention', after: 'w_err' })).toEqual(['w_fail', 'w_ok', 'w_new']);
    expect(await ids({ limit: 20, order: 'attention', after: 'w_resp' })).toEqual(['w_done']);
    expect(await ids({ limit: 20, status: 'in_progress' })).toEqual(['w_ok', 'w_stall', 'w_resp']);
    expect(await ids({ limit: 1, status: 'in_progress', after: 'w_ok' })).toEqual(['w_stall']);
    expect(await ids({ limit: 20, status: 'none', state: 'active' })).toEqual(['w_new']);
    expect(await ids({ limit: 20, status: 'completed', state: 'active' })).toEqual([]);
    expect(await ids({ limit: 20, search: 'find' })).toEqual(['w_resp']);
    expect(await ids({ limit: 20, search: 'stall' })).toEqual(['w_stall']);
    expect(await ids({ limit: 20, search: 'thread_1', state: 'finished', order: 'attention' })).toEqual(['w_done']);
    // without the new fields, the list is what it was: creation order
    expect(await ids({ limit: 20 })).toEqual([...runs.map((name) => `w_${name}`), 'w_resp']);
    expect(attentionRank((await s.get('w_err'))!)).toBe(0);
  });

  it.skipIf(skip)('prunes ended watches past the retention, never active ones; a pruned target gets a new watch', async () => {
    const s = open();
    await s.create({ kind: 'run', id: 'w_1', thread_id: 'thread_1', run_id: 'run_1' }, 0);
    await s.create({ kind: 'run', id: 'w_2', thread_id: 'thread_1', run_id: 'run_2' }, 0);
    await record(s, event('w_1', 'run_1', 1, 'completed'), 'finished');
    expect(await s.prune(Date.now() + 10_000, { eventsMs: 1_000_000, watchesMs: 1000 })).toBeGreaterThanOrEqual(1);
    expect(await s.get('w_1')).toBeUndefined();
    expect(await s.get('w_2')).toBeDefined();
    expect(await s.create({ kind: 'run', id: 'w_3', thread_id: 'thread_1', run_id: 'run_1' }, 0)).toMatchObject({ created: true, watch: { id: 'w_3' } });
  });
});

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
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

/** The schema of version 2 (responses, no progress column), as a data dir written by it holds it. */
const SCHEMA_2 = `
CREATE TABLE watches (id TEXT PRIMARY KEY, kind TEXT NOT NULL, target TEXT NOT NULL, thread_id TEXT, run_id TEXT, response_id TEXT, metadata TEXT,
  callback_url TEXT, state TEXT NOT NULL DEFAULT 'active', status TEXT, seq INTEGER NOT NULL DEFAULT 0, last_snapshot TEXT, error TEXT, status_since INTEGER,
  next_poll_at INTEGER, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, finished_at INTEGER, created_order INTEGER NOT NULL, handled_calls TEXT,
  cancel_requested INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX watches_target ON watches (target);
CREATE INDEX watches_state ON watches (state, created_order);
CREATE TABLE events (pos INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, watch_id TEXT NOT NULL, thread_id TEXT NOT NULL, run_id TEXT NOT NULL,
  payload TEXT NOT NULL, created_at INTEGER NOT NULL, response_id TEXT);
CREATE TABLE deliveries (sink TEXT NOT NULL, pos INTEGER NOT NULL, state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_at INTEGER NOT NULL DEFAULT 0, first_attempt_at INTEGER, last_error TEXT, updated_at INTEGER NOT NULL, PRIMARY KEY (sink, pos)) WITHOUT ROWID;
PRAGMA user_version = 2;
`;

const tempFile = (): string => path.join(mkdtempSync(path.join(tmpdir(), 'runwatch-store-')), 'runwatch.db');

describe('RedisStore', () => {
  it.skipIf(!redisAvailable)('ranks a watch written before `stuck` was kept by its progress', async () => {
    const redis = new Redis(REDIS_URL);
    redisClients.push(redis);
    const prefix = testPrefix();
    prefixes.push(prefix);
    const s = new RedisStore(redis, prefix, 4);
    for (const name of ['a', 'b']) await s.create({ kind: 'run', id: `w_${name}`, thread_id: 'thread_1', run_id: `run_${name}` }, 0);
    await record(s, event('w_a', 'run_a', 1, 'in_progress'));
    await record(s, event('w_b', 'run_b', 1, 'in_progress'), 'active', { stallReported: true });
    expect((await s.list({ limit: 10, order: 'attention' })).map((w) => w.id)).toEqual(['w_b', 'w_a']);
    await redis.hdel(s.keys.watch('w_b'), 'stuck');
    const listed = await s.list({ limit: 10, order: 'attention' });
    expect(listed.map((w) => w.id)).toEqual(['w_b', 'w_a']);
    // the page's watches are read whole
    expect(listed[0]).toMatchObject({ progress: { status: 'in_progress', stallReported: true, lastSnapshot: { status: 'in_progress' } } });
  });
});

describe('SqliteStore', () => {
  it('writes an event, its watch and one delivery per sink in one step (and one for the callback)', async () => {
    const s = new SqliteStore(':memory:', { sinks: ['stdout', 'webhook'] });
    await s.create({ kind: 'run', id: 'w_1', thread_id: 'thread_1', run_id: 'run_1', callback_url: 'https://hooks/x' }, 0);
    await record(s, event('w_1', 'run_1', 1, 'in_progress'));
    expect(await s.sinkStats()).toEqual([
      { sink: 'callback', pending: 1, dead: 0 },
      { sink: 'stdout', pending: 1, dead: 0 },
      { sink: 'webhook', pending: 1, dead: 0 },
    ]);
    expect((await s.pendingDeliveries('callback', 10))[0]).toMatchObject({ event_id: 'w_1.1', callback_url: 'https://hooks/x' });
    await record(s, event('w_1', 'run_1', 2, 'completed', 'in_progress'), 'finished');
    expect(await s.get('w_1')).toMatchObject({ state: 'finished', progress: { status: 'completed' } });
    expect(await collect(s.active())).toEqual([]);
  });

  it('prunes delivered events past retention, never pending ones', async () => {
    const s = new SqliteStore(':memory:', { sinks: ['stdout'] });
    await s.create({ kind: 'run', id: 'w_1', thread_id: 'thread_1', run_id: 'run_1' }, 0);
    await record(s, event('w_1', 'run_1', 1, 'queued'));
    await record(s, event('w_1', 'run_1', 2, 'completed', 'queued'), 'finished');
    const [first] = await s.pendingDeliveries('stdout', 10);
    await s.markDelivered('stdout', first!.pos, 1);
    // one delivered event and the ended watch; the pending event stays
    expect(await s.prune(Date.now() + 10_000, { eventsMs: 1000, watchesMs: 1000 })).toBe(2);
    expect((await s.eventsAfter(0, {}, 10)).map((e) => e.event_id)).toEqual(['w_1.2']);
    expect(await s.get('w_1')).toBeUndefined();
  });

  it('keeps a step without events in memory and writes it in the next batch, at the latest when closed', async () => {
    const file = tempFile();
    const a = new SqliteStore(file);
    await a.create({ kind: 'run', id: 'w_1', thread_id: 'thread_1', run_id: 'run_1' }, 0);
    await record(a, event('w_1', 'run_1', 1, 'queued'));
    const checkpoint = progressAt('queued', 1, { unchangedPolls: 7, next: { kind: 'poll', atMs: 123_456 } });
    expect(await a.commit('w_1', 1, { progress: checkpoint, events: [], state: 'active' })).toBe('ok');
    // read back at once, before it is written
    expect(await a.get('w_1')).toMatchObject({ progress: { unchangedPolls: 7 } });
    await a.close();
    const b = new SqliteStore(file);
    expect(await b.get('w_1')).toMatchObject({ progress: { status: 'queued', seq: 1, unchangedPolls: 7, next: { kind: 'poll', atMs: 123_456 } } });
    expect((await b.pendingDeliveries('stdout', 10)).length).toBe(0);
    await b.close();
  });

  it('migrates a data dir of the run-only schema in place: watches, positions and pending deliveries kept', async () => {
    const file = tempFile();
    const old = new DatabaseSync(file);
    old.exec(SCHEMA_0);
    old.exec(`INSERT INTO watches (id, thread_id, run_id, state, status, seq, created_at, updated_at, created_order) VALUES ('w_old', 'thread_1', 'run_1', 'active', 'queued', 7, 1, 1, 1)`);
    old.exec(`INSERT INTO events (pos, event_id, watch_id, thread_id, run_id, payload, created_at) VALUES (41, 'w_old.7', 'w_old', 'thread_1', 'run_1', '{}', 1)`);
    old.exec(`INSERT INTO deliveries (sink, pos, updated_at) VALUES ('stdout', 41, 1)`);
    // the newest event was pruned: its position must never be handed out again
    old.exec(`INSERT INTO events (pos, event_id, watch_id, thread_id, run_id, payload, created_at) VALUES (42, 'w_old.8', 'w_old', 'thread_1', 'run_1', '{}', 1); DELETE FROM events WHERE pos = 42`);
    old.close();
    const s = new SqliteStore(file);
    expect(await collect(s.active())).toMatchObject([{ kind: 'run', id: 'w_old', thread_id: 'thread_1', run_id: 'run_1', progress: { status: 'queued', seq: 7 } }]);
    expect(await s.create({ kind: 'run', id: 'w_new', thread_id: 'thread_1', run_id: 'run_1' }, 2)).toMatchObject({ created: false, watch: { id: 'w_old' } });
    expect((await s.pendingDeliveries('stdout', 10)).map((d) => d.pos)).toEqual([41]);
    await s.create({ kind: 'response', id: 'w_r', response_id: 'resp_1' }, 2);
    await record(s, responseEvent('w_r', 'resp_1', 1, 'queued'));
    expect((await s.eventsAfter(41, {}, 10)).map((e) => e.pos)).toEqual([43]);
    await s.close();
    // opening again is a no-op
    const again = new SqliteStore(file);
    expect((await again.list({ limit: 10 })).map((w) => w.id)).toEqual(['w_old', 'w_r']);
    await again.close();
  });

  it('migrates a data dir of version 2: a watch resumes from its older columns, and what it did is not done again', async () => {
    const file = tempFile();
    const old = new DatabaseSync(file);
    old.exec(SCHEMA_2);
    old.exec(`INSERT INTO watches (id, kind, target, thread_id, run_id, state, status, seq, last_snapshot, status_since, created_at, updated_at, created_order, handled_calls, cancel_requested)
      VALUES ('w_2', 'run', 'thread_1' || char(10) || 'run_1', 'thread_1', 'run_1', 'active', 'requires_action', 4, '{"id":"run_1","status":"requires_action"}', 500, 1, 1, 1, 'call_1', 1)`);
    old.close();
    const s = new SqliteStore(file);
    expect(await s.get('w_2')).toMatchObject({ progress: { status: 'requires_action', seq: 4, statusSinceMs: 500, lastSnapshot: { id: 'run_1' }, handledCalls: 'call_1', cancelRequested: true } });
    // the next step writes the progress record; the older columns are not read again
    await record(s, event('w_2', 'run_1', 5, 'in_progress', 'requires_action'), 'active', { handledCalls: 'call_1', cancelRequested: true });
    await s.close();
    const again = new SqliteStore(file);
    expect(await again.get('w_2')).toMatchObject({ progress: { status: 'in_progress', seq: 5, handledCalls: 'call_1', cancelRequested: true } });
    await again.close();
  });

  it('refuses a data dir written by a newer schema, naming the way out', () => {
    const file = tempFile();
    const newer = new DatabaseSync(file);
    newer.exec('PRAGMA user_version = 99');
    newer.close();
    expect(() => new SqliteStore(file)).toThrow(/newer runwatch \(schema 99.*empty data dir/);
  });

  it('cannot open a data dir that is a file: StoreOpenError', () => {
    const file = tempFile();
    new DatabaseSync(file).close();
    expect(() => new SqliteStore(path.join(file, 'runwatch.db'))).toThrow(expect.objectContaining({ code: 'store_open_failed' }) as Error);
  });

  it('survives a reopen of the same file', async () => {
    const file = path.join(mkdtempSync(path.join(tmpdir(), 'runwatch-store-')), 'sub', 'runwatch.db');
    const a = new SqliteStore(file, { sinks: ['stdout'] });
    await a.create({ kind: 'run', id: 'w_1', thread_id: 'thread_1', run_id: 'run_1' }, 0);
    await record(a, event('w_1', 'run_1', 1, 'queued'));
    await a.close();
    const b = new SqliteStore(file);
    expect(await collect(b.active())).toMatchObject([{ id: 'w_1', progress: { status: 'queued', seq: 1 } }]);
    expect(await b.pendingDeliveries('stdout', 10)).toHaveLength(1);
    expect(b.healthy()).toBe(true);
    await b.close();
    expect(b.healthy()).toBe(false);
  });
});

describe.skipIf(!redisAvailable)('RedisStore', () => {
  function open(prefix: string): RedisStore {
    const redis = new Redis(REDIS_URL);
    redisClients.push(redis);
    return new RedisStore(redis, prefix, 4);
  }

  it('keeps a step without events in memory and writes it with flushCheckpoints, only where no newer step was written; a server floor is written at once', async () => {
    const prefix = testPrefix();
    prefixes.push(prefix);
    const a = open(prefix);
    const other = open(prefix);
    for (const id of ['w_1', 'w_2', 'w_3']) await a.create({ kind: 'run', id, thread_id: 'thread_1', run_id: `run_${id}` }, 0);
    for (const id of ['w_1', 'w_2', 'w_3']) await record(a, event(id, `run_${id}`, 1, 'queued'));
    const checkpoint = progressAt('queued', 1, { unchangedPolls: 7, next: { kind: 'poll', atMs: 123_456 } });
    for (const id of ['w_1', 'w_2']) expect(await a.commit(id, 1, { progress: checkpoint, events: [], state: 'active' })).toBe('ok');
    expect(a.pendingCheckpoints).toBe(2);
    // this process reads its checkpoint back at once; Redis (another replica) does not have it yet
    expect(await a.get('w_1')).toMatchObject({ progress: { unchangedPolls: 7 } });
    expect(await other.get('w_1')).toMatchObject({ progress: { unchangedPolls: 0 } });
    // another writer moved w_2 on meanwhile: its checkpoint is refused at the flush
    await record(other, event('w_2', 'run_w_2', 2, 'cancelling', 'queued'));
    expect(await a.get('w_2')).toMatchObject({ progress: { status: 'cancelling', seq: 2 } });
    expect(await a.flushCheckpoints()).toBe(2);
    expect(a.pendingCheckpoints).toBe(0);
    expect(await other.get('w_1')).toMatchObject({ progress: { status: 'queued', seq: 1, unchangedPolls: 7, next: { kind: 'poll', atMs: 123_456 } } });
    expect(await other.get('w_2')).toMatchObject({ progress: { status: 'cancelling', seq: 2, unchangedPolls: 0 } });
    // a server's retry-after must survive a crash: written at once
    const floor = progressAt('queued', 1, { notBeforeMs: Date.now() + 60_000 });
    expect(await a.commit('w_3', 1, { progress: floor, events: [], state: 'active' })).toBe('ok');
    expect(a.pendingCheckpoints).toBe(0);
    expect(await other.get('w_3')).toMatchObject({ progress: { notBeforeMs: floor.notBeforeMs } });
    // checkpoints of watches let go are forgotten, not written
    expect(await a.commit('w_1', 1, { progress: { ...checkpoint, unchangedPolls: 9 }, events: [], state: 'active' })).toBe('ok');
    a.dropCheckpoints((id) => id === 'w_1');
    await a.close();
    expect(await other.get('w_1')).toMatchObject({ progress: { unchangedPolls: 7 } });
  });

  it('keeps a set of active watches per watch partition, and moves the one set of earlier versions into them', async () => {
    const prefix = testPrefix();
    prefixes.push(prefix);
    const s = open(prefix);
    const redis = new Redis(REDIS_URL);
    redisClients.push(redis);
    const ids = Array.from({ length: 12 }, (_, i) => `w_p${i}`);
    for (const id of ids) await s.create({ kind: 'run', id, thread_id: 'thread_1', run_id: `run_${id}` }, 0);
    for (let p = 0; p < 4; p++) expect((await s.activeIdsIn(p)).sort()).toEqual(ids.filter((id) => s.partitionOfWatch(id) === p).sort());
    await record(s, event('w_p0', 'run_w_p0', 1, 'completed'), 'finished');
    expect((await collect(s.active())).map((w) => w.id).sort()).toEqual(ids.slice(1).sort());
    // an earlier version's layout: one set for every active watch, and a BullMQ queue
    const moved = ids.slice(1, 4);
    for (const id of moved) await redis.srem(s.keys.activeIn(s.partitionOfWatch(id)), id);
    await redis.sadd(s.keys.active, ...moved);
    await redis.set(`${s.keys.bullPrefix}:polls:id`, '3');
    await s.migrate();
    expect((await collect(s.active())).map((w) => w.id).sort()).toEqual(ids.slice(1).sort());
    expect(await redis.exists(s.keys.active, `${s.keys.bullPrefix}:polls:id`)).toBe(0);
  });
});

describe('OutboxWorker', () => {
  const store = (): SqliteStore => new SqliteStore(':memory:', { sinks: ['test'] });
  const options = { retryForMs: 60_000, backoff: { baseMs: 20, capMs: 40 }, logger: pino({ level: 'silent' }) };

  it('holds back a failing run only, and delivers its events in order once the sink recovers', async () => {
    const s = store();
    for (const run of ['a', 'b']) await s.create({ kind: 'run', id: `w_${run}`, thread_id: 'thread_1', run_id: `run_${run}` }, 0);
    for (let seq = 1; seq <= 3; seq++) {
      await record(s, event('w_a', 'run_a', seq, `s${seq}`));
      await record(s, event('w_b', 'run_b', seq, `s${seq}`));
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
    expect(await s.sinkStats()).toEqual([{ sink: 'test', pending: 0, dead: 0 }]);
  });

  it('dead-letters a permanent failure at once and one that outlives retryForMs, then goes on', async () => {
    const s = store();
    await s.create({ kind: 'run', id: 'w_a', thread_id: 'thread_1', run_id: 'run_a' }, 0);
    for (let seq = 1; seq <= 3; seq++) await record(s, event('w_a', 'run_a', seq, `s${seq}`));
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
    expect(await s.sinkStats()).toEqual([{ sink: 'test', pending: 0, dead: 2 }]);
  });

  it('stops within the flush timeout even when the sink hangs, leaving the event pending', async () => {
    const s = store();
    await s.create({ kind: 'run', id: 'w_a', thread_id: 'thread_1', run_id: 'run_a' }, 0);
    await record(s, event('w_a', 'run_a', 1, 's1'));
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
    expect(await s.sinkStats()).toEqual([{ sink: 'test', pending: 1, dead: 0 }]);
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
