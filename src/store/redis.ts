import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Progress } from '../step.js';
import type { EventFilter, NewWatch, StoredEvent, StoredWatchEvent, WatchRecord, WatchState, WatchTarget } from './store.js';
import { eventTarget, idFieldsOfTarget, orderingId, targetKey } from './store.js';

/** Keeps the log and outbox streams bounded (approximately): Redis holds them in memory. */
const STREAM_CAP = 1_000_000;

// KEYS: targets map, watches zset, order counter, active set
// ARGV: target key, new id, kind, thread, run, response, metadata, callback, now, watch key prefix
const CREATE = `
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing and redis.call('EXISTS', ARGV[10] .. existing) == 1 then return {0, existing} end
local id = ARGV[2]
local order = redis.call('INCR', KEYS[3])
redis.call('HSET', ARGV[10] .. id, 'id', id, 'kind', ARGV[3], 'thread_id', ARGV[4], 'run_id', ARGV[5], 'response_id', ARGV[6],
  'metadata', ARGV[7], 'callback_url', ARGV[8], 'state', 'active', 'seq', 0, 'created_at', ARGV[9], 'updated_at', ARGV[9], 'order', order)
redis.call('HSET', KEYS[1], ARGV[1], id)
redis.call('ZADD', KEYS[2], order, id)
redis.call('SADD', KEYS[4], id)
return {1, id}`;

// KEYS: watch, pos counter, log stream, partition stream, active set
// ARGV: expected seq, fields (JSON object), new state, event count, then 6 values per event
const COMMIT = `
local seq = redis.call('HGET', KEYS[1], 'seq')
if not seq then return -3 end
if tonumber(seq) ~= tonumber(ARGV[1]) then return -1 end
if redis.call('HGET', KEYS[1], 'state') ~= 'active' then return -2 end
local callback = redis.call('HGET', KEYS[1], 'callback_url') or ''
local n = tonumber(ARGV[4])
local i = 5
for e = 1, n do
  local pos = redis.call('INCR', KEYS[2])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ${STREAM_CAP}, pos .. '-0', 'event_id', ARGV[i], 'watch_id', ARGV[i + 1], 'thread_id', ARGV[i + 2], 'run_id', ARGV[i + 3],
    'response_id', ARGV[i + 4], 'payload', ARGV[i + 5])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ${STREAM_CAP}, '*', 'pos', pos, 'event_id', ARGV[i], 'watch_id', ARGV[i + 1], 'payload', ARGV[i + 5], 'callback_url', callback)
  i = i + 6
end
local fields = cjson.decode(ARGV[2])
local flat = {}
for k, v in pairs(fields) do flat[#flat + 1] = k; flat[#flat + 1] = v end
redis.call('HSET', KEYS[1], unpack(flat))
if ARGV[3] ~= 'active' then redis.call('SREM', KEYS[5], redis.call('HGET', KEYS[1], 'id')) end
return 1`;

interface Commands {
  rwCreate(runs: string, watches: string, order: string, active: string, ...args: string[]): Promise<[number, string]>;
  rwCommit(watch: string, pos: string, log: string, partition: string, active: string, ...args: string[]): Promise<number>;
}

/** Why a commit was refused. */
export type CommitRefusal = 'stale' | 'ended' | 'missing';

/**
 * The outbox partition of a run or response (by `orderingId`): one target always maps to the
 * same one, which keeps its order.
 */
export function partitionOf(orderingKey: string, partitions: number): number {
  return createHash('sha1').update(orderingKey).digest().readUInt32BE(0) % partitions;
}

/** A watch with its engine progress, as one replica loads it for one step. */
export interface StoredWatch {
  readonly record: WatchRecord;
  readonly progress: Progress | null;
}

/**
 * Shared state of the replicas in Redis: one hash per watch (with the engine's progress), an
 * event log stream whose entry ids are the event positions (`<pos>-0`, so SSE resumes by
 * number), and per-partition outbox streams that sinks read with consumer groups. A step's
 * events and its watch update are written by one Lua script: atomically, and only if the
 * watch's seq is still what the step started from.
 */
export class RedisState {
  readonly prefix: string;
  readonly partitions: number;
  readonly #redis: Redis & Commands;

  constructor(redis: Redis, prefix: string, partitions: number) {
    this.prefix = prefix;
    this.partitions = partitions;
    redis.defineCommand('rwCreate', { numberOfKeys: 4, lua: CREATE });
    redis.defineCommand('rwCommit', { numberOfKeys: 5, lua: COMMIT });
    this.#redis = redis as Redis & Commands;
  }

