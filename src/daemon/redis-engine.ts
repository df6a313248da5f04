import { hostname } from 'node:os';
import { EventEmitter } from 'eventemitter3';
import type { Logger } from 'pino';
import type { BudgetSnapshot } from '../budget.js';
import { ApiClient } from '../client.js';
import type { Watch } from '../driver.js';
import { WatchDriver } from '../driver.js';
import { WatchError } from '../errors.js';
import { WEBHOOK_REPLAY_WINDOW_MS } from '../hooks.js';
import { DEFAULT_DEADLINES, resolvePollPolicy, safetyNetPolicy } from '../schedule.js';
import type { StepSettings } from '../step.js';
import { resumeProgress } from '../step.js';
import type { RedisClient, RedisStore } from '../store/redis.js';
import { isCluster } from '../store/redis.js';
import type { NewWatch, WatchRecord } from '../store/store.js';
import { kindOf, targetKey, targetOf } from '../store/store.js';
import { randomWatchId } from '../watcher.js';
import type { Engine, EngineEvents, EngineSettings } from './engine.js';
import { LocalEngine } from './engine.js';
import { fleetBudget } from './fleet-budget.js';
import { leases } from './redis-lease.js';

/** How often the log is checked for events other replicas committed (to wake SSE streams). */
const LOG_WATCH_MS = 250;
/**
 * How often checkpoints (polls that changed nothing) are written: they are hints (a taken-over
 * watch polls at once anyway), and each costs 3 Redis commands, so every 5 s rather than SQLite's 2.
 */
export const CHECKPOINT_MS = 5_000;

/** How often a replica looks for watches of its partitions it does not poll: a notice lost while a connection was down. */
export const REPAIR_MS = 30_000;

/** Notices on `RedisKeys.notices`: `<kind> <id>`. */
type NoticeKind = 'add' | 'reload' | 'wake';

/** Options of a `RedisEngine` beside the engine settings. */
export interface RedisEngineOptions {
  /**
   * How long a replica holds a watch partition without renewing it (`store.lockDurationMs`): a
   * dead replica's watches are polled by another one this long after its last renewal.
   */
  readonly lockDurationMs: number;
  /**
   * How often a replica renews its leases, beats its heartbeat and looks for partitions to take
   * (`store.stalledIntervalMs`); never less often than a fifth of the lease.
   */
  readonly stalledIntervalMs: number;
  /** How often the owned partitions' sets are compared with the watches polled here (a missed notice). @default REPAIR_MS (30000) */
  readonly repairIntervalMs?: number;
  /** How often checkpoints are written. @default CHECKPOINT_MS (5000) */
  readonly checkpointIntervalMs?: number;
  readonly logger: Logger;
}

interface Owned {
  /** Poll only before this: half a lease after the last confirmed renewal, well before Redis lets it go. */
  validUntilMs: number;
}

/**
 * The engine of a fleet of replicas (Redis store). Watches are spread over `store.partitions`
 * watch partitions by a hash of their id; each replica owns a fair share of the partitions by
 * lease (ceil(partitions / live replicas), live ones from a heartbeat hash) and polls their
 * watches from its own timer heap: a `LocalEngine` over the store, the same loop as the SQLite
 * daemon's. A poll that changes nothing writes nothing (a checkpoint, batched). A dead
 * replica's partitions are taken over when their lease lapses; extras are handed back when
 * replicas join. A watch added, cancelled or deleted on a replica that does not own it is
 * written through the store and its owner is told by a pub/sub notice (and, should a notice be
 * lost, by the periodic repair). The budget is the fleet's (`FleetBudget`).
 */
export class RedisEngine extends EventEmitter<EngineEvents> implements Engine {
  readonly store: RedisStore;
  /** Names this replica in requests (`x-runwatch-instance`), logs, leases and consumer groups. */
  readonly replicaId: string;
  readonly #redis: RedisClient;
  /** Pub/sub takes a connection of its own. */
  readonly #subscriber: RedisClient;
  readonly #options: RedisEngineOptions;
  readonly #settings: EngineSettings;
  readonly #base: Omit<StepSettings, 'startedAtMs' | 'handlesToolCalls' | 'handlesToolApprovals'>;
  readonly #client: ApiClient;
  /** The watches of the owned partitions, in one timer heap. */
  readonly #local: LocalEngine;
  /** Writes a cancel or a delete of a watch another replica polls, through the store. */
  readonly #driver: WatchDriver;
  readonly #owned = new Map<number, Owned>();
  /** Aborted at shutdown: no new action starts. */
  readonly #stopping = new AbortController();
  readonly #timers: NodeJS.Timeout[] = [];
  /** The settings of a response watch when webhooks cover it. */
  readonly #net: StepSettings['policy'] | undefined;
  readonly #tickMs: number;
  #ticking = false;
  #lastRepairMs = 0;
  /** A step failed (Redis away): look for unpolled watches at the next tick rather than at the next repair. */
  #repairSoon = false;
  #lastPosition = 0;
  #closing: Promise<void> | null = null;

