import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import type { ToolHandlers } from '../actions.js';
import { loadToolHandlers } from '../actions.js';
import type { Credentials } from '../client.js';
import { ConfigError, ListenError, StoreUnavailableError } from '../errors.js';
import { FileSink } from '../sinks/file.js';
import { loadModuleSink } from '../sinks/module.js';
import type { Sink } from '../sinks/sink.js';
import { RedisStreamSink } from '../sinks/redis-stream.js';
import { StdoutSink } from '../sinks/stdout.js';
import { WebhookSink } from '../sinks/webhook.js';
import { MemoryStore } from '../store/memory.js';
import { RedisStore } from '../store/redis.js';
import type { RedisClient } from '../store/redis.js';
import { fleetBudgetKey, RedisKeys, shardPrefix } from '../store/redis-keys.js';
import { formatLogCursor, ShardedStore } from '../store/sharded.js';
import { SqliteStore } from '../store/sqlite.js';
import type { DeliveryLog, WatchRecord, WatchStore } from '../store/store.js';
import { targetOf } from '../store/store.js';
import { randomWatchId } from '../watcher.js';
import type { FleetView, WatchView } from './api.js';
import { createControlApi } from './api.js';
import type { DaemonConfig } from './config.js';
import { fileSinkPath, isLoopback, pushModeOf } from './config.js';
import type { Engine, EngineSettings } from './engine.js';
import { engineSettings, LocalEngine } from './engine.js';
import { OpenAIHookReceiver } from '../hooks.js';
import { DaemonMetrics } from './metrics.js';
import type { DeliveryPolicy, Outbox } from './outbox.js';
import { OutboxWorker } from './outbox.js';
import { DEFAULT_BUDGET } from '../budget.js';
import { PartitionedOutbox } from './redis-outbox.js';
import { connectRedis, isClusterUrl, redisSeeds } from './redis-client.js';
import { RedisEngine } from './redis-engine.js';
import type { RedisEngineOptions } from './redis-engine.js';
import { ShardedEngine, ShardedOutbox } from './shards.js';
import { startTelemetry } from './telemetry.js';

/** Secrets the daemon uses; never part of the printed config. */
export interface DaemonSecrets {
  readonly credentials: Credentials;
  readonly controlToken?: string | undefined;
  readonly webhookSecret?: string | undefined;
  /** `RUNWATCH_OPENAI_WEBHOOK_SECRET`: the `whsec_` secrets of the OpenAI webhook endpoint (several during a rotation). */
  readonly openaiWebhookSecrets?: readonly string[] | undefined;
  /** `RUNWATCH_REDIS_URL`: the Redis store and the redis-stream sink (it may carry a password). */
  readonly redisUrl?: string | undefined;
}

/** Builds the configured sinks (not the per-watch `callback` sink); throws `ConfigError`. */
export async function createSinks(config: DaemonConfig, secrets: DaemonSecrets): Promise<Sink[]> {
  const sinks: Sink[] = [];
  if (config.sinks.stdout.enabled) sinks.push(new StdoutSink());
  if (config.sinks.file.enabled) sinks.push(new FileSink({ ...config.sinks.file, path: fileSinkPath(config) }));
  if (config.sinks.webhook.url) sinks.push(new WebhookSink({ secret: secrets.webhookSecret, ...config.sinks.webhook, url: config.sinks.webhook.url }));
  if (config.sinks.redisStream.enabled) {
    if (!secrets.redisUrl) throw new ConfigError(REDIS_URL_MISSING.stream);
    sinks.push(new RedisStreamSink({ url: secrets.redisUrl, stream: config.sinks.redisStream.stream, maxLen: config.sinks.redisStream.maxLen }));
  }
  for (const module of config.sinks.modules) sinks.push(await loadModuleSink(module.path, module.options));
  const names = sinks.map((s) => s.name);
  const duplicate = names.find((name, i) => names.indexOf(name) !== i || name === 'callback');
  if (duplicate) throw new ConfigError(`two sinks are named ${duplicate}: give each module sink its own name`);
  return sinks;
}

