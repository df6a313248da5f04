import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import type { ToolHandler } from '../actions.js';
import { loadToolHandler } from '../actions.js';
import type { Credentials } from '../client.js';
import { ConfigError } from '../errors.js';
import type { WatchEvent } from '../events.js';
import { isResponseEvent, isRunEvent } from '../events.js';
import type { Snapshot } from '../resource.js';
import { FileSink } from '../sinks/file.js';
import { loadModuleSink } from '../sinks/module.js';
import type { Sink } from '../sinks/sink.js';
import { RedisStreamSink } from '../sinks/redis-stream.js';
import { StdoutSink } from '../sinks/stdout.js';
import { WebhookSink } from '../sinks/webhook.js';
import { SqliteStore } from '../store/sqlite.js';
import type { Store, WatchRecord } from '../store/store.js';
import { targetOf } from '../store/store.js';
import type { WatchHandle } from '../watcher.js';
import { randomWatchId, RunWatcher } from '../watcher.js';
import type { NewWatchInput, WatchView } from './api.js';
import { createControlApi } from './api.js';
import type { DaemonConfig } from './config.js';
import { effectiveBaseUrl, isLoopback } from './config.js';
import { DaemonMetrics } from './metrics.js';
import { OutboxWorker } from './outbox.js';

/** Secrets the daemon uses; never part of the printed config. */
export interface DaemonSecrets {
  readonly credentials: Credentials;
  readonly controlToken?: string | undefined;
  readonly webhookSecret?: string | undefined;
  /** `RUNWATCH_REDIS_URL`: needed by the redis-stream sink (it may carry a password). */
  readonly redisUrl?: string | undefined;
}

/** Builds the configured sinks (not the per-watch `callback` sink); throws `ConfigError`. */
export async function createSinks(config: DaemonConfig, secrets: DaemonSecrets): Promise<Sink[]> {
  const sinks: Sink[] = [];
  if (config.sinks.stdout.enabled) sinks.push(new StdoutSink());
  if (config.sinks.file.enabled) sinks.push(new FileSink(config.sinks.file));
  if (config.sinks.webhook.url) sinks.push(new WebhookSink({ secret: secrets.webhookSecret, ...config.sinks.webhook, url: config.sinks.webhook.url }));
  if (config.sinks.redisStream.enabled) {
    if (!secrets.redisUrl) throw new ConfigError('sinks.redisStream is enabled but RUNWATCH_REDIS_URL is not set: set it (or RUNWATCH_REDIS_URL_FILE)');
    sinks.push(new RedisStreamSink({ url: secrets.redisUrl, stream: config.sinks.redisStream.stream, maxLen: config.sinks.redisStream.maxLen }));
  }
  for (const module of config.sinks.modules) sinks.push(await loadModuleSink(module.path, module.options));
  const names = sinks.map((s) => s.name);
  const duplicate = names.find((name, i) => names.indexOf(name) !== i || name === 'callback');
  if (duplicate) throw new ConfigError(`two sinks are named ${duplicate}: give each module sink its own name`);
  return sinks;
}

/** The configured tool handler (`daemon.toolHandler`), loaded once at start; throws `ConfigError`. */
export async function loadDaemonToolHandler(config: DaemonConfig): Promise<ToolHandler | undefined> {
  const module = config.daemon.toolHandler;
  return module ? loadToolHandler(module.path, module.options) : undefined;
}

/** A stored watch as the API shows it. */
export function watchView(record: WatchRecord | undefined, nextPollAtMs: number | null): WatchView | undefined {
  if (!record) return undefined;
  return {
    ...targetOf(record),
    id: record.id,
    state: record.state,
    status: record.status,
    seq: record.seq,
    metadata: record.metadata,
    callback_url: record.callback_url,
    next_poll_at: nextPollAtMs === null ? null : new Date(nextPollAtMs).toISOString(),
    error: record.error,
    last_snapshot: record.last_snapshot,
    created_at: new Date(record.created_at).toISOString(),
    updated_at: new Date(record.updated_at).toISOString(),
  };
}