  /** Key of a watch's hash. */
  watchKey(id: string): string {
    return `${this.prefix}watch:${id}`;
  }

  /** Key of an outbox partition stream. */
  partitionKey(partition: number): string {
    return `${this.prefix}part:${partition}`;
  }

  /** Key of the event log stream. */
  get logKey(): string {
    return `${this.prefix}log`;
  }

  /**
   * Creates the watch for a run or response with `input.id`, or returns its existing watch:
   * one script, so two replicas adding the same target get one watch. A target added again
   * after its watch was pruned gets a new id, so its event ids never repeat.
   */
  async createWatch(input: NewWatch, nowMs: number): Promise<{ watch: WatchRecord; created: boolean }> {
    const ids = idFields(input);
    const [created, id] = await this.#redis.rwCreate(
      // the key name predates responses: it maps every target key to its watch
      `${this.prefix}runs`,
      `${this.prefix}watches`,
      `${this.prefix}order`,
      `${this.prefix}active`,
      targetKey(input),
      input.id,
      input.kind,
      ids.thread_id,
      ids.run_id,
      ids.response_id,
      input.metadata ? JSON.stringify(input.metadata) : '',
      input.callback_url ?? '',
      String(nowMs),
      this.watchKey(''),
    );
    const watch = await this.getWatch(id);
    if (!watch) throw new Error(`watch ${id} vanished after creation`);
    return { watch, created: created === 1 };
  }

  async getWatch(id: string): Promise<WatchRecord | undefined> {
    return (await this.load(id))?.record;
  }

  /** The watch and its progress. */
  async load(id: string): Promise<StoredWatch | undefined> {
    const hash = await this.#redis.hgetall(this.watchKey(id));
    if (!hash.id) return undefined;
    return { record: toRecord(hash), progress: hash.progress ? (JSON.parse(hash.progress) as Progress) : null };
  }

  /** Watches in creation order after the cursor, optionally in one state. */
  async listWatches(options: { state?: WatchState; limit: number; after?: string }): Promise<WatchRecord[]> {
    let from = '-inf';
    if (options.after) {
      const score = await this.#redis.zscore(`${this.prefix}watches`, options.after);
      if (score !== null) from = `(${score}`;
    }
    const out: WatchRecord[] = [];
    while (out.length < options.limit) {
      const ids = await this.#redis.zrangebyscore(`${this.prefix}watches`, from, '+inf', 'WITHSCORES', 'LIMIT', 0, 200);
      if (ids.length === 0) break;
      const pipeline = this.#redis.pipeline();
      for (let i = 0; i < ids.length; i += 2) pipeline.hgetall(this.watchKey(ids[i]!));
      const hashes = ((await pipeline.exec()) ?? []).map(([, value]) => value as Record<string, string>);
      for (const hash of hashes) {
        if (hash.id && (!options.state || hash.state === options.state)) out.push(toRecord(hash));
        if (out.length === options.limit) break;
      }
      from = `(${ids[ids.length - 1]}`;
    }
    return out;
  }

  /** How many watches are active. */
  activeCount(): Promise<number> {
    return this.#redis.scard(`${this.prefix}active`);
  }

  /**
   * Writes a step: its events (to the log and the target's partition) and the watch's new fields,
   * atomically, if the stored seq is still `expectedSeq` and the watch still active.
   */
  async commit(watch: WatchRecord, expectedSeq: number, fields: Record<string, string>, state: WatchState, events: readonly StoredWatchEvent[]): Promise<true | CommitRefusal> {
    const args: string[] = [String(expectedSeq), JSON.stringify({ ...fields, state }), state, String(events.length)];
    for (const event of events) {
      const ids = idFields(eventTarget(event));
      args.push(event.id, event.watch_id, ids.thread_id, ids.run_id, ids.response_id, JSON.stringify(event));
    }
    const result = await this.#redis.rwCommit(
      this.watchKey(watch.id),
      `${this.prefix}pos`,
      this.logKey,
      this.partitionKey(partitionOf(orderingId(watch), this.partitions)),
      `${this.prefix}active`,
      ...args,
    );
    return result === 1 ? true : result === -1 ? 'stale' : result === -2 ? 'ended' : 'missing';
  }

  /** Events after a position, filtered, in order. */
  async eventsAfter(pos: number, filter: EventFilter, limit: number): Promise<StoredEvent[]> {
    const out: StoredEvent[] = [];
    let start = `(${pos}-0`;
    while (out.length < limit) {
      const entries = await this.#redis.xrange(this.logKey, start, '+', 'COUNT', 500);
      if (entries.length === 0) break;
      for (const [id, flat] of entries) {
        const fields = pairs(flat);
        if ((!filter.run_id || fields.run_id === filter.run_id) && (!filter.thread_id || fields.thread_id === filter.thread_id) && (!filter.response_id || fields.response_id === filter.response_id)) {
          out.push({ pos: Number(id.split('-')[0]), event_id: fields.event_id ?? '', watch_id: fields.watch_id ?? '', payload: fields.payload ?? '' });
          if (out.length === limit) break;
        }
      }
      start = `(${entries[entries.length - 1]![0]}`;
    }
    return out;
  }

  /**
   * Deletes watches that ended more than `olderThanMs` ago (a chunk per call). The streams are
   * capped instead (about a million entries each). Returns how many were removed.
   */
  async pruneWatches(nowMs: number, olderThanMs: number): Promise<number> {
    let removed = 0;
    let from = '-inf';
    for (;;) {
      const ids = await this.#redis.zrangebyscore(`${this.prefix}watches`, from, '+inf', 'WITHSCORES', 'LIMIT', 0, 500);
      if (ids.length === 0) return removed;
      const pipeline = this.#redis.pipeline();
      // the target's fields come along: an ended watch's mapping is removed with it
      for (let i = 0; i < ids.length; i += 2) pipeline.hmget(this.watchKey(ids[i]!), 'state', 'finished_at', 'kind', 'thread_id', 'run_id', 'response_id');
      const rows = ((await pipeline.exec()) ?? []).map(([, value]) => value as Array<string | null>);
      const stale: string[] = [];
      const keys: string[] = [];
      rows.forEach(([state, finishedAt, kind, thread_id, run_id, response_id], i) => {
        const ended = state && state !== 'active' && finishedAt && Number(finishedAt) < nowMs - olderThanMs;
        if (!ended) return;
        stale.push(ids[i * 2]!);
        keys.push(targetKey(targetFromHash({ kind: kind ?? '', thread_id: thread_id ?? '', run_id: run_id ?? '', response_id: response_id ?? '' })));
      });
      if (stale.length > 0) {
        await this.#redis
          .multi()
          .del(...stale.map((id) => this.watchKey(id)))
          .zrem(`${this.prefix}watches`, ...stale)
          // only this watch's mapping: a newer watch of the same run keeps its own
          .eval(`for i = 1, #ARGV, 2 do if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then redis.call('HDEL', KEYS[1], ARGV[i]) end end`, 1, `${this.prefix}runs`, ...keys.flatMap((key, i) => [key, stale[i]!]))
          .exec();
        removed += stale.length;
      }
      from = `(${ids[ids.length - 1]}`;
    }
  }

  /** The last event position written. */
  async lastPosition(): Promise<number> {
    return Number((await this.#redis.get(`${this.prefix}pos`)) ?? 0);
  }
}

/** `[k1, v1, k2, v2]` to `{ k1: v1, k2: v2 }`. */
export function pairs(flat: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) out[flat[i]!] = flat[i + 1]!;
  return out;
}

