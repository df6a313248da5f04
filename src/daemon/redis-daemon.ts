import { hostname } from 'node:os';
import type { AddressInfo } from 'node:net';
import { DelayedError, Queue, Worker } from 'bullmq';
import type { Job } from 'bullmq';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { ApiClient } from '../client.js';
import type { PollOutcome } from '../client.js';
import { ConfigError, WatchError } from '../errors.js';
import type { ErrorCode } from '../errors.js';
import type { ToolHandler } from '../actions.js';
import { actWithRetries, callToolHandler, errorDetails, toolCallsKey, toolCallsOf } from '../actions.js';
import type { ActionEventName } from '../events.js';
import { actionEvent, emissionEvent, watchErrorEvent } from '../events.js';
import type { RunSnapshot, Snapshot } from '../resource.js';
import { resolvePollPolicy, retryAfterFloorMs } from '../schedule.js';
import type { PollPolicy } from '../schedule.js';
import { FileSink } from '../sinks/file.js';
import type { Sink } from '../sinks/sink.js';
import { WebhookSink } from '../sinks/webhook.js';
import type { Progress, StepSettings } from '../step.js';
import { applyOutcome, deadlineMessage, initialProgress, stepAfterAction } from '../step.js';
import { pairs, RedisState } from '../store/redis.js';
import type { StoredWatchEvent, WatchRecord, WatchState } from '../store/store.js';
import { actionMemoryOf, kindOf, targetOf } from '../store/store.js';
import { randomWatchId } from '../watcher.js';
import { createControlApi } from './api.js';
import type { NewWatchInput, WatchView } from './api.js';
import type { DaemonConfig } from './config.js';
import { effectiveBaseUrl } from './config.js';
import type { DaemonSecrets, RunningDaemon } from './daemon.js';
import { assertSafeBind, createSinks, listen, loadDaemonToolHandler, watchView } from './daemon.js';
import { DaemonMetrics } from './metrics.js';
import { PartitionedOutbox } from './redis-outbox.js';

const QUEUE = 'polls';
/** How soon a step refused as stale (an action was recorded meanwhile) runs again. */
const STALE_RETRY_MS = 50;

type Step = ReturnType<typeof applyOutcome>;
type ActionDetails = Parameters<typeof actionEvent>[5];

/** What an action after an observation adds to the step: its events (which the watch remembers it by) and the step that follows. */
interface Acted {
  readonly events: StoredWatchEvent[];
  readonly step: Step;
}

/**
 * The daemon on Redis, for several replicas: each watch is one BullMQ job that polls once per
 * run of the processor and moves itself to `delayed` until its next poll (BullMQ's step-job
 * pattern), so no replica holds a watch between polls and a dead replica's job is taken over
 * by the stalled-job check. Watch state and events live in Redis (`RedisState`); sinks read
 * the shared, partitioned outbox.
 */
export class RedisDaemon implements RunningDaemon {
  readonly #config: DaemonConfig;
  readonly #logger: Logger;
  readonly #redis: Redis;
  readonly #state: RedisState;
  readonly #queue: Queue;
  readonly #worker: Worker<{ watchId: string }, string>;
  readonly #client: ApiClient;
  readonly #policy: PollPolicy;
  readonly #outboxes: PartitionedOutbox[];
  readonly #metrics: DaemonMetrics;
  readonly #api: ReturnType<typeof createControlApi>;
  readonly #listeners = new Set<() => void>();
  readonly #timers: NodeJS.Timeout[] = [];
  readonly #replicaId: string;
  readonly #toolHandler: ToolHandler | undefined;
  /** Aborted at shutdown: tool handlers and actions in flight stop, and their step is redone elsewhere. */
  readonly #stopping = new AbortController();
  #lastPosition = 0;
  /** Fleet-wide figures for the gauges, refreshed in the background (scrapes must not wait on Redis). */
  #gauges: { active: number; outbox: Array<{ sink: string; pending: number; dead: number }> } = { active: 0, outbox: [] };
  #shutdown: Promise<void> | null = null;
  #address: AddressInfo | null = null;
  /** Never rejects: with Redis, every write is a transaction a restart can redo. */
  readonly failed: Promise<never> = new Promise<never>(() => undefined);

