import { createHash } from 'node:crypto';
import type { Cluster, Redis } from 'ioredis';
import { StoreUnavailableError } from '../errors.js';
import type { Progress } from '../step.js';
import { RedisKeys } from './redis-keys.js';
import type { CommitResult, EventFilter, NewWatch, Retention, StoredEvent, StoredProgress, StoredWatchEvent, WatchChange, WatchQuery, WatchRecord, WatchState, WatchStore, WatchTarget } from './store.js';
import { committedFields, eventTarget, idFieldsOfTarget, isCheckpoint, needsScan, orderingId, pageOf, parseJson, targetKey } from './store.js';

/** Keeps the log and outbox streams bounded (approximately): Redis holds them in memory. */
const STREAM_CAP = 1_000_000;

// KEYS: targets map, watches zset, order counter, active set of the new id's partition, status counts
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
redis.call('HINCRBY', KEYS[5], 'none', 1)
return {1, id}`;

// KEYS: watch, pos counter, log stream, partition stream, active set of the watch's partition, status counts
// ARGV: expected seq, fields (JSON object of strings), new state, event count, then 6 values per event
const COMMIT = `
local seq = redis.call('HGET', KEYS[1], 'seq')
if not seq then return -3 end
if tonumber(seq) ~= tonumber(ARGV[1]) then return -1 end
if redis.call('HGET', KEYS[1], 'state') ~= 'active' then return -2 end
local n = tonumber(ARGV[4])
if n > 0 then
  local callback = redis.call('HGET', KEYS[1], 'callback_url') or ''
  local i = 5
  for e = 1, n do
    local pos = redis.call('INCR', KEYS[2])
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ${STREAM_CAP}, pos .. '-0', 'event_id', ARGV[i], 'watch_id', ARGV[i + 1], 'thread_id', ARGV[i + 2], 'run_id', ARGV[i + 3],
      'response_id', ARGV[i + 4], 'payload', ARGV[i + 5])
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ${STREAM_CAP}, '*', 'pos', pos, 'event_id', ARGV[i], 'watch_id', ARGV[i + 1], 'payload', ARGV[i + 5], 'callback_url', callback)
    i = i + 6
  end
