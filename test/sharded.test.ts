import { EventEmitter } from 'eventemitter3';
import { describe, expect, it } from 'vitest';
import type { Engine, EngineEvents } from '../src/daemon/engine.js';
import { ShardedEngine, ShardedOutbox } from '../src/daemon/shards.js';
import { cursorAfter } from '../src/daemon-client.js';
import type { Outbox } from '../src/daemon/outbox.js';
import type { RunTransitionEvent } from '../src/events.js';
import { RUN_KIND } from '../src/resource.js';
import type { ResourceKind, Snapshot } from '../src/resource.js';
import type { Sink } from '../src/sinks/sink.js';
import { initialProgress } from '../src/step.js';
import { MemoryStore } from '../src/store/memory.js';
import { fleetBudgetKey, RedisKeys, shardPrefix } from '../src/store/redis-keys.js';
import { partitionOf } from '../src/store/redis.js';
import { formatLogCursor, parseLogCursor, shardOf, ShardedStore } from '../src/store/sharded.js';
import type { NewWatch, WatchQuery, WatchRecord, WatchStore } from '../src/store/store.js';
import { targetKey } from '../src/store/store.js';

/** A memory store that counts the reads by id it answers. */
class CountingStore extends MemoryStore {
  gets = 0;
  override get(id: string): Promise<WatchRecord | undefined> {
    this.gets += 1;
    return super.get(id);
  }
}

function shards(n: number): ShardedStore<CountingStore> {
  return new ShardedStore(Array.from({ length: n }, () => new CountingStore()));
}

function transition(watchId: string, runId: string, seq: number, to: string, atMs: number): RunTransitionEvent {
  return { id: `${watchId}.${seq}`, type: `run.${to}`, seq, watch_id: watchId, thread_id: 'thread_1', run_id: runId, from: null, to, observed_at: new Date(atMs).toISOString(), run: { id: runId, status: to } };
}

function commitEvent(store: WatchStore, e: RunTransitionEvent) {
  const base = initialProgress(RUN_KIND as unknown as ResourceKind<object, Snapshot>, { startedAtMs: 0, timeoutMs: undefined, expiresGraceMs: 0, defaultTimeoutMs: 60_000 }, {}, 0);
  return store.commit(e.watch_id, e.seq - 1, { progress: { ...base, status: e.to, seq: e.seq }, events: [e], state: 'active' });
}

/** An id whose hash is in `shard` (as `ShardedEngine.add` picks them), or one that is not. */
function idIn(shard: number, n: number, tag: string, inShard = true): string {
  for (let i = 0; ; i += 1) if ((shardOf(`w_${tag}${i}`, n) === shard) === inShard) return `w_${tag}${i}`;
}

describe('shard keys', () => {
  it('puts every key of a shard under one hash tag, and the fleet budget under its own', () => {
    const keys = new RedisKeys(shardPrefix('runwatch:', 2), fleetBudgetKey('runwatch:'));
    const tag = (key: string): string | undefined => /\{([^}]*)\}/.exec(key)?.[1];
    const shardKeys = [keys.targets, keys.watches, keys.order, keys.active, keys.statusCounts, keys.position, keys.log, keys.bullPrefix, keys.watchPrefix, keys.watch('w_1'), keys.partition(3), keys.lease('stdout', 3), keys.webhook('h'), keys.dead('stdout'), keys.activeIn(5), keys.owner(5), keys.owners, keys.replicas, keys.notices];
    expect(new Set(shardKeys.map(tag))).toEqual(new Set(['s2']));
    expect(tag(keys.budget)).toBe('fleet');
    // one shard on one Redis: the keys of earlier versions
    expect(new RedisKeys('runwatch:').log).toBe('runwatch:log');
  });
});

describe('shard of a key', () => {
  it('does not decide the watch partition: the watches of one shard spread over every partition', () => {
    // 2 shards and the default 8 partitions share a factor: a shard hash read like partitionOf's would fill every other partition only
    const ids = Array.from({ length: 400 }, (_, i) => `w_spread${i}`).filter((id) => shardOf(id, 2) === 0);
    expect(new Set(ids.map((id) => partitionOf(id, 8))).size).toBe(8);
  });
});