/** Refuses a public address without a control token (throws `ConfigError`). */
export function assertSafeBind(config: DaemonConfig, secrets: DaemonSecrets): void {
  if (!isLoopback(config.daemon.host) && !secrets.controlToken) {
    throw new ConfigError(`refusing to listen on ${config.daemon.host} without a token: set RUNWATCH_CONTROL_TOKEN (or bind 127.0.0.1)`);
  }
}

/** Starts the control API on the configured address. */
export async function listen(server: Server, config: DaemonConfig): Promise<AddressInfo> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.daemon.port, config.daemon.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server.address() as AddressInfo;
}

/** What the CLI needs from a running daemon, whatever its store. */
export interface RunningDaemon {
  readonly address: AddressInfo;
  /** Rejects when the daemon cannot go on safely; the caller shuts down and exits non-zero. */
  readonly failed: Promise<never>;
  reopen(): Promise<void>;
  shutdown(): Promise<void>;
}

/** How often planned poll times are saved (they are a hint: a restart polls at once anyway). */
const SAVE_NEXT_POLLS_MS = 2_000;

/**
 * The long-running service: watches from the control API live in the store, every event goes
 * through the outbox to every sink at least once, and a restart resumes every active watch.
 */
export class Daemon implements RunningDaemon {
  readonly #config: DaemonConfig;
  readonly #logger: Logger;
  readonly #store: Store;
  readonly #watcher: RunWatcher;
  readonly #workers: OutboxWorker[];
  readonly #sinkNames: string[];
  readonly #handles = new Map<string, WatchHandle>();
  readonly #listeners = new Set<() => void>();
  readonly #metrics: DaemonMetrics;
  readonly #api: ReturnType<typeof createControlApi>;
  readonly #timers: NodeJS.Timeout[] = [];
  readonly #fileSink: FileSink | undefined;
  readonly #toolHandler: ToolHandler | undefined;
  #shutdown: Promise<void> | null = null;
  #address: AddressInfo | null = null;
  #fail: (error: Error) => void = () => undefined;
  /**
   * Rejects when the daemon cannot go on safely (an event could not be written to the store):
   * the caller shuts down and exits non-zero, and the restart resumes from the stored state.
   */
  readonly failed: Promise<never> = new Promise<never>((_, reject) => {
    this.#fail = reject;
  });