end
local old = redis.call('HGET', KEYS[1], 'status') or ''
local fields = cjson.decode(ARGV[2])
local flat = {}
for k, v in pairs(fields) do flat[#flat + 1] = k; flat[#flat + 1] = v end
redis.call('HSET', KEYS[1], unpack(flat))
local new = fields['status'] or ''
if old == '' then old = 'none' end
if new == '' then new = 'none' end
if ARGV[3] ~= 'active' then
  redis.call('SREM', KEYS[5], redis.call('HGET', KEYS[1], 'id'))
  redis.call('HINCRBY', KEYS[6], old, -1)
elseif old ~= new then
  redis.call('HINCRBY', KEYS[6], old, -1)
  redis.call('HINCRBY', KEYS[6], new, 1)
end
return 1`;

// KEYS: watch; ARGV: expected seq, progress, next poll at, updated at, stuck
// a checkpoint from a batch: written only where no step with events (nor an end) was written since
const CHECKPOINT = `
local v = redis.call('HMGET', KEYS[1], 'seq', 'state')
if not v[1] or tonumber(v[1]) ~= tonumber(ARGV[1]) or v[2] ~= 'active' then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[2], 'next_poll_at', ARGV[3], 'updated_at', ARGV[4], 'stuck', ARGV[5])
return 1`;

interface Commands {
  rwCreate(targets: string, watches: string, order: string, active: string, counts: string, ...args: string[]): Promise<[number, string]>;
  rwCommit(watch: string, pos: string, log: string, partition: string, active: string, counts: string, ...args: string[]): Promise<number>;
  rwCheckpoint(watch: string, ...args: string[]): Promise<number>;
}

/** A connection to one Redis or to a Redis Cluster: the commands runwatch sends are the same on both. */
export type RedisClient = Redis | Cluster;

/** True for a Redis Cluster's client (which has nodes), false for one Redis. */
export function isCluster(redis: RedisClient): redis is Cluster {
  return 'nodes' in redis;
}

/**
 * The outbox partition of a run or response (by `orderingId`): one target always maps to the
 * same one, which keeps its order.
 */
export function partitionOf(orderingKey: string, partitions: number): number {
  return createHash('sha1').update(orderingKey).digest().readUInt32BE(0) % partitions;
}

/**
 * Shared state of the replicas in Redis: one hash per watch (with its progress), a set of the
 * active watches of each partition (`partitionOf(watch id)`: a replica polls the partitions it
 * owns), an event log stream whose entry ids are the event positions (`<pos>-0`, so SSE resumes
 * by number), and per-partition outbox streams that sinks read with consumer groups. A step's
 * events and its watch's progress are written by one Lua script: atomically, and only if the
 * watch's seq is still what the step started from. A step without events is a checkpoint, kept
 * in memory until `flushCheckpoints` (as SQLite's): an unchanged poll writes nothing. While
 * Redis does not answer, every call rejects with `StoreUnavailableError`.
 */
export class RedisStore implements WatchStore {
  readonly keys: RedisKeys;
  /** Partitions of the outbox streams and of the watches (`store.partitions`). */
  readonly partitions: number;
  readonly #redis: RedisClient & Commands;
  /** The latest checkpoint of each watch not yet written. */
  readonly #checkpoints = new Map<string, Progress>();

  /** @param prefix - the keys' prefix, or the keys themselves (a shard's, see `shardPrefix`) */
  constructor(redis: RedisClient, prefix: string | RedisKeys, partitions: number) {
    this.keys = typeof prefix === 'string' ? new RedisKeys(prefix) : prefix;
    this.partitions = partitions;
    redis.defineCommand('rwCreate', { numberOfKeys: 5, lua: CREATE });
    redis.defineCommand('rwCommit', { numberOfKeys: 6, lua: COMMIT });
    redis.defineCommand('rwCheckpoint', { numberOfKeys: 1, lua: CHECKPOINT });
    this.#redis = redis as RedisClient & Commands;
  }

  /** The watch partition of a watch: which replica polls it. */
  partitionOfWatch(id: string): number {
    return partitionOf(id, this.partitions);
  }

  /** Runs a command; a failure while the connection is down is `StoreUnavailableError`, anything else is rethrown as is. */
  async #call<T>(work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (error) {
      if (this.#redis.status !== 'ready') throw new StoreUnavailableError('the Redis store does not answer: check RUNWATCH_REDIS_URL and that Redis is up', { cause: error });
      throw error;
    }
  }

  /**
   * Creates the watch for a run or response with `input.id`, or returns its existing watch:
   * one script, so two replicas adding the same target get one watch. A target added again
   * after its watch was pruned gets a new id, so its event ids never repeat.
   */
  async create(input: NewWatch, nowMs: number): Promise<{ watch: WatchRecord; created: boolean }> {
    const ids = idFields(input);
    const { keys } = this;
    const [created, id] = await this.#call(() =>
      this.#redis.rwCreate(
        keys.targets,
        keys.watches,
        keys.order,
        keys.activeIn(this.partitionOfWatch(input.id)),
        keys.statusCounts,
        targetKey(input),
        input.id,
        input.kind,
        ids.thread_id,
        ids.run_id,
        ids.response_id,
        input.metadata ? JSON.stringify(input.metadata) : '',
        input.callback_url ?? '',
        String(nowMs),
        keys.watchPrefix,
      ),
    );
    const watch = await this.get(id);
    if (!watch) throw new Error(`watch ${id} vanished after creation`);
    return { watch, created: created === 1 };
  }

  async get(id: string): Promise<WatchRecord | undefined> {
    const hash = await this.#call(() => this.#redis.hgetall(this.keys.watch(id)));
    return hash.id ? this.#record(hash) : undefined;
  }

  /** A hash as a record, with this process's checkpoint when it is newer than the hash (same seq, still active). */
  #record(hash: Record<string, string>): WatchRecord {
    const record = toRecord(hash);
    const checkpoint = record.state === 'active' ? this.#checkpoints.get(record.id) : undefined;
    return checkpoint && checkpoint.seq === record.progress?.seq ? { ...record, progress: checkpoint } : record;
  }

  async loadProgress(id: string): Promise<Progress | undefined> {
    return ((await this.get(id))?.progress as Progress | null | undefined) ?? undefined;
  }

  /**
   * Watches in creation order after the cursor, optionally in one state. With a status, a
   * search or the attention order, a few fields of every watch are read (`#scanPage`): Redis has
   * no index for those.
   */
  async list(query: WatchQuery): Promise<WatchRecord[]> {
    if (needsScan(query)) return this.#scanPage(query);
    return this.#call(async () => {
      let from = '-inf';
      if (query.after) {
        const score = await this.#redis.zscore(this.keys.watches, query.after);
        if (score !== null) from = `(${score}`;
      }
      const out: WatchRecord[] = [];
      while (out.length < query.limit) {
        const ids = await this.#redis.zrangebyscore(this.keys.watches, from, '+inf', 'WITHSCORES', 'LIMIT', 0, 200);
        if (ids.length === 0) break;
        const pipeline = this.#redis.pipeline();
        for (let i = 0; i < ids.length; i += 2) pipeline.hgetall(this.keys.watch(ids[i]!));
        for (const [, value] of (await pipeline.exec()) ?? []) {
          const hash = value as Record<string, string>;
          if (hash.id && (!query.state || hash.state === query.state)) out.push(this.#record(hash));
          if (out.length === query.limit) break;
        }
        from = `(${ids[ids.length - 1]}`;
      }
      return out;
    });
  }

  /**
   * A page of a list with a status, a search or the attention order: the fields these need are
   * read for every watch (pipelined, 500 at a time; `stuck` spares parsing each progress), the
   * page is picked by `pageOf`, and only its watches are read whole.
   */
  async #scanPage(query: WatchQuery): Promise<WatchRecord[]> {
    // as SQLite does: the rank reads what is stored, so this process's checkpoints (failing polls) go first
    await this.flushCheckpoints();
    return this.#call(async () => {
      const ids = await this.#redis.zrange(this.keys.watches, '0', '-1');
      const light: WatchRecord[] = [];
      for (let i = 0; i < ids.length; i += 500) {
        const pipeline = this.#redis.pipeline();
        for (const id of ids.slice(i, i + 500)) pipeline.hmget(this.keys.watch(id), ...LIGHT_FIELDS);
        for (const [, value] of (await pipeline.exec()) ?? []) {
          const hash = Object.fromEntries(LIGHT_FIELDS.flatMap((field, f) => ((value as Array<string | null>)[f] == null ? [] : [[field, (value as string[])[f]!]])));
          if (!hash.id) continue;
          // a hash written before `stuck` was kept: its progress says
          if (hash.stuck === undefined && hash.state === 'active') hash.progress = (await this.#redis.hget(this.keys.watch(hash.id), 'progress')) ?? '';
          light.push(toRecord({ ...hash, ...(hash.stuck === '1' ? { progress: JSON.stringify({ status: hash.status || null, seq: 0, stallReported: true }) } : {}) }));
        }
      }
      const page = pageOf(light, query);
      if (page.length === 0) return [];
      const pipeline = this.#redis.pipeline();
      for (const watch of page) pipeline.hgetall(this.keys.watch(watch.id));
      return ((await pipeline.exec()) ?? []).map(([, value]) => value as Record<string, string>).filter((hash) => hash.id).map((hash) => this.#record(hash));
    });
  }

  /** Every active watch, partition by partition, read in chunks. */
  async *active(): AsyncIterable<WatchRecord> {
    for (let p = 0; p < this.partitions; p++) yield* this.activeIn(p);
  }

  /** The active watches of one watch partition, read in chunks. */
  async *activeIn(partition: number): AsyncIterable<WatchRecord> {
    for await (const ids of this.#members(this.keys.activeIn(partition))) {
      const pipeline = this.#redis.pipeline();
      for (const id of ids) pipeline.hgetall(this.keys.watch(id));
      const replies = await this.#call(async () => (await pipeline.exec()) ?? []);
      for (const [, value] of replies) {
        const hash = value as Record<string, string>;
        if (hash.id && hash.state === 'active') yield this.#record(hash);
      }
    }
  }

  /** The ids in one watch partition's active set (a reconciliation compares them with what a replica polls). */
  async activeIdsIn(partition: number): Promise<string[]> {
    const ids: string[] = [];
    for await (const batch of this.#members(this.keys.activeIn(partition))) ids.push(...batch);
    return ids;
  }

  /** A set's members in batches (`SSCAN`, 500 at a time; a batch may be empty). */
  async *#members(key: string): AsyncIterable<string[]> {
    let cursor = '0';
    do {
      const [next, ids] = await this.#call(() => this.#redis.sscan(key, cursor, 'COUNT', 500));
      cursor = next;
      yield ids;
    } while (cursor !== '0');
  }

  /**
   * Brings a keyspace written by an earlier version up to date, once per start of a replica:
   * the one set of active watches is spread over the partitions' sets, and the BullMQ queue of
   * the versions that ran each watch as a job is deleted. Every replica of a prefix must run
   * this version (stop the old ones first). Idempotent.
   */
  async migrate(): Promise<void> {
    const { keys } = this;
    for await (const ids of this.#members(keys.active)) {
      if (ids.length === 0) continue;
      const pipeline = this.#redis.pipeline();
      for (const id of ids) pipeline.sadd(keys.activeIn(this.partitionOfWatch(id)), id);
      await this.#call(() => pipeline.exec());
    }
    await this.#call(async () => {
      await this.#redis.del(keys.active);
      // a Cluster scans node by node; a shard's queue keys share its hash tag, so one DEL takes a batch
      const redis: RedisClient = this.#redis;
      for (const node of isCluster(redis) ? redis.nodes('master') : [redis]) {
        let cursor = '0';
        do {
          const [next, found] = await node.scan(cursor, 'MATCH', `${keys.bullPrefix}:*`, 'COUNT', 1000);
          cursor = next;
          if (found.length > 0) await this.#redis.del(...found);
        } while (cursor !== '0');
      }
    });
  }

  /** Active watches by last status (`none` before the first poll), counted by the scripts as watches move. */
  async activeByStatus(): Promise<Map<string, number>> {
    const counts = await this.#call(() => this.#redis.hgetall(this.keys.statusCounts));
    return new Map(Object.entries(counts).flatMap(([status, count]) => (Number(count) > 0 ? [[status, Number(count)] as const] : [])));
  }

  /**
   * Counts the active watches by status when no count exists yet (a keyspace written by an
   * earlier version); the scripts keep it from then on.
   */
  async ensureStatusCounts(): Promise<void> {
    if ((await this.#call(() => this.#redis.exists(this.keys.statusCounts))) === 1) return;
    const counts = new Map<string, number>();
    for await (const watch of this.active()) {
      const status = watch.progress?.status ?? 'none';
      counts.set(status, (counts.get(status) ?? 0) + 1);
    }
    if (counts.size > 0) await this.#call(() => this.#redis.hset(this.keys.statusCounts, Object.fromEntries(counts)));
  }

  /**
   * Writes a step: its events (to the log and the target's partition) and the watch's progress,
   * atomically, if the stored seq is still `expectedSeq` and the watch still active.
   */
  async commit(watchId: string, expectedSeq: number, change: WatchChange): Promise<CommitResult> {
    // a step that changed nothing a consumer sees is a checkpoint: written with the next batch (unless a server's retry-after must survive a crash)
    if (isCheckpoint(change)) {
      this.#checkpoints.set(watchId, change.progress);
      return 'ok';
    }
    this.#checkpoints.delete(watchId);
    const record = committedFields(change, Date.now());
    const fields: Record<string, string> = {
      state: record.state,
      status: record.status ?? '',
      seq: String(record.seq),
      progress: record.progress,
      next_poll_at: record.next_poll_at === null ? '' : String(record.next_poll_at),
      updated_at: String(record.updated_at),
      finished_at: record.finished_at === null ? '' : String(record.finished_at),
    };
    if (record.error !== null) fields.error = record.error;
    // the attention order's input beside the progress, so a list need not parse every progress
    fields.stuck = stuckOf(change.progress);
    const args: string[] = [String(expectedSeq), JSON.stringify(fields), change.state, String(change.events.length)];
    let partition = 0;
    for (const event of change.events as readonly StoredWatchEvent[]) {
      const target = eventTarget(event);
      const ids = idFields(target);
      partition = partitionOf(orderingId(target), this.partitions);
      args.push(event.id, event.watch_id, ids.thread_id, ids.run_id, ids.response_id, JSON.stringify(event));
    }
    const { keys } = this;
    const result = await this.#call(() => this.#redis.rwCommit(keys.watch(watchId), keys.position, keys.log, keys.partition(partition), keys.activeIn(this.partitionOfWatch(watchId)), keys.statusCounts, ...args));
    return result === 1 ? 'ok' : result === -1 ? 'stale' : result === -2 ? 'ended' : 'missing';
  }

  /** Checkpoints kept in memory, not yet written. */
  get pendingCheckpoints(): number {
    return this.#checkpoints.size;
  }

  /**
   * Writes the checkpoints kept since the last batch (those `select` picks, when given), in one
   * pipeline, each only where no newer step was written meanwhile. Checkpoints are hints: a
   * batch Redis refuses is dropped (a resumed watch polls at once anyway). Returns how many were sent.
   */
  async flushCheckpoints(select: (watchId: string) => boolean = () => true): Promise<number> {
    const batch: Array<[string, Progress]> = [];
    for (const [id, progress] of this.#checkpoints) {
      if (!select(id)) continue;
      batch.push([id, progress]);
      this.#checkpoints.delete(id);
    }
    if (batch.length === 0) return 0;
    const now = String(Date.now());
    const pipeline = this.#redis.pipeline() as unknown as { rwCheckpoint(watch: string, ...args: string[]): void; exec(): Promise<unknown> };
    for (const [id, progress] of batch) pipeline.rwCheckpoint(this.keys.watch(id), String(progress.seq), JSON.stringify(progress), progress.next?.kind === 'poll' ? String(progress.next.atMs) : '', now, stuckOf(progress));
    await this.#call(() => pipeline.exec());
    return batch.length;
  }

  /** Forgets the checkpoints `select` picks: of watches this process no longer polls (another replica goes on with them). */
  dropCheckpoints(select: (watchId: string) => boolean): void {
    for (const id of this.#checkpoints.keys()) if (select(id)) this.#checkpoints.delete(id);
  }

  /** Events after a position, filtered, in order. */
  async eventsAfter(pos: number, filter: EventFilter, limit: number): Promise<StoredEvent[]> {
    return this.#call(async () => {
      const out: StoredEvent[] = [];
      let start = `(${pos}-0`;
      while (out.length < limit) {
        const entries = await this.#redis.xrange(this.keys.log, start, '+', 'COUNT', 500);
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
    });
  }

  /**
   * Deletes watches that ended more than `retention.watchesMs` ago. The streams are capped
   * instead (about a million entries each). Returns how many were removed.
   */
  async prune(nowMs: number, retention: Retention): Promise<number> {
    return this.#call(async () => {
      let removed = 0;
      let from = '-inf';
      for (;;) {
        const ids = await this.#redis.zrangebyscore(this.keys.watches, from, '+inf', 'WITHSCORES', 'LIMIT', 0, 500);
        if (ids.length === 0) return removed;
        const pipeline = this.#redis.pipeline();
        // the target's fields come along: an ended watch's mapping is removed with it
        for (let i = 0; i < ids.length; i += 2) pipeline.hmget(this.keys.watch(ids[i]!), 'state', 'finished_at', 'kind', 'thread_id', 'run_id', 'response_id');
        const rows = ((await pipeline.exec()) ?? []).map(([, value]) => value as Array<string | null>);
        const stale: string[] = [];
        const targets: string[] = [];
        rows.forEach(([state, finishedAt, kind, thread_id, run_id, response_id], i) => {
          const ended = state && state !== 'active' && finishedAt && Number(finishedAt) < nowMs - retention.watchesMs;
          if (!ended) return;
          stale.push(ids[i * 2]!);
          targets.push(targetKey(targetFromHash({ kind: kind ?? '', thread_id: thread_id ?? '', run_id: run_id ?? '', response_id: response_id ?? '' })));
        });
        if (stale.length > 0) {
          await this.#redis
            .multi()
            .del(...stale.map((id) => this.keys.watch(id)))
            .zrem(this.keys.watches, ...stale)
            // only this watch's mapping: a newer watch of the same run keeps its own
            .eval(`for i = 1, #ARGV, 2 do if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then redis.call('HDEL', KEYS[1], ARGV[i]) end end`, 1, this.keys.targets, ...targets.flatMap((key, i) => [key, stale[i]!]))
            .exec();
          removed += stale.length;
        }
        from = `(${ids[ids.length - 1]}`;
      }
    });
  }

  /** The last event position written. */
  async lastPosition(): Promise<number> {
    return Number((await this.#call(() => this.#redis.get(this.keys.position))) ?? 0);
  }

  healthy(): boolean {
    return this.#redis.status === 'ready';
  }

  /** Writes the checkpoints still kept; the connection is the caller's: it closes it. */
  async close(): Promise<void> {
    await this.flushCheckpoints().catch(() => undefined);
  }
}

/** The rank's input kept beside the progress: stalled, or polls failing. */
function stuckOf(progress: Progress): '1' | '0' {
  return progress.stallReported || progress.consecutiveErrors > 0 ? '1' : '0';
}

/** The fields of a watch hash a filtered or ranked list reads for every watch. */
const LIGHT_FIELDS = ['id', 'kind', 'thread_id', 'run_id', 'response_id', 'state', 'status', 'stuck', 'created_at', 'updated_at'] as const;

/** `[k1, v1, k2, v2]` to `{ k1: v1, k2: v2 }`. */
export function pairs(flat: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) out[flat[i]!] = flat[i + 1]!;
  return out;
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

/** A hash's progress; earlier versions kept what was done (and, before that, everything) in fields of their own. */
function storedProgress(hash: Record<string, string>): StoredProgress {
  const legacy = { handledCalls: hash.handled_calls || null, cancelRequested: hash.cancel_requested === '1' };
  const progress = parseJson<StoredProgress>(hash.progress);
  if (progress) return 'handledCalls' in progress ? progress : { ...legacy, ...progress };
  const since = num(hash.status_since);
  return { status: hash.status || null, seq: Number(hash.seq ?? 0), lastSnapshot: parseJson(hash.last_snapshot), ...(since === null ? {} : { statusSinceMs: since }), ...legacy };
}

function toRecord(hash: Record<string, string>): WatchRecord {
  return {
    ...targetFromHash(hash),
    id: hash.id!,
    metadata: parseJson(hash.metadata),
    callback_url: hash.callback_url || null,
    state: hash.state as WatchState,
    progress: storedProgress(hash),
    error: parseJson(hash.error),
    created_at: Number(hash.created_at),
    updated_at: Number(hash.updated_at),
    finished_at: num(hash.finished_at),
  };
}