  constructor(redis: RedisClient, store: RedisStore, settings: EngineSettings, options: RedisEngineOptions) {
    super();
    this.store = store;
    this.#redis = redis;
    this.#options = options;
    this.#settings = settings;
    this.replicaId = `${hostname()}-${process.pid}-${randomWatchId().slice(2, 8)}`;
    this.#tickMs = Math.max(50, Math.min(options.stalledIntervalMs, Math.floor(options.lockDurationMs / 5)));
    const { watcher } = settings;
    this.#base = {
      policy: resolvePollPolicy(watcher.policy),
      resolveOn: new Set(),
      timeoutMs: undefined,
      expiresGraceMs: watcher.expiresGraceMs ?? DEFAULT_DEADLINES.expiresGraceMs,
      defaultTimeoutMs: watcher.defaultTimeoutMs ?? DEFAULT_DEADLINES.defaultTimeoutMs,
      stallThresholdMs: watcher.stallThresholdMs,
      cancelAfterStallMs: settings.cancelAfterStallMs,
      random: Math.random,
    };
    this.#net = settings.push === 'webhook' ? safetyNetPolicy(this.#base.policy, watcher.safetyNet) : undefined;
    // lets a server (and the simulator) see which replica sent a request
    this.#client = new ApiClient({ ...watcher, headers: { ...watcher.headers, 'x-runwatch-instance': this.replicaId } });
    const budget = fleetBudget(redis, store.keys.budget, watcher);
    this.#local = new LocalEngine(store, settings, { client: this.#client, budget });
    this.#local.on('event', (event) => this.emit('event', event));
    this.#local.on('poll', (report) => this.emit('poll', report));
    // a step that could not be written (Redis away) stopped its watch: polled again once Redis answers
    this.#local.on('error', (error) => {
      options.logger.warn({ err: error }, 'a watch stopped on a store error; it is resumed at the next repair');
      this.#repairSoon = true;
    });
    const logger = watcher.logger ?? options.logger;
    this.#driver = new WatchDriver({
      client: this.#client,
      budget,
      store,
      logger,
      stopping: this.#stopping.signal,
      tracePolls: watcher.tracePolls ?? logger.isLevelEnabled('debug'),
      onEvents: (_w, events) => {
        for (const event of events) this.emit('event', event);
      },
      onPoll: (report) => this.emit('poll', report),
    });
    // waits out an outage (the notices resume with it); a Cluster's subscriber is one of its nodes
    this.#subscriber = isCluster(redis) ? redis.duplicate([], { lazyConnect: true, enableOfflineQueue: true }) : redis.duplicate({ enableOfflineQueue: true, maxRetriesPerRequest: null, lazyConnect: true });
    this.#subscriber.on('error', (error) => options.logger.debug({ err: error }, 'notice connection error'));
    this.#subscriber.on('message', (_channel: string, message: string) => this.#notice(message));
    // notices sent while the connection was down are lost: compare the sets at the next tick
    this.#subscriber.on('ready', () => (this.#repairSoon = true));
  }

  async start(): Promise<number> {
    // seen by replicas starting at the same time before any of them counts its share
    await this.#beat();
    await this.store.migrate();
    await this.store.ensureStatusCounts();
    await this.#subscriber.connect();
    await this.#subscriber.subscribe(this.store.keys.notices);
    await this.#tick();
    this.#timers.push(
      setInterval(() => {
        this.#expire();
        void this.#tick();
      }, this.#tickMs),
    );
    this.#timers.push(setInterval(() => void this.#watchLog(), LOG_WATCH_MS));
    this.#timers.push(setInterval(() => void this.#flush(), this.#options.checkpointIntervalMs ?? CHECKPOINT_MS));
    return this.#local.size;
  }

  async add(input: NewWatch): Promise<{ watch: WatchRecord; created: boolean }> {
    const added = await this.store.create(input, Date.now());
    const { watch } = added;
    // also for a watch that existed: its owner may have missed the first notice
    if (watch.state === 'active') {
      if (this.#owns(watch.id)) this.#local.resume(watch);
      else await this.#publish('add', watch.id);
    }
    return added;
  }

  async delete(id: string): Promise<WatchRecord | undefined> {
    if (this.#local.has(id)) return this.#local.delete(id);
    const record = await this.store.get(id);
    if (record?.state === 'active') {
      const w = this.#watch(record);
      await this.#driver.end(w, new WatchError('aborted', 'the watch was aborted')).finally(() => this.#driver.release(w));
      await this.#publish('reload', id);
    }
    return this.store.get(id);
  }

  async cancel(id: string): Promise<WatchRecord | undefined> {
    if (this.#local.has(id)) return this.#local.cancel(id);
    const record = await this.store.get(id);
    if (record?.state !== 'active') return record;
    const w = this.#watch(record);
    const { failure } = await this.#driver.cancel(w, 'requested').finally(() => this.#driver.release(w));
    // the owner goes on from what was written, and polls at once: the resource moves to cancelling or cancelled
    await this.#publish('reload', id);
    if (failure) throw this.#driver.errorFrom(w, failure);
    return this.store.get(id);
  }

  activeByStatus(): Promise<ReadonlyMap<string, number>> {
    return this.store.activeByStatus();
  }

  /** Active watches polled by each live replica, from their heartbeats. */
  async watchesByReplica(): Promise<ReadonlyMap<string, number>> {
    const beats = await this.#redis.hgetall(this.store.keys.replicas);
    const now = Date.now();
    const out = new Map<string, number>();
    for (const [replica, beat] of Object.entries(beats)) {
      const { expiresAtMs, watches } = parseBeat(beat);
      if (expiresAtMs > now) out.set(replica, watches);
    }
    return out;
  }

  budget(): BudgetSnapshot {
    return this.#local.budget();
  }

  close(drainTimeoutMs: number): Promise<void> {
    this.#closing ??= this.#close(drainTimeoutMs);
    return this.#closing;
  }

  async wakeResponse(responseId: string): Promise<boolean> {
    if (await this.#local.wakeResponse(responseId)) return true;
    const id = await this.#redis.hget(this.store.keys.targets, targetKey({ kind: 'response', response_id: responseId }));
    if (id === null || (await this.#redis.hget(this.store.keys.watch(id), 'state')) !== 'active') return false;
    await this.#publish('wake', responseId);
    return true;
  }

  async claimWebhook(webhookId: string): Promise<boolean> {
    return (await this.#redis.set(this.store.keys.webhook(webhookId), '1', 'PX', WEBHOOK_REPLAY_WINDOW_MS, 'NX')) === 'OK';
  }

  openStreams(): number {
    return 0;
  }

  /** The watch partitions this replica owns now (tests, logs). */
  ownedPartitions(): number[] {
    return [...this.#owned.keys()].sort((a, b) => a - b);
  }

  #owns(id: string): boolean {
    return this.#owned.has(this.store.partitionOfWatch(id));
  }


  async #publish(kind: NoticeKind, id: string): Promise<void> {
    await this.#redis.publish(this.store.keys.notices, `${kind} ${id}`);
  }

  /** A notice from a replica: the owner (re)loads the watch, or wakes it. */
  #notice(message: string): void {
    const [kind, id] = message.split(' ') as [NoticeKind, string | undefined];
    if (!id || this.#stopping.signal.aborted) return;
    if (kind === 'wake') void this.#local.wakeResponse(id);
    else if (this.#owns(id) && !(kind === 'add' && this.#local.has(id))) void this.#load(id, kind === 'reload');
  }

  /** Polls a watch of an owned partition from what is stored (suspending the copy polled here first). */
  async #load(id: string, reload: boolean): Promise<void> {
    try {
      // its step in flight is over first: what it wrote is read below
      if (reload) await this.#local.suspend(id);
      const record = await this.store.get(id);
      if (record?.state === 'active' && this.#owns(id) && !this.#stopping.signal.aborted) this.#local.resume(record);
    } catch (error) {
      this.#repairSoon = true;
      this.#options.logger.debug({ err: error, watchId: id }, 'could not load a watch');
    }
  }

  /** Heartbeat, renewals, hand-backs and takeovers, then a repair when due. */
  async #tick(): Promise<void> {
    if (this.#ticking || this.#stopping.signal.aborted) return;
    this.#ticking = true;
    const { keys } = this.store;
    const me = this.replicaId;
    const leaseMs = this.#options.lockDurationMs;
    try {
      const now = Date.now();
      const beats = await this.#beat();
      const dead = Object.keys(beats).filter((replica) => parseBeat(beats[replica]!).expiresAtMs <= now);
      if (dead.length > 0) await this.#redis.hdel(keys.replicas, ...dead);
      const live = Math.max(1, Object.keys(beats).length - dead.length);
      const share = Math.ceil(this.store.partitions / live);
      // validity counts from before the command: the reply may come late
      const sentAtMs = Date.now();
      const held = [...this.#owned.keys()];
      const renewed = await leases.renew(this.#redis, held.map((p) => keys.owner(p)), me, leaseMs);
      held.forEach((p, i) => {
        const owned = this.#owned.get(p);
        if (!owned) return;
        if (renewed[i]) owned.validUntilMs = sentAtMs + leaseMs / 2;
        else this.#drop(p, 'lost');
      });
      // hand back the extras, the highest partitions first
      for (const p of [...this.#owned.keys()].sort((a, b) => b - a)) {
        if (this.#owned.size <= share) break;
        await this.#release(p);
      }
      if (this.#owned.size < share) await this.#take(share);
      if (this.#repairSoon || Date.now() - this.#lastRepairMs >= (this.#options.repairIntervalMs ?? REPAIR_MS)) await this.#repair();
    } catch (error) {
      // Redis away or slow: what could not be confirmed in time is given up below
      this.#options.logger.debug({ err: error }, 'partition lease round failed');
    } finally {
      this.#expire();
      this.#ticking = false;
    }
  }

  /** Writes this replica's heartbeat; returns every replica's. */
  async #beat(): Promise<Record<string, string>> {
    const { replicas } = this.store.keys;
    const replies = (await this.#redis.pipeline().hset(replicas, this.replicaId, `${Date.now() + this.#options.lockDurationMs}:${this.#local.size}`).hgetall(replicas).exec()) ?? [];
    const failed = replies.find(([error]) => error !== null)?.[0];
    if (failed) throw failed;
    return (replies[1]?.[1] ?? {}) as Record<string, string>;
  }

  /** Takes free partitions up to the share, starting at a place of this replica's own (fewer collisions). */
  async #take(share: number): Promise<void> {
    const { partitions, keys } = this.store;
    const start = this.store.partitionOfWatch(this.replicaId);
    for (let i = 0; i < partitions && this.#owned.size < share && !this.#stopping.signal.aborted; i++) {
      const p = (start + i) % partitions;
      if (this.#owned.has(p)) continue;
      const sentAtMs = Date.now();
      if (!(await leases.acquire(this.#redis, keys.owner(p), this.replicaId, this.#options.lockDurationMs))) continue;
      const owned: Owned = { validUntilMs: sentAtMs + this.#options.lockDurationMs / 2 };
      this.#owned.set(p, owned);
      // the last holder did not hand it back: it died (or lost its lease), this is a takeover
      const replies = (await this.#redis.pipeline().hget(keys.owners, String(p)).hset(keys.owners, String(p), this.replicaId).exec()) ?? [];
      const last = replies[0]?.[1];
      if (typeof last === 'string' && last !== this.replicaId) {
        this.#options.logger.info({ partition: p, from: last }, 'took over the watch partition of a replica that stopped answering');
        this.emit('takeover');
      }
      let count = 0;
      for await (const record of this.store.activeIn(p)) {
        if (this.#owned.get(p) !== owned) break;
        this.#local.resume(record);
        count += 1;
      }
      this.#options.logger.info({ partition: p, watches: count }, 'took a watch partition');
    }
  }

  /** Hands a partition back: its watches stop here (their steps in flight end), their checkpoints are written, the lease is released. */
  async #release(p: number): Promise<void> {
    this.#owned.delete(p);
    await this.#suspendPartition(p);
    await this.store.flushCheckpoints((id) => this.store.partitionOfWatch(id) === p).catch(() => undefined);
    await this.#handBack([p]);
    this.#options.logger.info({ partition: p }, 'handed a watch partition back');
  }

  /** Releases leases and says so in `owners` (whoever takes them next takes nothing over). */
  async #handBack(partitions: readonly number[]): Promise<void> {
    if (partitions.length === 0) return;
    const { keys } = this.store;
    await this.#redis.hdel(keys.owners, ...partitions.map(String));
    await leases.release(this.#redis, partitions.map((p) => keys.owner(p)), this.replicaId);
  }

  /** A partition lost (another replica holds it) or unconfirmed for half a lease: its watches stop here, nothing is written. */
  #drop(p: number, why: 'lost' | 'unconfirmed'): void {
    if (!this.#owned.delete(p)) return;
    void this.#suspendPartition(p);
    this.store.dropCheckpoints((id) => this.store.partitionOfWatch(id) === p);
    this.#options.logger.warn({ partition: p, why }, 'stopped polling a watch partition');
  }

  #expire(): void {
    const now = Date.now();
    for (const [p, owned] of this.#owned) if (now >= owned.validUntilMs) this.#drop(p, 'unconfirmed');
  }

  async #suspendPartition(p: number): Promise<void> {
    await Promise.all([...this.#local.ids()].filter((id) => this.store.partitionOfWatch(id) === p).map((id) => this.#local.suspend(id)));
  }

  /**
   * Brings what is polled here in line with the owned partitions' sets (a lost notice, a step
   * that failed on Redis): polls every active watch not polled yet, lets go of every watch that
   * ended elsewhere (an unchanged poll writes nothing, so nothing else would tell).
   */
  async #repair(): Promise<void> {
    this.#repairSoon = false;
    this.#lastRepairMs = Date.now();
    let resumed = 0;
    let dropped = 0;
    for (const p of [...this.#owned.keys()]) {
      const active = new Set(await this.store.activeIdsIn(p));
      const polled = [...this.#local.ids()].filter((id) => this.store.partitionOfWatch(id) === p);
      const changed = [...[...active].filter((id) => !this.#local.has(id)), ...polled.filter((id) => !active.has(id))];
      for (const id of changed) {
        // read again: the set may have changed since (a watch added, or ended, meanwhile)
        const record = await this.store.get(id);
        if (!this.#owned.has(p)) break;
        if (record?.state === 'active' && !this.#local.has(id)) {
          this.#local.resume(record);
          resumed += 1;
        } else if (record?.state !== 'active' && (await this.#local.suspend(id))) dropped += 1;
      }
    }
    if (resumed + dropped > 0) this.#options.logger.info({ resumed, dropped }, 'brought the watches polled here in line with the owned partitions');
  }

  /** Writes the checkpoints of the watches polled here; those of watches let go meanwhile are forgotten. */
  async #flush(): Promise<void> {
    this.store.dropCheckpoints((id) => !this.#local.has(id));
    try {
      await this.store.flushCheckpoints((id) => this.#local.has(id));
    } catch (error) {
      this.#options.logger.debug({ err: error }, 'checkpoint batch failed');
    }
  }

  async #close(drainTimeoutMs: number): Promise<void> {
    for (const timer of this.#timers) clearInterval(timer);
    this.#stopping.abort(new Error('the daemon is shutting down'));
    // no QUIT: with Redis away it would wait in the offline queue for ever
    this.#subscriber.disconnect();
    // steps in flight finish within the drain time; the watches are then suspended (nothing written)
    await this.#local.close(drainTimeoutMs);
    const owned = [...this.#owned.keys()];
    this.#owned.clear();
    try {
      await this.store.flushCheckpoints();
      // the others take the partitions at their next tick, not after the lease
      await this.#handBack(owned);
      await this.#redis.hdel(this.store.keys.replicas, this.replicaId);
    } catch (error) {
      this.#options.logger.debug({ err: error }, 'could not hand the partitions back; they move when their lease lapses');
    }
    this.#client.close();
  }

  /** A stored watch as the driver works on it, for a write through the store (its owner polls it). */
  #watch(record: WatchRecord): Watch {
    const toolHandler = record.kind === 'run' ? this.#settings.toolHandler : undefined;
    const approvalHandler = record.kind === 'run' ? this.#settings.approvalHandler : undefined;
    const policy = record.kind === 'response' && this.#net ? this.#net : this.#base.policy;
    const settings: StepSettings = { ...this.#base, policy, startedAtMs: record.created_at, handlesToolCalls: toolHandler !== undefined, handlesToolApprovals: approvalHandler !== undefined };
    const kind = kindOf(record);
    return { id: record.id, kind, ref: targetOf(record), settings, toolHandler, approvalHandler, signal: this.#stopping.signal, progress: resumeProgress(kind, settings, record.progress), trace: undefined };
  }

  /** Wakes streams when another replica committed events. */
  async #watchLog(): Promise<void> {
    try {
      const pos = await this.store.lastPosition();
      if (pos !== this.#lastPosition) {
        this.#lastPosition = pos;
        this.emit('activity');
      }
    } catch {
      // Redis away: readiness says so; nothing to wake
    }
  }
}

/** A heartbeat: `<expires at ms>:<watches polled>`. */
function parseBeat(beat: string): { expiresAtMs: number; watches: number } {
  const [expiresAtMs, watches] = beat.split(':');
  return { expiresAtMs: Number(expiresAtMs), watches: Number(watches ?? 0) };
}