/** The handlers of the configured module (`daemon.toolHandler`: tool outputs, tool approvals), loaded once at start; throws `ConfigError`. */
export async function loadDaemonToolHandlers(config: DaemonConfig): Promise<ToolHandlers> {
  const module = config.daemon.toolHandler;
  return module ? loadToolHandlers(module.path, module.options) : {};
}

/** A stored watch as the API shows it; `sinkBacklog` is its deliveries not yet made, `null` where the store does not count them. */
export function watchView(record: WatchRecord | undefined, sinkBacklog: number | null = null): WatchView | undefined {
  if (!record) return undefined;
  const progress = record.progress;
  const next = record.state === 'active' ? progress?.next : undefined;
  const failure = record.state === 'active' ? progress?.lastFailure : undefined;
  return {
    ...targetOf(record),
    id: record.id,
    state: record.state,
    status: progress?.status ?? null,
    seq: progress?.seq ?? 0,
    metadata: record.metadata,
    callback_url: record.callback_url,
    next_poll_at: next?.kind === 'poll' ? new Date(next.atMs).toISOString() : null,
    error: record.error,
    last_snapshot: progress?.lastSnapshot ?? null,
    created_at: new Date(record.created_at).toISOString(),
    updated_at: new Date(record.updated_at).toISOString(),
    status_since: progress?.status && progress.statusSinceMs !== undefined ? new Date(progress.statusSinceMs).toISOString() : null,
    polls: progress?.polls ?? 0,
    stalled: record.state === 'active' && progress?.stallReported === true,
    last_error: record.error ? { code: record.error.code, message: record.error.message } : failure ? { code: failure.code, message: failure.message } : null,
    sink_backlog: sinkBacklog,
  };
}

/** Views of stored watches with their sink backlog (one query for the page), where the store counts it per watch. */
async function watchViews(records: readonly WatchRecord[], log: Pick<DeliveryLog, 'backlogByWatch'> | undefined): Promise<WatchView[]> {
  const backlog = log?.backlogByWatch ? await log.backlogByWatch(records.map((record) => record.id)) : undefined;
  return records.map((record) => watchView(record, backlog ? (backlog.get(record.id) ?? 0) : null)!);
}

const REDIS_URL_MISSING = {
  store: 'store.kind is redis but RUNWATCH_REDIS_URL is not set: set it (or RUNWATCH_REDIS_URL_FILE)',
  stream: 'sinks.redisStream is enabled but RUNWATCH_REDIS_URL is not set: set it (or RUNWATCH_REDIS_URL_FILE)',
} as const;

/**
 * The checks `Daemon.start` makes before it opens anything, each throwing `ConfigError`:
 * the start stops at the first, `runwatch config --check` runs them all.
 */
export function preflightChecks(config: DaemonConfig, secrets: DaemonSecrets): Array<() => void> {
  const usesRedis = config.store.kind === 'redis' || config.sinks.redisStream.enabled;
  return [
    () => assertSafeBind(config, secrets),
    () => {
      if (secrets.redisUrl && usesRedis) checkRedisUrl(secrets.redisUrl);
    },
    () => {
      if (!secrets.redisUrl && config.store.kind === 'redis') throw new ConfigError(REDIS_URL_MISSING.store);
    },
    () => {
      if (!secrets.redisUrl && config.sinks.redisStream.enabled) throw new ConfigError(REDIS_URL_MISSING.stream);
    },
    () => {
      if (!secrets.redisUrl || !isClusterUrl(secrets.redisUrl, config.store.cluster)) return;
      if (config.sinks.redisStream.enabled) throw new ConfigError('sinks.redisStream writes to one Redis and RUNWATCH_REDIS_URL names a Redis Cluster: disable the sink or give it a single Redis');
      // a brace in the prefix would be the hash tag instead of the shard's
      if (/[{}]/.test(config.store.prefix)) throw new ConfigError('store.prefix must not hold { or } on a Redis Cluster: each shard adds its own hash tag');
    },
    () => void pushModeOf(config, (secrets.openaiWebhookSecrets ?? []).length > 0),
  ];
}

