import { createHash } from 'node:crypto';
import type { Progress } from '../step.js';
import type { CommitResult, EventFilter, NewWatch, Retention, StoredEvent, WatchChange, WatchQuery, WatchRecord, WatchStore, WatchTarget } from './store.js';
import { matchesQuery, needsScan, pageOf, targetKey } from './store.js';

/**
 * The shard of a key (a target key or a watch id): the same in every process and version. It
 * reads other bytes of the digest than `partitionOf` does: with the same ones, the watches of
 * one shard of 2 would all fall in every other watch (and outbox) partition of it.
 */
export function shardOf(key: string, shards: number): number {
  return shards === 1 ? 0 : createHash('sha1').update(key).digest().readUInt32BE(4) % shards;
}

/** A log event of a sharded store: its shard and the log cursor just after it (one position per shard). */
export interface ShardedEvent extends StoredEvent {
  readonly shard: number;
  readonly cursor: readonly number[];
}

const CURSOR_PATTERN = /^\d{1,15}(\.\d{1,15}){0,63}$/;

/**
 * Parses an SSE cursor (`Last-Event-ID`) of a log of `shards` shards: one position per shard,
 * dot-separated (`12.40.7`); with one shard a plain number, as before shards. `0` is the start
 * of every log whatever the number of shards. `undefined` when it is not one of these.
 */
export function parseLogCursor(raw: string, shards: number): number[] | undefined {
  if (!CURSOR_PATTERN.test(raw)) return undefined;
  const positions = raw.split('.').map(Number);
  if (positions.length === 1 && positions[0] === 0) return new Array<number>(shards).fill(0);
  return positions.length === shards ? positions : undefined;
}

/** The SSE id of a log cursor: `12.40.7`; with one shard the plain position. */
export function formatLogCursor(cursor: readonly number[]): string {
  return cursor.join('.');
}

/** When an event was committed, as ordered across shards: its `observed_at` (ISO, so it sorts as text). */
function observedAt(event: StoredEvent): string {
  return /"observed_at":"([^"]*)"/.exec(event.payload)?.[1] ?? '';
}

/** Takes from several ordered lists, in each list's own order, the head that `before` puts first; up to `limit` items. */
function mergeHeads<T>(lists: readonly (readonly T[])[], limit: number, before: (a: T, ai: number, b: T, bi: number) => boolean, take: (item: T, list: number) => void): void {
  const heads = lists.map(() => 0);
  for (let taken = 0; taken < limit; taken += 1) {
    let best = -1;
    for (let i = 0; i < lists.length; i += 1) {
      const item = lists[i]![heads[i]!];
      if (item !== undefined && (best === -1 || before(item, i, lists[best]![heads[best]!]!, best))) best = i;
    }
    if (best === -1) return;
    take(lists[best]![heads[best]!]!, best);
    heads[best]! += 1;
  }
}

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

/** A watch's place in the merged list: the latest creation time up to it in its shard, its shard, its index there. */
type ListKey = readonly [maxCreatedAtMs: number, shard: number, index: number];

function compareKeys(a: ListKey, b: ListKey): number {
  return a[0] - b[0] || a[1] - b[1] || a[2] - b[2];
}

/**
 * One store over several shard stores (a Redis-mode keyspace each, see `shardPrefix`): a watch
 * lives in the shard its target hashes to (`shardOf(targetKey)`), so creating the same run twice
 * finds one watch. Reads and commits by id go to `shardOf(id)` first: the daemon gives a new
 * watch an id that hashes to its target's shard (`ShardedEngine.add`); an id that does not (one
 * given by another caller) is looked for in every shard. The log is one per shard, read with a
 * cursor of one position per shard (`eventsAfterCursor`).
 */
export class ShardedStore<S extends WatchStore = WatchStore> implements WatchStore {
  readonly shards: readonly S[];

  constructor(shards: readonly S[]) {
    if (shards.length === 0) throw new RangeError('a sharded store needs at least one shard');
    this.shards = shards;
  }

  /** The shard a target's watch lives in. */
  shardOfTarget(target: WatchTarget): number {
    return shardOf(targetKey(target), this.shards.length);
  }

  /** The shard an id is looked for in first. */
  shardOfId(id: string): number {
    return shardOf(id, this.shards.length);
  }

  /** The shard holding a watch and what `read` found there: the id's shard first, then the others at once; `undefined` when none has it. */
  async locate<T>(id: string, read: (store: S) => Promise<T | undefined>): Promise<{ readonly shard: number; readonly value: T } | undefined> {
    const home = this.shardOfId(id);
    const value = await read(this.shards[home]!);
    if (value !== undefined) return { shard: home, value };
    const others = this.shards.map((_, i) => i).filter((i) => i !== home);
    const found = await Promise.all(others.map(async (i) => ({ shard: i, value: await read(this.shards[i]!) })));
    for (const f of found) if (f.value !== undefined) return { shard: f.shard, value: f.value };
    return undefined;
  }

  create(input: NewWatch, nowMs: number): Promise<{ watch: WatchRecord; created: boolean }> {
    return this.shards[this.shardOfTarget(input)]!.create(input, nowMs);
  }

  async get(id: string): Promise<WatchRecord | undefined> {
    return (await this.locate(id, (s) => s.get(id)))?.value;
  }

  async loadProgress(id: string): Promise<Progress | undefined> {
    return (await this.locate(id, (s) => s.loadProgress(id)))?.value;
  }

