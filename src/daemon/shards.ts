import { EventEmitter } from 'eventemitter3';
import type { BudgetSnapshot } from '../budget.js';
import type { ShardedStore } from '../store/sharded.js';
import type { NewWatch, SinkStats, WatchRecord } from '../store/store.js';
import type { Sink } from '../sinks/sink.js';
import { randomWatchId } from '../watcher.js';
import type { Engine, EngineEvents } from './engine.js';
import type { Outbox } from './outbox.js';

/** How often the logs of shards this replica does not poll are checked for new events (to wake SSE streams). */
const LOG_WATCH_MS = 250;

/** Options of a `ShardedEngine`. */
export interface ShardedEngineOptions {
  /** The shards this replica polls (`store.serveShards`). @default every shard */
  readonly serve?: readonly number[] | undefined;
  /** How often the logs of the other shards are checked for events (SSE). @default 250 */
  readonly logWatchMs?: number;
}

/**
 * One engine over one engine per shard of a `ShardedStore` (engine `i` works on
 * `store.shards[i]`): a watch is added, deleted, cancelled and woken by the engine of its shard;
 * only the engines of the shards this replica serves are started (poll). The others are never
 * started: they only write (add, delete, cancel, wake), so any replica takes any request.
 * Events, activity, polls and errors of every engine are this engine's.
 */
export class ShardedEngine extends EventEmitter<EngineEvents> implements Engine {
  readonly store: ShardedStore;
  /** Shard 0's webhook-id memory: one for the fleet whatever the shard of the response. */
  readonly claimWebhook?: (webhookId: string) => Promise<boolean>;
  /** The shards' counts by replica added up, when their engines count them. */
  readonly watchesByReplica?: () => Promise<ReadonlyMap<string, number>>;
  readonly #engines: readonly Engine[];
  readonly #served: readonly number[];
  readonly #logWatchMs: number;
  #logTimer: NodeJS.Timeout | undefined;
  #lastPositions: number[] = [];
  #closing: Promise<void> | null = null;

  constructor(store: ShardedStore, engines: readonly Engine[], options: ShardedEngineOptions = {}) {
    super();
    if (engines.length !== store.shards.length) throw new RangeError(`${engines.length} engines for ${store.shards.length} shards`);
    this.store = store;
    this.#engines = engines;
    this.#served = options.serve ?? engines.map((_, i) => i);
    this.#logWatchMs = options.logWatchMs ?? LOG_WATCH_MS;
    const first = engines[0]!;
    if (first.claimWebhook) this.claimWebhook = (id) => first.claimWebhook!(id);
    if (first.watchesByReplica) this.watchesByReplica = async () => addUp(await Promise.all(engines.map(async (engine) => (await engine.watchesByReplica?.()) ?? new Map<string, number>())));
    for (const engine of engines) {
      engine.on('event', (event) => this.emit('event', event));
      engine.on('activity', () => this.emit('activity'));
      engine.on('poll', (report) => this.emit('poll', report));
      engine.on('error', (error) => this.emit('error', error));
    }
  }