describe('log cursor', () => {
  it('is one position per shard; a plain number with one shard; 0 starts every shard', () => {
    expect(parseLogCursor('12', 1)).toEqual([12]);
    expect(parseLogCursor('12.40.7', 3)).toEqual([12, 40, 7]);
    expect(parseLogCursor('0', 3)).toEqual([0, 0, 0]);
    for (const bad of ['12', '1.2', '1.2.3.4', '-1.2.3', '1..2', 'a.b.c', '', '1.2.3.']) expect(parseLogCursor(bad, 3)).toBeUndefined();
    expect(parseLogCursor('1.2', 1)).toBeUndefined();
    expect(formatLogCursor([12, 40, 7])).toBe('12.40.7');
    expect(formatLogCursor([5])).toBe('5');
  });

  it('tells the tail client which ids it printed already', () => {
    expect(cursorAfter('13', '12')).toBe(true);
    expect(cursorAfter('12', '12')).toBe(false);
    expect(cursorAfter('12.41.7', '12.40.7')).toBe(true);
    expect(cursorAfter('12.40.7', '12.40.7')).toBe(false);
    expect(cursorAfter('11.40.7', '12.40.7')).toBe(false);
    expect(cursorAfter('0.0.1', '0')).toBe(true);
  });
});

describe('ShardedStore', () => {
  it('creates a watch in its target\'s shard, once per target', async () => {
    const store = shards(3);
    const target = { kind: 'run', thread_id: 'thread_1', run_id: 'run_1' } as const;
    const home = shardOf(targetKey(target), 3);
    const first = await store.create({ ...target, id: 'w_1' }, 1);
    const again = await store.create({ ...target, id: 'w_2' }, 2);
    expect(first.created).toBe(true);
    expect(again).toMatchObject({ created: false, watch: { id: 'w_1' } });
    for (const [i, shard] of store.shards.entries()) expect((await shard.get('w_1')) !== undefined).toBe(i === home);
  });

  it('reads an id from its hash\'s shard alone, and finds an id that hashes elsewhere in the others', async () => {
    const store = shards(3);
    const target = { kind: 'run', thread_id: 'thread_1', run_id: 'run_routed' } as const;
    const home = store.shardOfTarget(target);
    const routed = idIn(home, 3, 'r');
    await store.create({ ...target, id: routed }, 1);
    for (const shard of store.shards) shard.gets = 0;
    expect(await store.get(routed)).toMatchObject({ id: routed });
    expect(store.shards.map((s) => s.gets)).toEqual([0, 1, 2].map((i) => (i === home ? 1 : 0)));
    // an id that does not hash to its target's shard: read everywhere, found, committed
    const other = { kind: 'run', thread_id: 'thread_1', run_id: 'run_foreign' } as const;
    const foreign = idIn(store.shardOfTarget(other), 3, 'f', false);
    await store.create({ ...other, id: foreign }, 2);
    expect(await store.get(foreign)).toMatchObject({ id: foreign, run_id: 'run_foreign' });
    expect(await commitEvent(store, transition(foreign, 'run_foreign', 1, 'queued', 3))).toBe('ok');
    expect(await store.loadProgress(foreign)).toMatchObject({ status: 'queued', seq: 1 });
    expect(await commitEvent(store, transition(foreign, 'run_foreign', 1, 'queued', 3))).toBe('stale');
    expect(await commitEvent(store, transition('w_nowhere', 'run_x', 1, 'queued', 3))).toBe('missing');
    expect(await store.get('w_nowhere')).toBeUndefined();
  });

  it('lists every shard by creation time, pages with the last id, and filters by state', async () => {
    const store = shards(3);
    const created: string[] = [];
    for (let i = 0; i < 20; i += 1) {
      const added = await store.create({ kind: 'run', id: `w_${String(i).padStart(2, '0')}`, thread_id: 'thread_1', run_id: `run_${i}` }, 1_000 + i);
      created.push(added.watch.id);
    }
    // the watches are spread over every shard
    expect(new Set(Array.from({ length: 20 }, (_, i) => store.shardOfTarget({ kind: 'run', thread_id: 'thread_1', run_id: `run_${i}` }))).size).toBe(3);
    const pages: string[][] = [];
    let after: string | undefined;
    for (;;) {
      const page = (await store.list({ limit: 6, after })).map((w) => w.id);
      if (page.length === 0) break;
      pages.push(page);
      after = page.at(-1);
    }
    expect(pages.flat()).toEqual(created);
    expect(pages.map((p) => p.length)).toEqual([6, 6, 6, 2]);
    await commitEvent(store, transition('w_03', 'run_3', 1, 'queued', 0));
    await store.commit('w_03', 1, { progress: { ...(await store.loadProgress('w_03'))!, seq: 2 }, events: [], state: 'finished' });
    expect((await store.list({ state: 'finished', limit: 10 })).map((w) => w.id)).toEqual(['w_03']);
    expect((await store.list({ state: 'active', limit: 3, after: 'w_02' })).map((w) => w.id)).toEqual(['w_04', 'w_05', 'w_06']);
  });

  it('filters by status and id and orders by attention as one store holding the same watches does, page after page', async () => {
    const sharded = shards(3);
    const single = new MemoryStore();
    for (const store of [sharded, single] as WatchStore[]) {
      for (let i = 0; i < 18; i += 1) await store.create({ kind: 'run', id: `w_${String(i).padStart(2, '0')}`, thread_id: 'thread_1', run_id: `run_${i}` }, 1_000 + i);
      for (let i = 0; i < 18; i += 3) await commitEvent(store, transition(`w_${String(i).padStart(2, '0')}`, `run_${i}`, 1, i % 2 === 0 ? 'requires_action' : 'queued', 0));
      await store.commit('w_04', 0, { progress: { ...(await store.loadProgress('w_00'))!, seq: 1 }, events: [], state: 'failed' });
    }
    const pages = async (store: WatchStore, query: Omit<WatchQuery, 'limit' | 'after'>): Promise<string[]> => {
      const ids: string[] = [];
      for (let page = await store.list({ ...query, limit: 4 }); page.length > 0; page = await store.list({ ...query, limit: 4, after: ids.at(-1) })) ids.push(...page.map((w) => w.id));
      return ids;
    };
    for (const query of [{ status: 'queued' }, { status: 'none' }, { search: 'run_1' }, { order: 'attention' as const }, { order: 'attention' as const, state: 'active' as const }]) {
      const expected = await pages(single, query);
      expect(expected.length, JSON.stringify(query)).toBeGreaterThan(0);
      expect(await pages(sharded, query), JSON.stringify(query)).toEqual(expected);
    }
  });

  it('pages every watch exactly once when a shard stored a later creation time before an earlier one (two replicas at once)', async () => {
    const store = shards(3);
    const times = [50, 10, 40, 20, 30, 5, 60, 15, 45, 25, 35, 55, 1, 65, 12];
    for (const [i, atMs] of times.entries()) await store.create({ kind: 'run', id: `w_${i}`, thread_id: 'thread_1', run_id: `run_t${i}` }, atMs);
    for (const limit of [1, 2, 4, 7]) {
      const seen: string[] = [];
      let after: string | undefined;
      for (let page = await store.list({ limit }); page.length > 0; page = await store.list({ limit, after })) {
        seen.push(...page.map((w) => w.id));
        after = page.at(-1)!.id;
      }
      expect(seen.sort(), `limit ${limit}`).toEqual(times.map((_, i) => `w_${i}`).sort());
    }
  });

  it('merges the shards\' logs by commit time, each shard\'s order kept, and resumes from a cursor without a gap or a repeat', async () => {
    const store = shards(3);
    const ids: string[] = [];
    for (let i = 0; i < 9; i += 1) ids.push((await store.create({ kind: 'run', id: `w_${i}`, thread_id: 'thread_1', run_id: `run_${i}` }, i)).watch.id);
    // three rounds of one event per watch; times interleave the shards
    for (let seq = 1; seq <= 3; seq += 1) for (const [i, id] of ids.entries()) expect(await commitEvent(store, transition(id, `run_${i}`, seq, `s${seq}`, seq * 100 + i))).toBe('ok');
    const all = await store.eventsAfterCursor([0, 0, 0], {}, 100);
    expect(all.map((e) => e.event_id)).toEqual([1, 2, 3].flatMap((seq) => ids.map((id) => `${id}.${seq}`)));
    const read: string[] = [];
    let cursor = [0, 0, 0] as readonly number[];
    for (let batch = await store.eventsAfterCursor(cursor, {}, 4); batch.length > 0; batch = await store.eventsAfterCursor(cursor, {}, 4)) {
      read.push(...batch.map((e) => e.event_id));
      cursor = parseLogCursor(formatLogCursor(batch.at(-1)!.cursor), 3)!;
    }
    expect(read).toEqual(all.map((e) => e.event_id));
    expect(cursor).toEqual(await store.lastPositions());
    expect((await store.eventsAfterCursor([0, 0, 0], { run_id: 'run_4' }, 10)).map((e) => e.event_id)).toEqual(['w_4.1', 'w_4.2', 'w_4.3']);
    expect(await store.lastPosition()).toBe(27);
  });
});

