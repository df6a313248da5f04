import { EventEmitter } from 'eventemitter3';
import type { Logger } from 'pino';
import type { ToolApprovalHandler, ToolHandler } from '../actions.js';
import type { Budget, BudgetSnapshot } from '../budget.js';
import type { PollClient } from '../client.js';
import type { PollReport } from '../driver.js';
import { ConfigError } from '../errors.js';
import type { WatchEvent } from '../events.js';
import type { Snapshot } from '../resource.js';
import type { NewWatch, WatchRecord, WatchStore } from '../store/store.js';
import type { PushMode, RunWatcherOptions, WatchHandle } from '../watcher.js';
import { RunWatcher } from '../watcher.js';
import type { DaemonConfig } from './config.js';
import { effectiveBaseUrl, pushModeOf } from './config.js';
import type { DaemonSecrets } from './daemon.js';

/** What an engine tells its host. */
export interface EngineEvents {
  /** An event this process committed (after it was written). */
  event: (event: WatchEvent) => void;
  /** The log grew elsewhere (another replica): streams should read it. */
  activity: () => void;
  /** After each poll this process sent. */
  poll: (report: PollReport) => void;
  /** A step could not be written: the host must stop, a restart resumes from the store. */
  error: (error: Error) => void;
  /** A watch partition whose replica died (its lease lapsed) was taken over by this process (Redis only). */
  takeover: () => void;
}

/**
 * The watch engine a daemon host drives: the `WatchDriver` with a store, a scheduler and a
 * budget. `LocalEngine` (memory, SQLite) keeps every watch in one process's timer heap;
 * `RedisEngine` keeps the watches of the partitions its replica owns in the same heap. The host sees only this.
 */
export interface Engine extends EventEmitter<EngineEvents> {
  readonly store: WatchStore;
  /** Starts polling every active watch of the store; resolves with how many there are. */
  start(): Promise<number>;
  /** Creates a watch (or finds the one for the same target) and makes sure it is polled. */
  add(input: NewWatch): Promise<{ watch: WatchRecord; created: boolean }>;
  /** Stops a watch: its `watch.error` (aborted) is written, its state becomes `deleted`. */
  delete(id: string): Promise<WatchRecord | undefined>;
  /** Cancels the watched resource; rejects with a `WatchError` when the provider refused. */
  cancel(id: string): Promise<WatchRecord | undefined>;
  /** Active watches by last status (`none` before the first poll): this process's, or the fleet's. */
  activeByStatus(): Promise<ReadonlyMap<string, number>>;
  /** The request budget now. */
  budget(): BudgetSnapshot;
  /** Polls the active watch of this background response now (a webhook said it changed); false when none watches it. */
  wakeResponse(responseId: string): Promise<boolean>;
  /**
   * True the first time a webhook id is seen within the replay window, fleet-wide (Redis mode).
   * @default the receiver's memory of this process
   */
  claimWebhook?(webhookId: string): Promise<boolean>;
  /** Active watches owned by each replica (by replica id), Redis mode only: one process owns them all elsewhere. */
  watchesByReplica?(): Promise<ReadonlyMap<string, number>>;
  /** Response streams open in this process. */
  openStreams(): number;
  /** Active watches owned by each replica (Redis mode). */
  watchesByReplica?(): Promise<ReadonlyMap<string, number>>;
  /** Lets steps in flight finish for up to `drainTimeoutMs`, then stops. Idempotent. */
  close(drainTimeoutMs: number): Promise<void>;
}

/** What every engine takes from the configuration: the same client, policy, deadlines, budget and actions. */
export interface EngineSettings {
  readonly watcher: Omit<RunWatcherOptions, 'store' | 'client'>;
  readonly cancelAfterStallMs: number | undefined;
  readonly toolHandler: ToolHandler | undefined;
  /** Approves tool calls of runs that ask for it (Azure's MCP tools). @default undefined (`run.approval_required`, once per set of tool calls) */
  readonly approvalHandler?: ToolApprovalHandler | undefined;
  /** The push signal of response watches (`auto` already resolved). @default 'none' */
  readonly push?: PushMode;
}

/** The engine settings of a daemon configuration (one place for both engines), with the handlers of `daemon.toolHandler`. */
export function engineSettings(config: DaemonConfig, secrets: DaemonSecrets, logger: Logger, toolHandler: ToolHandler | undefined, approvalHandler?: ToolApprovalHandler): EngineSettings {
  const { watch } = config;
  return {
    watcher: {
      provider: watch.provider,
      baseUrl: effectiveBaseUrl(config),
      apiVersion: watch.apiVersion,
      credentials: watch.portkeyProvider === null ? secrets.credentials : { ...secrets.credentials, portkeyProvider: watch.portkeyProvider },
      maxResponseBytes: watch.maxResponseBytes ?? undefined,
      requestTimeoutMs: watch.requestTimeoutMs,
      maxSockets: watch.maxSockets,
      traceId: watch.traceId,
      defaultTimeoutMs: watch.defaultTimeoutMs,
      expiresGraceMs: watch.expiresGraceMs,
      maxInFlight: watch.maxInFlight,
      maxRequestsPerSecond: watch.maxRequestsPerSecond,
      burst: watch.burst ?? undefined,
      policy: watch.policy,
      stallThresholdMs: config.daemon.stallThresholdMs,
      safetyNet: { baseMs: config.push.safetyNetBaseMs, capMs: config.push.safetyNetCapMs },
      streams: { maxStreams: config.push.maxStreams },
      logger: logger.child({ component: 'engine' }),
    },
    cancelAfterStallMs: config.daemon.cancelAfterStallMs ?? undefined,
    toolHandler,
    approvalHandler,
    push: pushModeOf(config, (secrets.openaiWebhookSecrets ?? []).length > 0),
  };
}