  private constructor(config: DaemonConfig, secrets: DaemonSecrets, logger: Logger, sinks: Sink[], redisUrl: string, toolHandler: ToolHandler | undefined) {
    this.#config = config;
    this.#toolHandler = toolHandler;
    this.#logger = logger;
    this.#replicaId = `${hostname()}-${process.pid}-${randomWatchId().slice(2, 8)}`;
    // our own commands fail fast while Redis is away; BullMQ needs maxRetriesPerRequest null
    this.#redis = new Redis(redisUrl, { maxRetriesPerRequest: 1, enableOfflineQueue: false });
    this.#redis.on('error', (error) => logger.debug({ err: error }, 'redis connection error'));
    this.#state = new RedisState(this.#redis, config.store.prefix, config.store.partitions);
    this.#policy = resolvePollPolicy(config.watch.policy);
    const connection = { url: redisUrl, maxRetriesPerRequest: null };
    const bullPrefix = `${config.store.prefix}bull`;
    this.#queue = new Queue(QUEUE, { connection, prefix: bullPrefix });
    this.#queue.on('error', (error) => logger.debug({ err: error }, 'queue error'));
    this.#client = new ApiClient({
      provider: config.watch.provider,
      baseUrl: effectiveBaseUrl(config),
      apiVersion: config.watch.apiVersion,
      credentials: secrets.credentials,
      // lets a server (and the simulator) see which replica polled
      headers: { 'x-runwatch-instance': this.#replicaId },
      requestTimeoutMs: config.watch.requestTimeoutMs,
      maxSockets: config.watch.maxSockets,
      traceId: config.watch.traceId,
    });
    this.#worker = new Worker<{ watchId: string }, string>(QUEUE, (job, token) => this.#process(job, token), {
      connection,
      prefix: bullPrefix,
      autorun: false,
      concurrency: config.watch.maxInFlight,
      // BullMQ's limiter counts jobs across every worker of the queue: one budget for the fleet
      limiter: { max: Math.max(1, Math.round(config.watch.maxRequestsPerSecond)), duration: 1_000 },
      lockDuration: config.store.lockDurationMs,
      stalledInterval: config.store.stalledIntervalMs,
      // a stall means a replica died, never that the watch is broken
      maxStalledCount: 1_000_000,
    });
    this.#worker.on('error', (error) => logger.warn({ err: error }, 'worker error'));
    this.#metrics = new DaemonMetrics({
      activeByStatus: () => new Map([['any', this.#gauges.active]]),
      outbox: () => this.#gauges.outbox,
      budget: () => ({ ratePerSecond: config.watch.maxRequestsPerSecond, inFlight: 0, queued: 0 }),
    });
    const { delivery } = config.sinks;
    const callback = new WebhookSink({ name: 'callback', secret: secrets.webhookSecret, ...config.sinks.callback });
    this.#outboxes = [...sinks, callback].map(
      (sink) =>
        new PartitionedOutbox(this.#redis, this.#state, sink, {
          replicaId: this.#replicaId,
          retryForMs: delivery.retryForMs,
          backoff: { baseMs: delivery.backoffBaseMs, capMs: delivery.backoffCapMs },
          leaseMs: config.store.leaseMs,
          logger: logger.child({ component: 'outbox', sink: sink.name }),
          onOutcome: (name, outcome) => this.#metrics.delivery(name, outcome),
        }),
    );
    this.#api = createControlApi(
      {
        addWatch: (input) => this.#addWatch(input),
        getWatch: async (id) => watchView(await this.#state.getWatch(id), null),
        listWatches: async (query) => (await this.#state.listWatches(query)).map((w) => watchView(w, w.next_poll_at)!),
        deleteWatch: (id) => this.#deleteWatch(id),
        cancelWatch: (id) => this.#cancelWatch(id),
        eventsAfter: (pos, filter, limit) => this.#state.eventsAfter(pos, filter, limit),
        subscribe: (listener) => {
          this.#listeners.add(listener);
          return () => this.#listeners.delete(listener);
        },
        ready: () => this.#shutdown === null && this.#redis.status === 'ready',
        metrics: async () => ({ contentType: this.#metrics.registry.contentType, body: await this.#metrics.registry.metrics() }),
      },
      { token: secrets.controlToken, maxBodyBytes: config.daemon.maxBodyBytes, callbackHosts: config.daemon.callbackHosts, logger: logger.child({ component: 'api' }) },
    );
  }

  /** Connects to Redis, starts the worker, the outboxes and the control API. */
  static async start(config: DaemonConfig, secrets: DaemonSecrets, logger: Logger): Promise<RedisDaemon> {
    assertSafeBind(config, secrets);
    if (!secrets.redisUrl) throw new ConfigError('store.kind is redis but RUNWATCH_REDIS_URL is not set: set it (or RUNWATCH_REDIS_URL_FILE)');
    const daemon = new RedisDaemon(config, secrets, logger, await createSinks(config, secrets), secrets.redisUrl, await loadDaemonToolHandler(config));
    await daemon.#begin();
    return daemon;
  }

  get address(): AddressInfo {
    if (!this.#address) throw new Error('the daemon is not listening');
    return this.#address;
  }

  async #begin(): Promise<void> {
    if (this.#redis.status !== 'ready') {
      // fail start-up (exit 69) rather than serve a daemon that cannot store anything
      const ready = new Promise<void>((resolve) => this.#redis.once('ready', () => resolve()));
      const timeout = new Promise<void>((_, reject) => setTimeout(() => reject(Object.assign(new Error('Redis did not answer within 10 s'), { code: 'ETIMEDOUT' })), 10_000).unref());
      try {
        await Promise.race([ready, timeout]);
      } catch (error) {
        await this.shutdown();
        throw error;
      }
    }
    void this.#worker.run();
    for (const outbox of this.#outboxes) outbox.start();
    // events committed by other replicas: wake SSE streams when the log grows
    this.#timers.push(setInterval(() => void this.#watchLog(), 250));
    this.#timers.push(setInterval(() => void this.#refreshGauges(), 5_000));
    this.#timers.push(setInterval(() => void this.#prune(), this.#config.retention.pruneIntervalMs));
    this.#address = await listen(this.#api.server, this.#config);
    this.#logger.info({ host: this.#address.address, port: this.#address.port, store: 'redis', replica: this.#replicaId, resumed: await this.#state.activeCount() }, 'daemon listening');
  }

  async #watchLog(): Promise<void> {
    try {
      const pos = await this.#state.lastPosition();
      if (pos !== this.#lastPosition) {
        this.#lastPosition = pos;
        for (const listener of this.#listeners) listener();
      }
    } catch {
      // Redis away: readiness says so; nothing to wake
    }
  }

  async #prune(): Promise<void> {
    try {
      // every replica may prune: deleting an ended watch twice is harmless
      const removed = await this.#state.pruneWatches(Date.now(), this.#config.retention.watchesMs);
      if (removed > 0) this.#logger.info({ removed }, 'pruned ended watches');
    } catch (error) {
      this.#logger.debug({ err: error }, 'pruning failed');
    }
  }

  async #refreshGauges(): Promise<void> {
    try {
      const outbox: Array<{ sink: string; pending: number; dead: number }> = [];
      for (const { sink } of this.#outboxes) {
        let pending = 0;
        for (let p = 0; p < this.#state.partitions; p++) {
          const groups = (await this.#redis.xinfo('GROUPS', this.#state.partitionKey(p)).catch(() => [])) as unknown[][];
          for (const group of groups) {
            const info = pairs(group.map(String));
            if (info.name === sink.name) pending += Number(info.pending ?? 0) + Number(info.lag ?? 0);
          }
        }
        outbox.push({ sink: sink.name, pending, dead: await this.#redis.xlen(`${this.#state.prefix}dead:${sink.name}`) });
      }
      this.#gauges = { active: await this.#state.activeCount(), outbox };
    } catch {
      // Redis away: keep the last figures
    }
  }

  #settings(record: WatchRecord): StepSettings {
    return {
      policy: this.#policy,
      resolveOn: new Set(),
      startedAtMs: record.created_at,
      timeoutMs: undefined,
      expiresGraceMs: this.#config.watch.expiresGraceMs,
      defaultTimeoutMs: this.#config.watch.defaultTimeoutMs,
      stallThresholdMs: this.#config.daemon.stallThresholdMs,
      random: Math.random,
    };
  }

  /** One step of one watch: poll once, act if asked to, commit what changed, then sleep in `delayed` until the next poll. */
  async #process(job: Job<{ watchId: string }>, token: string | undefined): Promise<string> {
    const stored = await this.#state.load(job.data.watchId);
    if (!stored || stored.record.state !== 'active') return 'ended';
    const { record } = stored;
    const settings = this.#settings(record);
    const kind = kindOf(record);
    const target = targetOf(record);
    const progress = stored.progress ?? initialProgress(kind, settings, {}, Date.now());
    if (Date.now() >= progress.deadlineAtMs) {
      await this.#end(record, progress, progress.seq, 'deadline_exceeded', deadlineMessage(progress), progress.lastFailure?.httpStatus);
      return 'deadline';
    }
    const sentAtMs = Date.now();
    if (record.next_poll_at !== null) this.#metrics.pollLateness.observe(Math.max(0, sentAtMs - record.next_poll_at) / 1000);
    const outcome: PollOutcome<Snapshot> = await this.#client.retrieve(kind, target, { watchId: record.id });
    const now = Date.now();
    this.#metrics.polls.inc({ outcome: outcome.ok ? 'ok' : outcome.code });
    this.#metrics.pollLatency.observe((now - sentAtMs) / 1000);
    if (!outcome.ok && outcome.httpStatus === 429) {
      // a 429 pauses the whole fleet, not one replica
      const pauseMs = retryAfterFloorMs(this.#policy, outcome.hints) || 1_000;
      await this.#queue.rateLimit(pauseMs).catch(() => undefined);
    }
    let step: Step = applyOutcome(kind, progress, outcome, settings, now);
    // a stored watch is a run or a response: so are its events
    const events = step.emissions.map((emission) => emissionEvent(kind, record.id, target, emission, now) as StoredWatchEvent);
    if (outcome.ok && step.result.kind === 'continue') {
      const acted = await this.#act(record, step.progress, settings);
      if (acted) {
        events.push(...acted.events);
        step = acted.step;
      }
    }
    if (step.result.kind === 'failed') {
      const failure = step.result.failure;
      await this.#end(record, step.progress, progress.seq, failure.code, `${kind.name} ${kind.path(target)}: ${failure.message}`, failure.httpStatus, events);
      return 'failed';
    }
    const resolved = step.result.kind === 'resolved';
    const next = step.result.kind === 'continue' ? step.result.next : null;
    const committed = await this.#commit(record, progress.seq, step.progress, resolved ? 'finished' : 'active', events, next?.kind === 'poll' ? next.atMs : null);
    if (committed === 'stale') {
      // a cancel over the API wrote an event meanwhile: observe again at once, from the new seq
      await job.moveToDelayed(Date.now() + STALE_RETRY_MS, token);
      throw new DelayedError();
    }
    if (committed !== true || resolved) return committed === true ? 'resolved' : committed;
    if (next?.kind === 'deadline' && next.atMs <= Date.now()) {
      await this.#end(record, step.progress, step.progress.seq, 'deadline_exceeded', deadlineMessage(step.progress), step.progress.lastFailure?.httpStatus);
      return 'deadline';
    }
    await job.moveToDelayed(next!.atMs, token);
    throw new DelayedError();
  }

  /**
   * What the daemon does to a resource after an observation, as the watcher does: answer new
   * tool calls with the tool handler, or cancel a resource stalled past `cancelAfterStallMs`.
   * Returns the events and the step that follows.
   */
  async #act(record: WatchRecord, progress: Progress, settings: StepSettings): Promise<Acted | undefined> {
    const { actions } = record;
    const kind = kindOf(record);
    const target = targetOf(record);
    const context = { watchId: record.id, signal: this.#stopping.signal };
    if (this.#toolHandler && record.kind === 'run' && progress.status === 'requires_action') {
      const calls = toolCallsOf(progress.lastSnapshot);
      const ids = calls.map((call) => call.id);
      if (calls.length > 0 && toolCallsKey(ids) !== actions.handledCalls) {
        // the handler gets until the watch's deadline, and stops when this replica shuts down
        const limit = new AbortController();
        const timer = setTimeout(() => limit.abort(new Error('the watch reached its deadline')), Math.max(1, progress.deadlineAtMs - Date.now()));
        const signal = AbortSignal.any([limit.signal, this.#stopping.signal]);
        try {
          const result = await callToolHandler(this.#toolHandler, progress.lastSnapshot as RunSnapshot, calls, signal);
          if (!result.ok) return this.#acted(record, progress, settings, 'action_failed', { reason: 'submit_tool_outputs', tool_call_ids: ids, error: result.error });
          const answer = await actWithRetries(() => this.#client.act(kind, target, 'submit_tool_outputs', { tool_outputs: result.outputs }, { ...context, signal }), signal);
          if (!answer.ok) return this.#acted(record, progress, settings, 'action_failed', { reason: 'submit_tool_outputs', tool_call_ids: ids, error: errorDetails(answer) });
          return this.#acted(record, progress, settings, 'tool_outputs_submitted', { tool_call_ids: ids }, answer);
        } finally {
          clearTimeout(timer);
        }
      }
    }
    const thresholdMs = this.#config.daemon.cancelAfterStallMs;
    const stalledForMs = Date.now() - progress.statusSinceMs;
    if (thresholdMs !== null && !actions.cancelRequested && progress.status !== null && stalledForMs >= thresholdMs) {
      const answer = await actWithRetries(() => this.#client.act(kind, target, 'cancel', {}, context), this.#stopping.signal);
      if (!answer.ok) return this.#acted(record, progress, settings, 'action_failed', { reason: 'cancel', error: errorDetails(answer) });
      return this.#acted(record, progress, settings, 'cancel_requested', { reason: 'stalled', stalled_for_ms: stalledForMs }, answer);
    }
    return undefined;
  }

  /** The action's event; then the server's answer (the resource after the action) applied like a poll, or the next poll as the policy says. */
  #acted(record: WatchRecord, progress: Progress, settings: StepSettings, name: ActionEventName, details: ActionDetails, answer?: PollOutcome<Snapshot>): Acted {
    // a failure during shutdown may be the shutdown's doing: commit nothing, the job's next owner redoes the step
    if (this.#stopping.signal.aborted && answer?.ok !== true) throw new Error('the daemon shut down during an action; the step is redone');
    const now = Date.now();
    const kind = kindOf(record);
    const target = targetOf(record);
    const event = actionEvent(kind, record.id, target, progress, name, details, now) as StoredWatchEvent;
    const after = { ...progress, seq: event.seq };
    if (!answer) return { events: [event], step: { progress: after, emissions: [], result: { kind: 'continue', next: stepAfterAction(this.#policy, after, now, Math.random) } } };
    const step = applyOutcome(kind, after, answer, settings, now);
    return { events: [event, ...step.emissions.map((emission) => emissionEvent(kind, record.id, target, emission, now) as StoredWatchEvent)], step };
  }

  /**
   * Cancel over the API: POSTs the cancel from this replica, records `cancel_requested` (or
   * `action_failed`) on the watch, and has the watch polled at once to follow the resource.
   */
  async #cancelWatch(id: string): Promise<WatchView | undefined> {
    const stored = await this.#state.load(id);
    if (!stored) return undefined;
    const { record } = stored;
    if (record.state !== 'active') return watchView(record, null);
    const kind = kindOf(record);
    const target = targetOf(record);
    const answer = await actWithRetries(() => this.#client.act(kind, target, 'cancel', {}, { watchId: id, signal: this.#stopping.signal }), this.#stopping.signal);
    await this.#recordAction(id, answer.ok ? 'cancel_requested' : 'action_failed', answer.ok ? { reason: 'requested' } : { reason: 'cancel', error: errorDetails(answer) });
    if (!answer.ok) throw new WatchError(answer.code, `${kind.name} ${kind.path(target)}: ${answer.message}`, { httpStatus: answer.httpStatus });
    // poll now, not at the planned time: the status moves to cancelling or cancelled
    await (await this.#queue.getJob(id))?.promote().catch(() => undefined);
    return watchView(await this.#state.getWatch(id), null);
  }

  /** Appends an action event to a watch, retrying when a poll step committed in between (a few times). */
  async #recordAction(id: string, name: ActionEventName, details: ActionDetails): Promise<void> {
    for (let attempt = 0; attempt < 5; attempt += 1) {
      const stored = await this.#state.load(id);
      if (!stored || stored.record.state !== 'active') return;
      const { record } = stored;
      const progress = stored.progress ?? initialProgress(kindOf(record), this.#settings(record), {}, Date.now());
      const event = actionEvent(kindOf(record), id, targetOf(record), progress, name, details, Date.now()) as StoredWatchEvent;
      const result = await this.#commit(record, record.seq, { ...progress, seq: event.seq }, 'active', [event], undefined);
      if (result !== 'stale') return;
    }
  }

  async #commit(
    record: WatchRecord,
    expectedSeq: number,
    progress: Progress,
    state: WatchState,
    events: readonly StoredWatchEvent[],
    nextPollAt: number | null | undefined,
    extra: Record<string, string> = {},
  ): Promise<true | 'stale' | 'ended' | 'missing'> {
    const now = Date.now();
    const fields: Record<string, string> = {
      ...extra,
      progress: JSON.stringify(progress),
      seq: String(progress.seq),
      status: progress.status ?? '',
      status_since: String(progress.statusSinceMs),
      last_snapshot: progress.lastSnapshot ? JSON.stringify(progress.lastSnapshot) : '',
      updated_at: String(now),
    };
    // undefined keeps the planned poll (an action recorded beside the job's schedule)
    if (nextPollAt !== undefined) fields.next_poll_at = nextPollAt === null ? '' : String(nextPollAt);
    if (state !== 'active') fields.finished_at = String(now);
    // the watch remembers its actions from their events, as the SQLite store does
    for (const event of events) {
      const memory = actionMemoryOf(event);
      if (memory.handledCalls !== undefined) fields.handled_calls = memory.handledCalls ?? '';
      if (memory.cancelRequested) fields.cancel_requested = '1';
    }
    const result = await this.#state.commit(record, expectedSeq, fields, state, events);
    if (result !== true) this.#logger.warn({ watchId: record.id, result }, 'step not committed: another replica or a delete got there first');
    else if (events.length > 0) {
      for (const event of events) this.#metrics.transitions.inc({ status: event.type.slice(event.type.indexOf('.') + 1) });
      for (const outbox of this.#outboxes) outbox.notify();
      for (const listener of this.#listeners) listener();
    }
    return result;
  }

  /** Ends a watch with a `watch.error` (and any events of the same step before it), if its stored seq is still `expectedSeq`. */
  async #end(
    record: WatchRecord,
    progress: Progress,
    expectedSeq: number,
    code: ErrorCode,
    message: string,
    httpStatus: number | undefined,
    before: readonly StoredWatchEvent[] = [],
  ): Promise<void> {
    const event = watchErrorEvent(kindOf(record), record.id, targetOf(record), progress, { code, message, httpStatus }, Date.now()) as StoredWatchEvent & { type: 'watch.error' };
    const state: WatchState = code === 'aborted' ? 'deleted' : 'failed';
    await this.#commit(record, expectedSeq, { ...progress, seq: event.seq }, state, [...before, event], null, { error: JSON.stringify(event.error) });
  }

  async #addWatch(input: NewWatchInput) {
    if (this.#shutdown) return undefined;
    const { watch, created } = await this.#state.createWatch({ id: randomWatchId(), ...input }, Date.now());
    // the job id is the watch id the target maps to: the same run added on two replicas is one job
    if (created) await this.#queue.add('poll', { watchId: watch.id }, { jobId: watch.id, removeOnComplete: true, removeOnFail: 1_000, attempts: 1_000_000, backoff: { type: 'fixed', delay: 1_000 } });
    return { watch: watchView(watch, null)!, created };
  }

  async #deleteWatch(id: string) {
    const stored = await this.#state.load(id);
    if (!stored) return undefined;
    if (stored.record.state === 'active') {
      const progress = stored.progress ?? initialProgress(kindOf(stored.record), this.#settings(stored.record), {}, Date.now());
      await this.#end(stored.record, progress, stored.record.seq, 'aborted', 'the watch was aborted', undefined);
      // an active (locked) job cannot be removed; it finds the watch deleted and ends
      await this.#queue.remove(id).catch(() => undefined);
    }
    return watchView(await this.#state.getWatch(id), null);
  }

  /** Reopens this replica's file sink (SIGHUP, for logrotate). */
  async reopen(): Promise<void> {
    await Promise.all(this.#outboxes.map(async ({ sink }) => (sink instanceof FileSink ? sink.reopen() : undefined)));
  }

  /** Stops accepting, lets polls in flight finish, stops the outboxes, closes connections. Idempotent. */
  shutdown(): Promise<void> {
    this.#shutdown ??= this.#stop();
    return this.#shutdown;
  }

  async #stop(): Promise<void> {
    const step = async (name: string, work: () => Promise<unknown>): Promise<void> => {
      try {
        await work();
      } catch (error) {
        this.#logger.error({ err: error, step: name }, 'shutdown step failed');
      }
    };
    const timeoutMs = this.#config.daemon.shutdownTimeoutMs;
    this.#stopping.abort(new Error('the daemon is shutting down'));
    for (const timer of this.#timers) clearInterval(timer);
    const closed = new Promise<void>((resolve) => this.#api.server.close(() => resolve()));
    this.#api.closeStreams();
    // polls in flight finish within half the budget; after that a job's lock lapses and another replica takes it
    await step('worker', () => Promise.race([this.#worker.close(), new Promise((resolve) => setTimeout(resolve, timeoutMs / 2).unref())]));
    await step('outboxes', () => Promise.all(this.#outboxes.map((o) => o.stop())));
    await step('sinks', () => Promise.allSettled(this.#outboxes.map(async (o) => o.sink.close?.())));
    this.#api.server.closeAllConnections();
    await step('api', () => closed);
    await step('queue', () => this.#queue.close());
    this.#client.close();
    await step('redis', () => this.#redis.quit());
    this.#logger.info('stopped');
  }
}