/** An engine that records what it is asked, over one shard. */
class StubEngine extends EventEmitter<EngineEvents> implements Engine {
  readonly calls: string[] = [];
  constructor(readonly store: WatchStore) {
    super();
  }
  start(): Promise<number> {
    this.calls.push('start');
    return Promise.resolve(2);
  }
  add(input: NewWatch): Promise<{ watch: WatchRecord; created: boolean }> {
    this.calls.push(`add ${input.id}`);
    return this.store.create(input, Date.now());
  }
  async delete(id: string): Promise<WatchRecord | undefined> {
    this.calls.push(`delete ${id}`);
    return this.store.get(id);
  }
  async cancel(id: string): Promise<WatchRecord | undefined> {
    this.calls.push(`cancel ${id}`);
    return this.store.get(id);
  }
  activeByStatus(): Promise<ReadonlyMap<string, number>> {
    return Promise.resolve(new Map([['queued', 1]]));
  }
  budget() {
    return { ratePerSecond: 10, inFlight: 1, queued: 2 };
  }
  watchesByReplica(): Promise<ReadonlyMap<string, number>> {
    return Promise.resolve(new Map([['replica-a', 2]]));
  }
  wakeResponse(responseId: string): Promise<boolean> {
    this.calls.push(`wake ${responseId}`);
    return Promise.resolve(true);
  }
  openStreams(): number {
    return 0;
  }
  close(): Promise<void> {
    this.calls.push('close');
    return Promise.resolve();
  }
}