/** What a `LocalEngine` polls through instead of its own client and budget (a Redis replica's). */
export interface LocalEnginePorts {
  /** Not closed by the engine. @default an `ApiClient` from the settings */
  readonly client?: PollClient;
  /** Closed with the engine. @default a `LocalBudget` from the settings */
  readonly budget?: Budget;
}

/**
 * The engine of one process (memory and SQLite stores): a `RunWatcher` writing every step to
 * the store, every active watch in its timer heap. A restart resumes every active watch.
 * `RedisEngine` runs one of these over the watches of the partitions its replica owns.
 */
export class LocalEngine extends EventEmitter<EngineEvents> implements Engine {
  readonly store: WatchStore;
  readonly #watcher: RunWatcher;
  readonly #settings: EngineSettings;
  readonly #handles = new Map<string, WatchHandle<Snapshot>>();

  constructor(store: WatchStore, settings: EngineSettings, ports: LocalEnginePorts = {}) {
    super();
    this.store = store;
    this.#settings = settings;
    this.#watcher = new RunWatcher({ ...settings.watcher, ...ports, store });
    this.#watcher.on('event', (event) => this.emit('event', event));
    this.#watcher.on('poll', (report) => this.emit('poll', report));
    this.#watcher.on('error', (error) => this.emit('error', error));
    this.#watcher.on('settled', ({ watchId }) => this.#handles.delete(watchId));
  }

  async start(): Promise<number> {
    for await (const record of this.store.active()) this.resume(record);
    return this.#handles.size;
  }

  async add(input: NewWatch): Promise<{ watch: WatchRecord; created: boolean }> {
    const added = await this.store.create(input, Date.now());
    if (added.watch.state === 'active') this.resume(added.watch);
    return added;
  }

  /** True while this engine polls the watch. */
  has(id: string): boolean {
    return this.#handles.has(id);
  }

  /** How many watches this engine polls. */
  get size(): number {
    return this.#handles.size;
  }

  /** The ids of the watches this engine polls. */
  ids(): IterableIterator<string> {
    return this.#handles.keys();
  }

  /** Lets a watch go without writing anything, once its step in flight is over (see `RunWatcher.suspend`); false when not polled here. */
  suspend(id: string): Promise<boolean> {
    return this.#watcher.suspend(id);
  }

  async delete(id: string): Promise<WatchRecord | undefined> {
    const handle = this.#handles.get(id);
    if (handle) {
      // the abort writes the watch.error (aborted), which ends the watch as deleted
      handle.abort(new Error('deleted over the control API'));
      await handle.promise.catch(() => undefined);
    }
    return this.store.get(id);
  }

  async cancel(id: string): Promise<WatchRecord | undefined> {
    if (!this.#handles.has(id)) return this.store.get(id);
    try {
      await this.#watcher.cancel(id);
    } catch (error) {
      // it ended meanwhile: the caller sees its state
      if (!(error instanceof ConfigError)) throw error;
    }
    return this.store.get(id);
  }

  activeByStatus(): Promise<ReadonlyMap<string, number>> {
    const counts = new Map<string, number>();
    for (const id of this.#watcher.ids()) {
      const status = this.#watcher.info(id)?.status ?? 'none';
      counts.set(status, (counts.get(status) ?? 0) + 1);
    }
    return Promise.resolve(counts);
  }

  budget(): BudgetSnapshot {
    return this.#watcher.budget;
  }

  wakeResponse(responseId: string): Promise<boolean> {
    return Promise.resolve(this.#watcher.wakeResponse(responseId) > 0);
  }


  openStreams(): number {
    return this.#watcher.openStreams;
  }

  close(drainTimeoutMs: number): Promise<void> {
    return this.#watcher.close({ drainTimeoutMs });
  }

  /** Polls a stored active watch from its progress (at once, or after a server's retry-after); a no-op when already polled. */
  resume(record: WatchRecord): void {
    if (this.#handles.has(record.id)) return;
    const options = { watchId: record.id, startedAtMs: record.created_at, progress: record.progress ?? undefined, cancelAfterStallMs: this.#settings.cancelAfterStallMs };
    const handle: WatchHandle<Snapshot> =
      record.kind === 'run'
        ? this.#watcher.watchRun({ ...options, threadId: record.thread_id, runId: record.run_id, onRequiresAction: this.#settings.toolHandler, onToolApproval: this.#settings.approvalHandler })
        : this.#watcher.watchResponse({ ...options, responseId: record.response_id, push: this.#settings.push });
    this.#handles.set(record.id, handle);
  }
}