/** Refuses a public address without a control token (throws `ConfigError`). */
export function assertSafeBind(config: DaemonConfig, secrets: DaemonSecrets): void {
  if (!isLoopback(config.daemon.host) && !secrets.controlToken) {
    throw new ConfigError(
      `refusing to listen on ${config.daemon.host} without a token: set RUNWATCH_CONTROL_TOKEN, or RUNWATCH_CONTROL_TOKEN_FILE to a file holding it (a mounted Docker or Kubernetes secret; every secret has a _FILE variant)`,
    );
  }
}

/** Starts the control API on the configured address; throws `ListenError` when it cannot. */
export async function listen(server: Server, config: DaemonConfig): Promise<AddressInfo> {
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.daemon.port, config.daemon.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'error';
    throw new ListenError(`cannot listen on ${config.daemon.host}:${config.daemon.port} (${code}): pick another --port or --host`, { cause: error });
  }
  return server.address() as AddressInfo;
}

/**
 * Checks `RUNWATCH_REDIS_URL` before anything connects: `redis://` or `rediss://` with a host
 * and a numeric port (several comma-separated: a Redis Cluster's seeds). Throws `ConfigError` naming the setting, never its value (it may carry a password).
 */
export function checkRedisUrl(raw: string): string {
  redisSeeds(raw);
  return raw;
}

/** A part's cleanup, run at shutdown in the reverse order of registration, each despite the others' errors. */
interface CloseHook {
  readonly name: string;
  run(remainingMs: () => number): unknown;
}

/**
 * How long the process may overrun `daemon.shutdownTimeoutMs` before the CLI exits 70: the
 * default 8 s + 1 s stays under Docker's 10 s stop grace.
 */
export const HARD_STOP_MARGIN_MS = 1_000;

/** How long the daemon waits for Redis at start before giving up (exit 69). */
const REDIS_START_TIMEOUT_MS = 10_000;

/**
 * The long-running service: the control API, the metrics, the sinks and their outbox, around
 * an engine. The store kind picks the parts (memory or SQLite: one process's engine and outbox
 * rows; Redis: the fleet's engine and partitioned outbox); everything else is the same.
 */
export class Daemon {
  readonly #config: DaemonConfig;
  readonly #logger: Logger;
  readonly #hooks: CloseHook[] = [];
  readonly #listeners = new Set<() => void>();
  #engine!: Engine;
  /** The store's delivery rows (memory, SQLite), for the backlog per watch; Redis keeps streams. */
  #deliveryLog: DeliveryLog | undefined;
  #outboxes: Outbox[] = [];
  #shutdown: Promise<void> | null = null;
  #address: AddressInfo | null = null;
  #fail: (error: Error) => void = () => undefined;
  /**
   * Rejects when the daemon cannot go on safely (a step could not be written to the store):
   * the caller shuts down and exits non-zero, and the restart resumes from the stored state.
   */
  readonly failed: Promise<never> = new Promise<never>((_, reject) => {
    this.#fail = reject;
  });

  private constructor(config: DaemonConfig, logger: Logger) {
    // nobody may be listening yet; the rejection is still delivered to whoever awaits it later
    this.failed.catch(() => undefined);
    this.#config = config;
    this.#logger = logger;
  }