describe('ShardedEngine', () => {
  it('starts the served shards only, routes every request to the engine of the watch\'s shard, and speaks for all', async () => {
    const store = shards(3);
    const engines = store.shards.map((s) => new StubEngine(s));
    const engine = new ShardedEngine(store, engines, { serve: [0, 2] });
    expect(await engine.start()).toBe(4);
    expect(engines.map((e) => e.calls)).toEqual([['start'], [], ['start']]);
    const target = { kind: 'run', thread_id: 'thread_1', run_id: 'run_e' } as const;
    const home = store.shardOfTarget(target);
    // a given id that hashes elsewhere is replaced by one of the target's shard
    const { watch } = await engine.add({ ...target, id: idIn(home, 3, 'x', false) });
    expect(store.shardOfId(watch.id)).toBe(home);
    await engine.delete(watch.id);
    await engine.cancel(watch.id);
    expect(await engine.delete('w_unknown')).toBeUndefined();
    const response = store.shardOfTarget({ kind: 'response', response_id: 'resp_1' });
    await engine.wakeResponse('resp_1');
    expect(engines[home]!.calls.filter((c) => !c.startsWith('start') && !c.startsWith('wake'))).toEqual([`add ${watch.id}`, `delete ${watch.id}`, `cancel ${watch.id}`]);
    expect(engines.flatMap((e) => e.calls).filter((c) => /^(add|delete|cancel) /.test(c))).toHaveLength(3);
    expect(engines[response]!.calls.at(-1)).toBe('wake resp_1');
    expect(await engine.activeByStatus()).toEqual(new Map([['queued', 3]]));
    expect(engine.budget()).toEqual({ ratePerSecond: 10, inFlight: 3, queued: 6 });
    expect(await engine.watchesByReplica!()).toEqual(new Map([['replica-a', 6]]));
    const seen: string[] = [];
    engine.on('activity', () => seen.push('activity'));
    engine.on('error', (error) => seen.push(error.message));
    engines[1]!.emit('activity');
    engines[2]!.emit('error', new Error('boom'));
    expect(seen).toEqual(['activity', 'boom']);
    await engine.close(10);
    expect(engines.map((e) => e.calls.at(-1))).toEqual(['close', 'close', 'close']);
  });

  it('wakes streams when a shard it does not poll commits an event', async () => {
    const store = shards(2);
    const engine = new ShardedEngine(store, store.shards.map((s) => new StubEngine(s)), { serve: [0], logWatchMs: 5 });
    await engine.start();
    const target = { kind: 'run', thread_id: 'thread_1', run_id: 'run_w' } as const;
    let runId = 'run_w';
    for (let i = 0; store.shardOfTarget({ ...target, run_id: runId }) !== 1; i += 1) runId = `run_w${i}`;
    const { watch } = await store.create({ ...target, run_id: runId, id: 'w_other' }, 0);
    const woken = new Promise<void>((resolve) => engine.once('activity', () => resolve()));
    await commitEvent(store, transition(watch.id, runId, 1, 'queued', 0));
    await woken;
    await engine.close(10);
  });
});

describe('ShardedOutbox', () => {
  it('starts, wakes and stops every shard\'s outbox and counts them as one', async () => {
    const calls: string[] = [];
    const sink: Sink = { name: 'stdout', deliver: () => Promise.resolve() };
    const part = (n: number): Outbox => ({
      sink,
      start: () => void calls.push(`start ${n}`),
      notify: () => void calls.push(`notify ${n}`),
      stop: () => Promise.resolve(void calls.push(`stop ${n}`)),
      stats: () => Promise.resolve({ pending: n, dead: 1 }),
    });
    const outbox = new ShardedOutbox(sink, [part(1), part(2)]);
    outbox.start();
    outbox.notify();
    await outbox.stop(10);
    expect(calls).toEqual(['start 1', 'start 2', 'notify 1', 'notify 2', 'stop 1', 'stop 2']);
    expect(await outbox.stats()).toEqual({ pending: 3, dead: 2 });
  });
});