function json<T>(value: string | undefined): T | null {
  return value ? (JSON.parse(value) as T) : null;
}

function num(value: string | undefined): number | null {
  return value === undefined || value === '' ? null : Number(value);
}

/** The target of a stored hash; a hash without `kind` was written before responses: a run. */
function targetFromHash(hash: Record<string, string>): WatchTarget {
  return hash.kind === 'response' ? { kind: 'response', response_id: hash.response_id! } : { kind: 'run', thread_id: hash.thread_id!, run_id: hash.run_id! };
}

/** The id fields of a target as stream and hash values ('' where the kind has none). */
function idFields(target: WatchTarget): { thread_id: string; run_id: string; response_id: string } {
  const ids = idFieldsOfTarget(target);
  return { thread_id: ids.thread_id ?? '', run_id: ids.run_id ?? '', response_id: ids.response_id ?? '' };
}

function toRecord(hash: Record<string, string>): WatchRecord {
  return {
    ...targetFromHash(hash),
    id: hash.id!,
    metadata: json(hash.metadata),
    callback_url: hash.callback_url || null,
    state: hash.state as WatchState,
    status: hash.status || null,
    seq: Number(hash.seq ?? 0),
    last_snapshot: json(hash.last_snapshot),
    error: json(hash.error),
    status_since: num(hash.status_since),
    next_poll_at: num(hash.next_poll_at),
    created_at: Number(hash.created_at),
    updated_at: Number(hash.updated_at),
    finished_at: num(hash.finished_at),
    actions: { handledCalls: hash.handled_calls || null, cancelRequested: hash.cancel_requested === '1' },
  };
}