  /**
   * Opens the store, starts the engine (which resumes every active watch), the sinks and the
   * control API. Throws `ConfigError` for settings that cannot work, `StoreOpenError` /
   * `StoreUnavailableError` when the store cannot be opened or reached, `ListenError`.
   * When `options.signal` aborts (a SIGTERM during the start), the start stops at the next step
   * (waiting for Redis is cut short), closes what it opened and throws the signal's reason.
   */
  static async start(config: DaemonConfig, secrets: DaemonSecrets, logger: Logger, options: { readonly signal?: AbortSignal } = {}): Promise<Daemon> {
    const { signal } = options;
    signal?.throwIfAborted();
    for (const check of preflightChecks(config, secrets)) check();
    const sinks = await createSinks(config, secrets);
    const handlers = await loadDaemonToolHandlers(config);
    const settings = engineSettings(config, secrets, logger, handlers.onRequiresAction, handlers.onToolApproval);
    const daemon = new Daemon(config, logger);
    try {
      await daemon.#begin(secrets, sinks, settings, signal);
    } catch (error) {
      await daemon.shutdown();
      throw error;
    }
    return daemon;
  }

  /** The control API's address once listening. */
  get address(): AddressInfo {
    if (!this.#address) throw new Error('the daemon is not listening');
    return this.#address;
  }

  /** Registers a part's cleanup (fastify's `onClose`): the last registered runs first. */
  #onClose(name: string, run: CloseHook['run']): void {
    this.#hooks.push({ name, run });
  }

