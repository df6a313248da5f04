import { hostname } from 'node:os';
import { DelayedError, Queue, Worker } from 'bullmq';
import type { ConnectionOptions, Job } from 'bullmq';
import { EventEmitter } from 'eventemitter3';
import type { Logger } from 'pino';
import type { Budget, BudgetSnapshot } from '../budget.js';
import { DEFAULT_BUDGET } from '../budget.js';
import { ApiClient } from '../client.js';
import type { StepEnd, Watch } from '../driver.js';
import { WatchDriver } from '../driver.js';
import { WatchError } from '../errors.js';
import { DEFAULT_DEADLINES, resolvePollPolicy, safetyNetPolicy } from '../schedule.js';
import type { StepSettings } from '../step.js';
import { resumeProgress } from '../step.js';
import type { RedisClient, RedisStore } from '../store/redis.js';
import type { NewWatch, WatchRecord } from '../store/store.js';
import { kindOf, targetKey, targetOf } from '../store/store.js';
import { randomWatchId } from '../watcher.js';
import type { Engine, EngineEvents, EngineSettings } from './engine.js';
import { WEBHOOK_REPLAY_WINDOW_MS } from '../hooks.js';
import { fleetBudget } from './fleet-budget.js';

const QUEUE = 'polls';
/** How soon a step refused as stale (a cancel was recorded meanwhile) runs again. */
const STALE_RETRY_MS = 50;
/** How often the log is checked for events other replicas committed (to wake SSE streams). */
const LOG_WATCH_MS = 250;
/** A watch's job: kept while it polls; retried (a crashed step) as long as the watch lives. */
/** A woken watch whose step is running is promoted once it is delayed again: tried this often, this far apart. */
const WAKE_TRIES = 20;
const WAKE_RETRY_MS = 250;

const JOB_OPTIONS = { removeOnComplete: true, removeOnFail: 1_000, attempts: 1_000_000, backoff: { type: 'fixed', delay: 1_000 } } as const;

/** Options of a `RedisEngine` beside the engine settings. */
export interface RedisEngineOptions {
  readonly redisUrl: string;
  /** BullMQ's connection, when not one Redis at `redisUrl` (a Redis Cluster). @default `redisUrl` */
  readonly connection?: ConnectionOptions | undefined;
  /** The job lock and stalled check: how soon a dead replica's step is taken over. */
  readonly lockDurationMs: number;
  readonly stalledIntervalMs: number;
  /** How often active watches are checked for a job (and given one when missing). */
  readonly repairIntervalMs: number;
  readonly logger: Logger;
}

/**
 * The engine of a fleet of replicas (Redis store): each watch is one BullMQ job that runs one
 * driver step and moves itself to `delayed` until its next poll (BullMQ's step-job pattern), so
 * no replica holds a watch between polls and a dead replica's job is taken over by the stalled
 * check. The budget is the fleet's (`FleetBudget`).
 */
export class RedisEngine extends EventEmitter<EngineEvents> implements Engine {
  readonly store: RedisStore;
  /** Names this replica in requests (`x-runwatch-instance`), logs and consumer groups. */
  readonly replicaId: string;
  readonly #redis: RedisClient;
  readonly #options: RedisEngineOptions;
  readonly #settings: EngineSettings;
  readonly #base: Omit<StepSettings, 'startedAtMs' | 'handlesToolCalls' | 'handlesToolApprovals'>;
  readonly #client: ApiClient;
  readonly #budget: Budget;
  readonly #driver: WatchDriver;
  readonly #queue: Queue;
  readonly #worker: Worker<{ watchId: string }, string>;
  /** Aborted at shutdown: no new action starts, steps waiting for the budget give up their turn. */
  readonly #stopping = new AbortController();
  /** Aborted once the drain time is over: requests and handlers still running stop. */
  readonly #halt = new AbortController();
  readonly #timers: NodeJS.Timeout[] = [];
  readonly #wakeTimers = new Set<NodeJS.Timeout>();
  /** The settings of a response watch when webhooks cover it. */
  readonly #net: StepSettings['policy'] | undefined;
  #lastPosition = 0;
  #closing: Promise<void> | null = null;