  private constructor(config: DaemonConfig, secrets: DaemonSecrets, logger: Logger, sinks: Sink[], toolHandler: ToolHandler | undefined) {
    // nobody may be listening yet; the rejection is still delivered to whoever awaits it later
    this.failed.catch(() => undefined);
    this.#config = config;
    this.#toolHandler = toolHandler;
    this.#logger = logger;
    this.#store = new SqliteStore(path.join(config.daemon.dataDir, 'runwatch.db'));
    this.#fileSink = sinks.find((s): s is FileSink => s instanceof FileSink);
    const { watch } = config;
    this.#watcher = new RunWatcher({
      provider: watch.provider,
      baseUrl: effectiveBaseUrl(config),
      apiVersion: config.watch.apiVersion,
      credentials: secrets.credentials,
      requestTimeoutMs: watch.requestTimeoutMs,
      maxSockets: watch.maxSockets,
      traceId: watch.traceId,
      defaultTimeoutMs: watch.defaultTimeoutMs,
      expiresGraceMs: watch.expiresGraceMs,
      maxInFlight: watch.maxInFlight,
      maxRequestsPerSecond: watch.maxRequestsPerSecond,
      policy: watch.policy,
      stallThresholdMs: config.daemon.stallThresholdMs,
      logger: logger.child({ component: 'watcher' }),
    });
    const callback = new WebhookSink({ name: 'callback', secret: secrets.webhookSecret, ...config.sinks.callback });
    this.#sinkNames = sinks.map((s) => s.name);
    this.#metrics = new DaemonMetrics({
      activeByStatus: () => {
        const counts = new Map<string, number>();
        for (const id of this.#watcher.ids()) {
          const status = this.#watcher.info(id)?.status ?? 'none';
          counts.set(status, (counts.get(status) ?? 0) + 1);
        }
        return counts;
      },
      outbox: () => this.#store.sinkStats(),
      budget: () => this.#watcher.budget,
    });
    const { delivery } = config.sinks;
    this.#workers = [...sinks, callback].map(
      (sink) =>
        new OutboxWorker(this.#store, sink, {
          retryForMs: delivery.retryForMs,
          backoff: { baseMs: delivery.backoffBaseMs, capMs: delivery.backoffCapMs },
          concurrency: delivery.concurrency,
          logger: logger.child({ component: 'outbox', sink: sink.name }),
          onOutcome: (name, outcome) => this.#metrics.delivery(name, outcome),
        }),
    );
    this.#watcher.on('event', (event) => this.#record(event));
    this.#watcher.on('poll', (report) => {
      this.#metrics.polls.inc({ outcome: report.outcome });
      this.#metrics.pollLatency.observe(report.latencyMs / 1000);
      this.#metrics.pollLateness.observe(report.latenessMs / 1000);
    });
    this.#watcher.on('settled', ({ watchId }) => this.#handles.delete(watchId));
    this.#api = createControlApi(
      {
        addWatch: (input) => this.#addWatch(input),
        getWatch: (id) => this.#view(this.#store.getWatch(id)),
        listWatches: (query) => this.#store.listWatches(query).map((w) => this.#view(w)!),
        deleteWatch: (id) => this.#deleteWatch(id),
        cancelWatch: async (id) => {
          await this.#watcher.cancel(id);
          return this.#view(this.#store.getWatch(id));
        },
        eventsAfter: (pos, filter, limit) => this.#store.eventsAfter(pos, filter, limit),
        subscribe: (listener) => {
          this.#listeners.add(listener);
          return () => this.#listeners.delete(listener);
        },
        ready: () => this.#shutdown === null && this.#store.healthy(),
        metrics: async () => ({ contentType: this.#metrics.registry.contentType, body: await this.#metrics.registry.metrics() }),
      },
      {
        token: secrets.controlToken,
        maxBodyBytes: config.daemon.maxBodyBytes,
        callbackHosts: config.daemon.callbackHosts,
        logger: logger.child({ component: 'api' }),
      },
    );
  }

  /**
   * Opens the store, resumes every active watch, starts the sinks and the control API.
   * Throws `ConfigError` for settings that cannot work (a public address without a token).
   */
  static async start(config: DaemonConfig, secrets: DaemonSecrets, logger: Logger): Promise<Daemon> {
    assertSafeBind(config, secrets);
    const sinks = await createSinks(config, secrets);
    const daemon = new Daemon(config, secrets, logger, sinks, await loadDaemonToolHandler(config));
    await daemon.#begin();
    return daemon;
  }

  /** The control API's address once listening. */
  get address(): AddressInfo {
    if (!this.#address) throw new Error('the daemon is not listening');
    return this.#address;
  }

  async #begin(): Promise<void> {
    const active = this.#store.activeWatches();
    for (const record of active) this.#startWatch(record);
    for (const worker of this.#workers) worker.start();
    this.#timers.push(setInterval(() => this.#saveNextPolls(), SAVE_NEXT_POLLS_MS));
    this.#timers.push(setInterval(() => this.#prune(), this.#config.retention.pruneIntervalMs));
    this.#address = await listen(this.#api.server, this.#config);
    this.#logger.info({ host: this.#address.address, port: this.#address.port, resumed: active.length, sinks: this.#sinkNames }, 'daemon listening');
  }

  #startWatch(record: WatchRecord): void {
    if (this.#handles.has(record.id)) return;
    const options = {
      watchId: record.id,
      initial: { status: record.status, seq: record.seq },
      startedAtMs: record.created_at,
      statusSinceMs: record.status_since ?? undefined,
      cancelAfterStallMs: this.#config.daemon.cancelAfterStallMs ?? undefined,
      actionsDone: record.actions,
    };
    const handle: WatchHandle<Snapshot> =
      record.kind === 'run'
        ? this.#watcher.watchRun({ ...options, threadId: record.thread_id, runId: record.run_id, lastSnapshot: record.last_snapshot, onRequiresAction: this.#toolHandler })
        : this.#watcher.watchResponse({ ...options, responseId: record.response_id, lastSnapshot: record.last_snapshot });
    this.#handles.set(record.id, handle);
  }

  #record(event: WatchEvent): void {
    // the store holds runs and responses; thread guards are never started here
    if (!isRunEvent(event) && !isResponseEvent(event)) return;
    try {
      // synchronous: the event, its watch's new state and one delivery per sink, in one transaction
      this.#store.recordEvent(event, this.#sinkNames, Date.now());
    } catch (error) {
      // the engine has moved on in memory; only a restart from the store keeps "nothing lost" true
      this.#logger.fatal({ err: error, eventId: event.id }, 'could not record an event');
      this.#fail(new Error(`could not record event ${event.id}: ${error instanceof Error ? error.message : String(error)}`));
      return;
    }
    this.#metrics.transitions.inc({ status: event.type === 'watch.error' ? 'watch_error' : event.type.slice(event.type.indexOf('.') + 1) });
    for (const worker of this.#workers) worker.notify();
    for (const listener of this.#listeners) listener();
  }

  #addWatch(input: NewWatchInput): { watch: WatchView; created: boolean } | undefined {
    if (this.#shutdown) return undefined;
    const { watch, created } = this.#store.createWatch({ id: randomWatchId(), ...input }, Date.now());
    if (created) this.#startWatch(watch);
    return { watch: this.#view(this.#store.getWatch(watch.id) ?? watch)!, created };
  }

  #deleteWatch(id: string): WatchView | undefined {
    const handle = this.#handles.get(id);
    // aborting emits watch.error (aborted), which the store records as state 'deleted'
    if (handle) handle.abort(new Error('deleted over the control API'));
    else this.#store.markDeleted(id, Date.now());
    return this.#view(this.#store.getWatch(id));
  }

  #view(record: WatchRecord | undefined): WatchView | undefined {
    const live = record?.state === 'active' ? this.#watcher.info(record.id) : undefined;
    return watchView(record, live ? live.nextPollAtMs : (record?.next_poll_at ?? null));
  }

  #saveNextPolls(): void {
    const entries: Array<readonly [string, number | null]> = [];
    for (const id of this.#watcher.ids()) entries.push([id, this.#watcher.info(id)?.nextPollAtMs ?? null]);
    try {
      this.#store.saveNextPolls(entries);
    } catch (error) {
      this.#logger.warn({ err: error }, 'could not save planned poll times');
    }
  }

  #prune(): void {
    try {
      const removed = this.#store.prune(Date.now(), this.#config.retention);
      if (removed > 0) this.#logger.info({ removed }, 'pruned delivered events and ended watches');
    } catch (error) {
      this.#logger.warn({ err: error }, 'pruning failed');
    }
  }

  /** Reopens the file sink (SIGHUP, for logrotate). */
  async reopen(): Promise<void> {
    await this.#fileSink?.reopen();
  }

  /**
   * Graceful stop: stop accepting, stop scheduling, let polls in flight finish, flush what the
   * sinks take, close the store; all within `shutdownTimeoutMs`. Each step runs even if
   * another fails. Idempotent.
   */
  shutdown(): Promise<void> {
    this.#shutdown ??= this.#stop();
    return this.#shutdown;
  }

  async #stop(): Promise<void> {
    const budgetMs = this.#config.daemon.shutdownTimeoutMs;
    const deadline = Date.now() + budgetMs;
    const remaining = (): number => Math.max(0, deadline - Date.now());
    const step = async (name: string, work: () => Promise<void> | void): Promise<void> => {
      try {
        await work();
      } catch (error) {
        this.#logger.error({ err: error, step: name }, 'shutdown step failed');
      }
    };
    this.#logger.info({ timeoutMs: budgetMs }, 'shutting down');
    for (const timer of this.#timers) clearInterval(timer);
    const closed = new Promise<void>((resolve) => this.#api.server.close(() => resolve()));
    await step('stop streams', () => this.#api.closeStreams());
    // half the budget for polls in flight, the rest for the sinks
    await step('drain polls', () => this.#watcher.close({ drainTimeoutMs: remaining() / 2 }));
    await step('save state', () => this.#saveNextPolls());
    await step('flush sinks', async () => {
      await Promise.all(this.#workers.map((w) => w.stop(remaining())));
    });
    await step('close sinks', async () => {
      await Promise.allSettled(this.#workers.map(async (w) => w.sink.close?.()));
    });
    this.#api.server.closeAllConnections();
    await step('close API', () => closed);
    await step('close store', () => this.#store.close());
    this.#logger.info('stopped');
  }
}