  /** Starts the engines of the served shards; resolves with how many active watches they have. */
  async start(): Promise<number> {
    const counts = await Promise.all(this.#served.map((shard) => this.#engines[shard]!.start()));
    const others = this.#engines.map((_, i) => i).filter((i) => !this.#served.includes(i));
    if (others.length > 0) this.#logTimer = setInterval(() => void this.#watchLogs(others), this.#logWatchMs);
    return counts.reduce((sum, n) => sum + n, 0);
  }

  /**
   * Adds the watch in its target's shard. A new watch's id is one that hashes to that shard
   * (`input.id` when it already does), so reads by id go straight to it.
   */
  add(input: NewWatch): Promise<{ watch: WatchRecord; created: boolean }> {
    const shard = this.store.shardOfTarget(input);
    let id = input.id;
    while (this.store.shardOfId(id) !== shard) id = randomWatchId();
    return this.#engines[shard]!.add({ ...input, id });
  }

  async delete(id: string): Promise<WatchRecord | undefined> {
    const found = await this.store.locate(id, (s) => s.get(id));
    return found && this.#engines[found.shard]!.delete(id);
  }

  async cancel(id: string): Promise<WatchRecord | undefined> {
    const found = await this.store.locate(id, (s) => s.get(id));
    return found && this.#engines[found.shard]!.cancel(id);
  }

  /** The shards' counts added up (each engine counts its shard's watches fleet-wide, or its process's). */
  async activeByStatus(): Promise<ReadonlyMap<string, number>> {
    return addUp(await Promise.all(this.#engines.map((engine) => engine.activeByStatus())));
  }

  /** The fleet's rate (the lowest the served engines saw: they share one bucket), this process's requests in flight and queued. */
  budget(): BudgetSnapshot {
    const snapshots = this.#engines.map((engine) => engine.budget());
    const served = this.#served.map((shard) => snapshots[shard]!);
    return {
      ratePerSecond: Math.min(...served.map((s) => s.ratePerSecond)),
      inFlight: snapshots.reduce((sum, s) => sum + s.inFlight, 0),
      queued: snapshots.reduce((sum, s) => sum + s.queued, 0),
    };
  }

  wakeResponse(responseId: string): Promise<boolean> {
    return this.#engines[this.store.shardOfTarget({ kind: 'response', response_id: responseId })]!.wakeResponse(responseId);
  }

  openStreams(): number {
    return this.#engines.reduce((sum, engine) => sum + engine.openStreams(), 0);
  }

  /** Closes every engine at once, each despite the others' errors. Idempotent. */
  close(drainTimeoutMs: number): Promise<void> {
    this.#closing ??= (async () => {
      clearInterval(this.#logTimer);
      const results = await Promise.allSettled(this.#engines.map((engine) => engine.close(drainTimeoutMs)));
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason;
    })();
    return this.#closing;
  }

  /** Wakes streams when events were committed in a shard no engine of this replica polls. */
  async #watchLogs(shards: readonly number[]): Promise<void> {
    try {
      const positions = await Promise.all(shards.map((shard) => this.store.shards[shard]!.lastPosition()));
      if (positions.some((pos, i) => pos !== this.#lastPositions[i])) {
        this.#lastPositions = positions;
        this.emit('activity');
      }
    } catch {
      // Redis away: readiness says so; nothing to wake
    }
  }
}

/** Counts by key, added up over several maps. */
function addUp(maps: ReadonlyArray<ReadonlyMap<string, number>>): Map<string, number> {
  const sum = new Map<string, number>();
  for (const counts of maps) for (const [key, n] of counts) sum.set(key, (sum.get(key) ?? 0) + n);
  return sum;
}

/** One sink's outbox over one outbox per shard (each delivers its shard's events): started, woken and stopped together, counted as one. */
export class ShardedOutbox implements Outbox {
  readonly sink: Sink;
  readonly #outboxes: readonly Outbox[];

  constructor(sink: Sink, outboxes: readonly Outbox[]) {
    this.sink = sink;
    this.#outboxes = outboxes;
  }

  start(): void {
    for (const outbox of this.#outboxes) outbox.start();
  }

  notify(): void {
    for (const outbox of this.#outboxes) outbox.notify();
  }

  async stop(flushTimeoutMs: number): Promise<void> {
    await Promise.all(this.#outboxes.map((outbox) => outbox.stop(flushTimeoutMs)));
  }

  async stats(): Promise<Omit<SinkStats, 'sink'>> {
    const all = await Promise.all(this.#outboxes.map((outbox) => outbox.stats()));
    return { pending: all.reduce((sum, s) => sum + s.pending, 0), dead: all.reduce((sum, s) => sum + s.dead, 0) };
  }
}