  constructor(redis: RedisClient, store: RedisStore, settings: EngineSettings, options: RedisEngineOptions) {
    super();
    this.store = store;
    this.#redis = redis;
    this.#options = options;
    this.#settings = settings;
    this.replicaId = `${hostname()}-${process.pid}-${randomWatchId().slice(2, 8)}`;
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
    this.#budget = fleetBudget(redis, store.keys.budget, watcher);
    const logger = watcher.logger ?? options.logger;
    this.#driver = new WatchDriver({
      client: this.#client,
      budget: this.#budget,
      store,
      logger,
      stopping: this.#stopping.signal,
      tracePolls: watcher.tracePolls ?? logger.isLevelEnabled('debug'),
      onEvents: (_w, events) => {
        for (const event of events) this.emit('event', event);
      },
      onPoll: (report) => this.emit('poll', report),
    });
    const connection = options.connection ?? { url: options.redisUrl, maxRetriesPerRequest: null };
    const prefix = store.keys.bullPrefix;
    this.#queue = new Queue(QUEUE, { connection, prefix });
    this.#queue.on('error', (error) => options.logger.debug({ err: error }, 'queue error'));
    this.#worker = new Worker<{ watchId: string }, string>(QUEUE, (job, token) => this.#process(job, token), {
      connection,
      prefix,
      autorun: false,
      // the fleet budget paces requests; this bounds the steps one replica runs at once
      concurrency: watcher.maxInFlight ?? DEFAULT_BUDGET.maxInFlight,
      lockDuration: options.lockDurationMs,
      stalledInterval: options.stalledIntervalMs,
      // a stall means a replica died, never that the watch is broken
      maxStalledCount: 1_000_000,
    });
    this.#worker.on('error', (error) => options.logger.warn({ err: error }, 'worker error'));
    this.#worker.on('stalled', (jobId) => {
      options.logger.info({ watchId: jobId }, 'took over the step of a replica that stopped answering');
      this.emit('takeover');
    });
  }

  async start(): Promise<number> {
    await this.store.ensureStatusCounts();
    const active = await this.#repair();
    void this.#worker.run();
    this.#timers.push(setInterval(() => void this.#watchLog(), LOG_WATCH_MS));
    this.#timers.push(setInterval(() => void this.#repair().catch((error: unknown) => this.#options.logger.debug({ err: error }, 'job repair failed')), this.#options.repairIntervalMs));
    return active;
  }

  async add(input: NewWatch): Promise<{ watch: WatchRecord; created: boolean }> {
    const added = await this.store.create(input, Date.now());
    // also for a watch that existed: a crash between the create script and the job left it without one
    if (added.watch.state === 'active') await this.#ensureJob(added.watch.id);
    return added;
  }

  async delete(id: string): Promise<WatchRecord | undefined> {
    const record = await this.store.get(id);
    if (record?.state === 'active') {
      const w = this.#watch(record);
      await this.#driver.end(w, new WatchError('aborted', 'the watch was aborted')).finally(() => this.#driver.release(w));
      // an active (locked) job cannot be removed; it finds the watch deleted and ends
      await this.#queue.remove(id).catch(() => undefined);
    }
    return this.store.get(id);
  }

  async cancel(id: string): Promise<WatchRecord | undefined> {
    const record = await this.store.get(id);
    if (record?.state !== 'active') return record;
    const w = this.#watch(record);
    const { failure } = await this.#driver.cancel(w, 'requested').finally(() => this.#driver.release(w));
    if (failure) throw this.#driver.errorFrom(w, failure);
    // poll now, not at the planned time: the resource moves to cancelling or cancelled
    await (await this.#queue.getJob(id))?.promote().catch(() => undefined);
    return this.store.get(id);
  }

  activeByStatus(): Promise<ReadonlyMap<string, number>> {
    return this.store.activeByStatus();
  }

  budget(): BudgetSnapshot {
    return this.#budget.snapshot();
  }

  close(drainTimeoutMs: number): Promise<void> {
    this.#closing ??= this.#close(drainTimeoutMs);
    return this.#closing;
  }

  async wakeResponse(responseId: string): Promise<boolean> {
    const id = await this.#redis.hget(this.store.keys.targets, targetKey({ kind: 'response', response_id: responseId }));
    const job: Job<{ watchId: string }> | undefined = id === null ? undefined : await this.#queue.getJob(id);
    if (!job) return false;
    void this.#promote(job, WAKE_TRIES);
    return true;
  }

  async claimWebhook(webhookId: string): Promise<boolean> {
    return (await this.#redis.set(this.store.keys.webhook(webhookId), '1', 'PX', WEBHOOK_REPLAY_WINDOW_MS, 'NX')) === 'OK';
  }

  openStreams(): number {
    return 0;
  }

  /** Moves a delayed step job to now; a job whose step is running is tried again shortly (it is delayed again when its step ends). */
  async #promote(job: Job<{ watchId: string }>, triesLeft: number): Promise<void> {
    try {
      const state = await job.getState();
      if (state === 'delayed') await job.promote();
      else if (state === 'active' && triesLeft > 1 && !this.#stopping.signal.aborted) {
        const timer = setTimeout(() => {
          this.#wakeTimers.delete(timer);
          void this.#promote(job, triesLeft - 1);
        }, WAKE_RETRY_MS);
        this.#wakeTimers.add(timer);
      }
    } catch (error) {
      // promoted meanwhile, or Redis away: the safety net polls anyway
      this.#options.logger.debug({ err: error, watchId: job.id }, 'could not wake a watch');
    }
  }

  async #close(drainTimeoutMs: number): Promise<void> {
    for (const timer of this.#wakeTimers) clearTimeout(timer);
    this.#wakeTimers.clear();
    for (const timer of this.#timers) clearInterval(timer);
    this.#stopping.abort(new Error('the daemon is shutting down'));
    this.#budget.close();
    // steps in flight finish within the drain time; after that their lock lapses and another replica redoes them
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.#worker.close().catch(() => undefined), new Promise((resolve) => (timer = setTimeout(resolve, drainTimeoutMs)))]);
    clearTimeout(timer);
    this.#halt.abort(new Error('the daemon shut down'));
    await this.#queue.close().catch(() => undefined);
    this.#client.close();
  }

  /** A stored watch as the driver works on it. */
  #watch(record: WatchRecord): Watch {
    const toolHandler = record.kind === 'run' ? this.#settings.toolHandler : undefined;
    const approvalHandler = record.kind === 'run' ? this.#settings.approvalHandler : undefined;
    const policy = record.kind === 'response' && this.#net ? this.#net : this.#base.policy;
    const settings: StepSettings = { ...this.#base, policy, startedAtMs: record.created_at, handlesToolCalls: toolHandler !== undefined, handlesToolApprovals: approvalHandler !== undefined };
    const kind = kindOf(record);
    return { id: record.id, kind, ref: targetOf(record), settings, toolHandler, approvalHandler, signal: this.#halt.signal, progress: resumeProgress(kind, settings, record.progress), trace: undefined };
  }

  /** One step of one watch, then asleep in `delayed` until the next. */
  async #process(job: Job<{ watchId: string }>, token: string | undefined): Promise<string> {
    const record = await this.store.get(job.data.watchId);
    if (!record || record.state !== 'active') return 'ended';
    // a job taken over (its replica died) or promoted early still waits out the server's retry-after
    const notBeforeMs = record.progress?.notBeforeMs ?? null;
    if (notBeforeMs !== null && notBeforeMs > Date.now()) {
      await job.moveToDelayed(notBeforeMs, token);
      throw new DelayedError();
    }
    const w = this.#watch(record);
    // a watch object (and its span) lives for one step here: the next may run on another replica
    const end: StepEnd = await this.#driver.step(w, w.progress.next ?? { kind: 'poll', atMs: record.created_at }).finally(() => this.#driver.release(w));
    switch (end.kind) {
      case 'next':
        await job.moveToDelayed(end.next.atMs, token);
        throw new DelayedError();
      case 'stale':
        if (end.result !== 'stale') return end.result;
        // a cancel over the API wrote an event meanwhile: observe again at once, from the new seq
        await job.moveToDelayed(Date.now() + STALE_RETRY_MS, token);
        throw new DelayedError();
      case 'interrupted':
        // this replica stops: the step is redone by whichever replica takes the job next
        await job.moveToDelayed(Date.now(), token);
        throw new DelayedError();
      default:
        return end.kind;
    }
  }

  /** The job id is the watch id: adding it again is a no-op while it exists. */
  async #ensureJob(id: string): Promise<void> {
    await this.#queue.add('poll', { watchId: id }, { jobId: id, ...JOB_OPTIONS });
  }

  /** Gives every active watch without a job one (a crash between creating a watch and its job); returns how many are active. */
  async #repair(): Promise<number> {
    let active = 0;
    let batch: string[] = [];
    const flush = async (): Promise<void> => {
      const pipeline = this.#redis.pipeline();
      for (const id of batch) pipeline.exists(this.#queue.toKey(id));
      const replies = (await pipeline.exec()) ?? [];
      const missing = batch.filter((_, i) => replies[i]?.[1] === 0);
      for (const id of missing) await this.#ensureJob(id);
      if (missing.length > 0) this.#options.logger.warn({ watches: missing.length }, 'gave active watches without a job one');
      batch = [];
    };
    for await (const record of this.store.active()) {
      active += 1;
      batch.push(record.id);
      if (batch.length === 500) await flush();
    }
    if (batch.length > 0) await flush();
    return active;
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