  async commit(watchId: string, expectedSeq: number, change: WatchChange): Promise<CommitResult> {
    const home = this.shardOfId(watchId);
    const result = await this.shards[home]!.commit(watchId, expectedSeq, change);
    if (result !== 'missing') return result;
    // an id that does not hash to its shard: the shard holding it answers, the others say missing
    for (const [i, store] of this.shards.entries()) {
      if (i === home) continue;
      const other = await store.commit(watchId, expectedSeq, change);
      if (other !== 'missing') return other;
    }
    return 'missing';
  }

  /**
   * Watches of every shard merged by creation time, each shard's own order kept; `after` (a
   * watch id) resumes after that watch. Two replicas creating in one shard at the same moment
   * can store a later time before an earlier one, so a shard is ordered by the running maximum
   * of its creation times (never decreasing), which keeps every page boundary exact. Pages after
   * the first read each shard from its start (the stores index creation order, not time); a
   * status, a search or the attention order reads every shard whole, as one Redis store does.
   */
  async list(query: WatchQuery): Promise<WatchRecord[]> {
    if (this.shards.length === 1) return this.shards[0]!.list(query);
    if (needsScan(query)) {
      const all = await Promise.all(this.shards.map(async (_, shard) => collect(this.#ordered(shard))));
      return pageOf(all.flat().sort((a, b) => compareKeys(a.key, b.key)).map((entry) => entry.watch), query);
    }
    let bound: ListKey | undefined;
    if (query.after !== undefined) {
      const after = query.after;
      const found = await this.locate(after, (s) => s.get(after));
      if (found) {
        for await (const entry of this.#ordered(found.shard)) {
          if (entry.watch.id !== after) continue;
          bound = entry.key;
          break;
        }
      }
    }
    const lists = await Promise.all(
      this.shards.map(async (_, shard) => {
        const out: Array<{ watch: WatchRecord; key: ListKey }> = [];
        for await (const entry of this.#ordered(shard)) {
          if (out.length === query.limit) break;
          if ((!bound || compareKeys(bound, entry.key) < 0) && matchesQuery(entry.watch, query)) out.push(entry);
        }
        return out;
      }),
    );
    const out: WatchRecord[] = [];
    mergeHeads(lists, query.limit, (a, _ai, b) => compareKeys(a.key, b.key) < 0, (entry) => out.push(entry.watch));
    return out;
  }

  /** A shard's watches in its creation order, each with its place in the merged order. */
  async *#ordered(shard: number): AsyncIterable<{ watch: WatchRecord; key: ListKey }> {
    const page = 200;
    let after: string | undefined;
    let maxCreatedAt = -Infinity;
    let index = 0;
    for (;;) {
      const batch = await this.shards[shard]!.list({ limit: page, after });
      for (const watch of batch) {
        maxCreatedAt = Math.max(maxCreatedAt, watch.created_at);
        yield { watch, key: [maxCreatedAt, shard, index] };
        index += 1;
      }
      if (batch.length < page) return;
      after = batch.at(-1)!.id;
    }
  }

  async *active(): AsyncIterable<WatchRecord> {
    for (const store of this.shards) yield* store.active();
  }

  /**
   * Events of every shard after a cursor (one position per shard), merged by commit time
   * (`observed_at`, then shard index) with each shard's order kept; each event carries the
   * cursor just after it (its SSE id).
   */
  async eventsAfterCursor(cursor: readonly number[], filter: EventFilter, limit: number): Promise<ShardedEvent[]> {
    if (cursor.length !== this.shards.length) throw new RangeError(`a cursor of ${cursor.length} positions for ${this.shards.length} shards`);
    const batches = await Promise.all(this.shards.map((store, i) => store.eventsAfter(cursor[i]!, filter, limit)));
    const times = batches.map((batch) => batch.map(observedAt));
    const at = new Map<StoredEvent, string>(batches.flatMap((batch, i) => batch.map((event, j) => [event, times[i]![j]!] as const)));
    const out: ShardedEvent[] = [];
    let position = [...cursor];
    mergeHeads(
      batches,
      limit,
      (a, ai, b, bi) => at.get(a)! < at.get(b)! || (at.get(a) === at.get(b) && ai < bi),
      (event, shard) => {
        position = position.map((pos, i) => (i === shard ? event.pos : pos));
        out.push({ ...event, shard, cursor: position });
      },
    );
    return out;
  }

  /**
   * Events after the same position in every shard (`0`: every log from its start), merged as
   * `eventsAfterCursor` does; `pos` of each is its shard's.
   */
  eventsAfter(pos: number, filter: EventFilter, limit: number): Promise<StoredEvent[]> {
    if (this.shards.length === 1) return this.shards[0]!.eventsAfter(pos, filter, limit);
    return this.eventsAfterCursor(new Array<number>(this.shards.length).fill(pos), filter, limit);
  }

  /** The shards' last positions added up: grows whenever any shard's log does (0 when every log is empty). */
  async lastPosition(): Promise<number> {
    return (await this.lastPositions()).reduce((sum, pos) => sum + pos, 0);
  }

  /** Each shard's last position: the cursor of the end of the log. */
  lastPositions(): Promise<number[]> {
    return Promise.all(this.shards.map((store) => store.lastPosition()));
  }

  async prune(nowMs: number, retention: Retention): Promise<number> {
    return (await Promise.all(this.shards.map((store) => store.prune(nowMs, retention)))).reduce((sum, n) => sum + n, 0);
  }

  healthy(): boolean {
    return this.shards.every((store) => store.healthy());
  }

  async close(): Promise<void> {
    await Promise.all(this.shards.map((store) => store.close()));
  }
}