  async #begin(secrets: DaemonSecrets, sinks: Sink[], settings: EngineSettings, signal: AbortSignal | undefined): Promise<void> {
    const config = this.#config;
    // first: the engine's tracers come from the provider it registers; last to close, so it flushes every span ended before
    const telemetry = await startTelemetry(process.env, this.#logger.child({ component: 'otel' }));
    if (telemetry) this.#onClose('telemetry', (remainingMs) => telemetry.shutdown(remainingMs()));
    const callback = new WebhookSink({ name: 'callback', secret: secrets.webhookSecret, ...config.sinks.callback });
    const all = [...sinks, callback];
    this.#onClose('sinks', () => Promise.allSettled(all.map(async (sink) => sink.close?.())));
    signal?.throwIfAborted();
    const metrics = new DaemonMetrics({
      activeByStatus: () => this.#engine.activeByStatus(),
      outbox: () => Promise.all(this.#outboxes.map(async (outbox) => ({ sink: outbox.sink.name, ...(await outbox.stats()) }))),
      budget: () => this.#engine.budget(),
      openStreams: () => this.#engine.openStreams(),
      ready: () => this.#ready(),
    });
    const delivery: DeliveryPolicy = {
      retryForMs: config.sinks.delivery.retryForMs,
      backoff: { baseMs: config.sinks.delivery.backoffBaseMs, capMs: config.sinks.delivery.backoffCapMs },
      logger: this.#logger.child({ component: 'outbox' }),
      onOutcome: (name, outcome) => metrics.delivery(name, outcome),
    };
    if (config.store.kind === 'redis') await this.#redisParts(secrets, all, settings, delivery, signal, () => metrics.takeover('partition'));
    else this.#localParts(all, settings, delivery);
    const store = this.#engine.store;
    const secretsOfHook = secrets.openaiWebhookSecrets ?? [];
    const hook =
      secretsOfHook.length === 0
        ? undefined
        : new OpenAIHookReceiver(secretsOfHook, {
            // a fleet shares what it saw; one process, the receiver's own memory
            ...(this.#engine.claimWebhook ? { claimWebhook: (id: string) => this.#engine.claimWebhook!(id) } : {}),
            wakeResponse: (id) => this.#engine.wakeResponse(id),
            count: (outcome) => metrics.webhooks.inc({ outcome }),
            logger: this.#logger.child({ component: 'hooks' }),
          });

    const api = createControlApi(
      {
        addWatch: async (input) => (this.#shutdown ? undefined : this.#added(await this.#engine.add({ id: randomWatchId(), ...input }))),
        getWatch: async (id) => {
          const record = await store.get(id);
          return record && (await watchViews([record], this.#deliveryLog))[0];
        },
        listWatches: async (query) => watchViews(await store.list(query), this.#deliveryLog),
        fleet: () => this.#fleet(metrics),
        deleteWatch: async (id) => watchView(await this.#engine.delete(id)),
        cancelWatch: async (id) => watchView(await this.#engine.cancel(id)),
        eventsAfter: (pos, filter, limit) => store.eventsAfter(pos, filter, limit),
        shardedLog: store instanceof ShardedStore ? { shards: store.shards.length, eventsAfter: (cursor, filter, limit) => store.eventsAfterCursor(cursor, filter, limit) } : undefined,
        subscribe: (listener) => {
          this.#listeners.add(listener);
          return () => this.#listeners.delete(listener);
        },
        ready: () => this.#ready(),
        metrics: async () => ({ contentType: metrics.registry.contentType, body: await metrics.registry.metrics() }),
        hook: hook && { path: config.push.hookPath, receive: (headers, body) => hook.receive(headers, body) },
      },
      { token: secrets.controlToken, maxBodyBytes: config.daemon.maxBodyBytes, callbackHosts: config.daemon.callbackHosts, logger: this.#logger.child({ component: 'api' }) },
    );
    let closed: Promise<void> = Promise.resolve();
    this.#onClose('api connections', async () => {
      api.server.closeAllConnections();
      await closed;
    });

    this.#engine.on('event', (event) => {
      metrics.transition(event);
      for (const outbox of this.#outboxes) outbox.notify();
      this.#wake();
    });
    this.#engine.on('activity', () => this.#wake());
    this.#engine.on('poll', (report) => metrics.poll(report));
    this.#engine.on('takeover', () => metrics.takeover('step'));
    this.#engine.on('error', (error) => {
      // the engine has moved on in memory; only a restart from the store keeps "nothing lost" true
      this.#logger.fatal({ err: error }, 'could not write a step to the store');
      this.#fail(error);
    });
    // half the shutdown budget for steps in flight, the rest for the sinks
    this.#onClose('outboxes', (remainingMs) => Promise.all(this.#outboxes.map((outbox) => outbox.stop(remainingMs()))));
    this.#onClose('engine', (remainingMs) => this.#engine.close(remainingMs() / 2));
    signal?.throwIfAborted();
    const resumed = await this.#engine.start();
    signal?.throwIfAborted();
    for (const outbox of this.#outboxes) outbox.start();

    const prune = setInterval(() => void this.#prune(), config.retention.pruneIntervalMs);
    this.#onClose('timers', () => clearInterval(prune));
    this.#onClose('api', () => {
      // stop accepting at once; the connections left close just before the store
      closed = new Promise<void>((resolve) => api.server.close(() => resolve()));
      api.closeStreams();
    });
    this.#address = await listen(api.server, config);
    this.#logger.info({ host: this.#address.address, port: this.#address.port, store: config.store.kind, resumed, sinks: sinks.map((s) => s.name) }, 'daemon listening');
  }

  /** Memory and SQLite: one process owns every watch; the outbox is a delivery row per event and sink. */
  #localParts(sinks: Sink[], settings: EngineSettings, delivery: DeliveryPolicy): void {
    const config = this.#config;
    const names = sinks.filter((sink) => sink.name !== 'callback').map((sink) => sink.name);
    const store: WatchStore & DeliveryLog = config.store.kind === 'memory' ? new MemoryStore({ sinks: names }) : new SqliteStore(path.join(config.daemon.dataDir, 'runwatch.db'), { sinks: names });
    this.#onClose('store', () => store.close());
    this.#deliveryLog = store;
    this.#engine = new LocalEngine(store, settings);
    this.#outboxes = sinks.map((sink) => new OutboxWorker(store, sink, { ...delivery, concurrency: config.sinks.delivery.concurrency, logger: delivery.logger.child({ sink: sink.name }) }));
  }

  /**
   * Redis: each replica polls the watch partitions it holds by lease; the outbox is partitioned
   * streams with leases. With `store.shards` > 1 or a Redis Cluster, one such keyspace per shard under a hash
   * tag, composed by `ShardedStore` / `ShardedEngine` / `ShardedOutbox`.
   */
  async #redisParts(secrets: DaemonSecrets, sinks: Sink[], settings: EngineSettings, delivery: DeliveryPolicy, signal: AbortSignal | undefined, onTakeover: () => void): Promise<void> {
    const config = this.#config;
    if (!secrets.redisUrl) throw new ConfigError(REDIS_URL_MISSING.store);
    const url = secrets.redisUrl;
    const { shards, cluster } = config.store;
    const clustered = isClusterUrl(url, cluster);
    // our commands fail fast while Redis is away (the store says so); the engines' notices take connections of their own
    const redis = connectRedis(url, cluster, { maxRetriesPerRequest: 1, enableOfflineQueue: false });
    redis.on('error', (error) => this.#logger.debug({ err: error }, 'redis connection error'));
    this.#onClose('redis', () => redis.quit().catch(() => redis.disconnect()));
    await untilReady(redis, signal);
    const engineOptions: RedisEngineOptions = {
      lockDurationMs: config.store.lockDurationMs,
      stalledIntervalMs: config.store.stalledIntervalMs,
      logger: this.#logger.child({ component: 'engine' }),
    };
    const outboxOptions = (store: RedisStore, replicaId: string, sink: Sink) => ({
      ...delivery,
      keys: store.keys,
      partitions: store.partitions,
      replicaId,
      leaseMs: config.store.leaseMs,
      onTakeover,
      logger: delivery.logger.child({ sink: sink.name }),
    });
    if (shards === 1 && !clustered) {
      const store = new RedisStore(redis, config.store.prefix, config.store.partitions);
      this.#onClose('store', () => store.close());
      const engine = new RedisEngine(redis, store, settings, engineOptions);
      this.#engine = engine;
      this.#outboxes = sinks.map((sink) => new PartitionedOutbox(redis, sink, outboxOptions(store, engine.replicaId, sink)));
      return;
    }
    const prefix = config.store.prefix;
    const budget = fleetBudgetKey(prefix);
    const stores = Array.from({ length: shards }, (_, i) => new RedisStore(redis, new RedisKeys(shardPrefix(prefix, i), budget), config.store.partitions));
    const store = new ShardedStore(stores);
    this.#onClose('store', () => store.close());
    const serve = config.store.serveShards ?? stores.map((_, i) => i);
    // the replica's steps in flight stay about watch.maxInFlight, spread over the shards it polls
    const maxInFlight = Math.max(1, Math.ceil((settings.watcher.maxInFlight ?? DEFAULT_BUDGET.maxInFlight) / serve.length));
    const shardSettings: EngineSettings = { ...settings, watcher: { ...settings.watcher, maxInFlight } };
    const engines = stores.map((shard) => new RedisEngine(redis, shard, shardSettings, engineOptions));
    this.#engine = new ShardedEngine(store, engines, { serve });
    const replicaId = engines[0]!.replicaId;
    this.#outboxes = sinks.map((sink) => new ShardedOutbox(sink, stores.map((shard) => new PartitionedOutbox(redis, sink, outboxOptions(shard, replicaId, sink)))));
  }

  /** What `/readyz` and `runwatch_ready` say: the store answers and no shutdown has begun. */
  #ready(): boolean {
    return this.#shutdown === null && this.#engine.store.healthy();
  }

  /** The fleet summary from what the daemon counts already: the engine's counts and budget, the outboxes, the last minute of polls. */
  async #fleet(metrics: DaemonMetrics): Promise<FleetView> {
    const engine = this.#engine;
    const nowMs = Date.now();
    const store = engine.store;
    const [byStatus, outbox, replicas, lastPositions] = await Promise.all([
      engine.activeByStatus(),
      Promise.all(this.#outboxes.map(async (o) => ({ sink: o.sink.name, ...(await o.stats()) }))),
      engine.watchesByReplica?.(),
      store instanceof ShardedStore ? store.lastPositions() : store.lastPosition().then((pos) => [pos]),
    ]);
    const budget = engine.budget();
    return {
      active_by_status: Object.fromEntries(byStatus),
      polls_per_second: metrics.recent.rate(nowMs),
      throttled_share: metrics.recent.throttledShare(nowMs),
      budget: { rate_per_second: budget.ratePerSecond, in_flight: budget.inFlight, queued: budget.queued },
      outbox: outbox.map(({ sink, pending, dead }) => ({ sink, pending, dead })),
      ...(replicas ? { replicas: Object.fromEntries(replicas) } : {}),
      last_event_pos: lastPositions.reduce((sum, pos) => sum + pos, 0),
      last_event_id: formatLogCursor(lastPositions),
    };
  }

  #added(added: { watch: WatchRecord; created: boolean }): { watch: WatchView; created: boolean } {
    return { watch: watchView(added.watch)!, created: added.created };
  }

  /** Streams read the log again. */
  #wake(): void {
    for (const listener of this.#listeners) listener();
  }

  async #prune(): Promise<void> {
    try {
      // every replica may prune: deleting an ended watch twice is harmless
      const removed = await this.#engine.store.prune(Date.now(), this.#config.retention);
      if (removed > 0) this.#logger.info({ removed }, 'pruned delivered events and ended watches');
    } catch (error) {
      this.#logger.warn({ err: error }, 'pruning failed');
    }
  }

  /** Reopens the file sink (SIGHUP, for logrotate). */
  async reopen(): Promise<void> {
    await Promise.all(this.#outboxes.map(async ({ sink }) => (sink instanceof FileSink ? sink.reopen() : undefined)));
  }

  /**
   * Graceful stop, within `shutdownTimeoutMs`: stop accepting, let steps in flight finish,
   * flush what the sinks take, close the store. Each part's cleanup runs even if another
   * fails. Idempotent.
   */
  shutdown(): Promise<void> {
    this.#shutdown ??= this.#stop();
    return this.#shutdown;
  }

  async #stop(): Promise<void> {
    const budgetMs = this.#config.daemon.shutdownTimeoutMs;
    const deadline = Date.now() + budgetMs;
    const remainingMs = (): number => Math.max(0, deadline - Date.now());
    // a daemon that never listened is being taken down after a failed start: its error says it all
    const started = this.#address !== null;
    if (started) this.#logger.info({ timeoutMs: budgetMs }, 'shutting down');
    for (const hook of [...this.#hooks].reverse()) {
      try {
        await hook.run(remainingMs);
      } catch (error) {
        this.#logger.error({ err: error, step: hook.name }, 'shutdown step failed');
      }
    }
    if (started) this.#logger.info('stopped');
  }
}

/** Waits for a Redis connection to be ready; `StoreUnavailableError` after 10 s, the signal's reason when it aborts first. */
async function untilReady(redis: RedisClient, signal: AbortSignal | undefined): Promise<void> {
  if (redis.status === 'ready') return;
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  try {
    await Promise.race([
      new Promise<void>((resolve) => redis.once('ready', () => resolve())),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new StoreUnavailableError(`Redis did not answer within ${REDIS_START_TIMEOUT_MS / 1000} s: check RUNWATCH_REDIS_URL and that Redis is up`)), REDIS_START_TIMEOUT_MS);
        if (!signal) return;
        onAbort = () => reject(signal.reason as Error);
        if (signal.aborted) onAbort();
        else signal.addEventListener('abort', onAbort, { once: true });
      }),
    ]);
  } finally {
    clearTimeout(timer);
    if (onAbort) signal?.removeEventListener('abort', onAbort);
  }
}
