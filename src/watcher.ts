import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { EventEmitter } from 'eventemitter3';
import { pino } from 'pino';
import type { Logger } from 'pino';
import type { ActionMemory, ToolCall, ToolHandler } from './actions.js';
import { actWithRetries, callToolHandler, errorDetails, toolCallsKey, toolCallsOf } from './actions.js';
import type { BudgetOptions } from './budget.js';
import { RequestBudget } from './budget.js';
import type { ClientOptions, Credentials, PollClient, PollFailure, PollOutcome, ResourceAction } from './client.js';
import { ApiClient, assertValidHeader } from './client.js';
import type { ErrorCode } from './errors.js';
import { ConfigError, WatchError } from './errors.js';
import type { WatchEvent } from './events.js';
import type { ActionEventName } from './events.js';
import { actionEvent, emissionEvent, watchErrorEvent } from './events.js';
import { Fifo, MinHeap } from './queues.js';
import type { ResourceKind, ResponseSnapshot, RunSnapshot, Snapshot, ThreadSnapshot } from './resource.js';
import { assertValidId, RESPONSE_KIND, RUN_KIND, THREAD_KIND } from './resource.js';
import type { NextStep, PartialPollPolicy, PollPolicy } from './schedule.js';
import { MAX_TIMER_MS, resolvePollPolicy } from './schedule.js';
import type { MachineState } from './status.js';
import type { Progress, StepSettings } from './step.js';
import { applyOutcome, deadlineMessage, initialProgress, stepAfterAction } from './step.js';

export type { RequiresActionContext, ToolCall, ToolHandler, ToolOutput } from './actions.js';

/** Defaults of the deadline settings of `RunWatcherOptions`. */
export const DEFAULT_DEADLINES = Object.freeze({ defaultTimeoutMs: 3_600_000, expiresGraceMs: 120_000 });

/** Options of a `RunWatcher`: the HTTP client, the polling policy, the budget, the defaults. */
export interface RunWatcherOptions extends ClientOptions, BudgetOptions {
  /** Overrides of the polling policy; see `DEFAULT_POLL_POLICY`. */
  readonly policy?: PartialPollPolicy;
  /**
   * Deadline of a watch with no explicit timeout and no `expires_at` on its run.
   * @default 3600000 (1 hour)
   */
  readonly defaultTimeoutMs?: number;
  /**
   * Added to a run's `expires_at` to get the deadline when no timeout is given.
   * @default 120000
   */
  readonly expiresGraceMs?: number;
  /**
   * Operational log (pino). Events go to sinks, not here.
   * @default a silent logger
   */
  readonly logger?: Logger;
  /**
   * Random source in [0, 1) for jitter; tests pin it.
   * @default Math.random
   */
  readonly random?: () => number;
  /**
   * Emit `run.stalled` once when a run stays in one non-terminal status this long
   * (a real pain point: runs stuck in `queued`).
   * @default undefined (off)
   */
  readonly stallThresholdMs?: number;
  /** A client to use instead of creating one from the options above (shared, or a test double); not closed by `close()`. */
  readonly client?: PollClient;
}

/** Options of one watch, whatever it watches. */
export interface WatchOptions<TSnapshot extends Snapshot = Snapshot> {
  /**
   * Names the watch in events and logs; must match `^[A-Za-z0-9_-]{1,128}$`.
   * @default a random `w_...` id
   */
  readonly watchId?: string;
  /**
   * Ends the watch with `deadline_exceeded` this long after it starts.
   * @default the run's `expires_at` plus `expiresGraceMs`, else `defaultTimeoutMs`
   */
  readonly timeoutMs?: number;
  /**
   * Non-terminal statuses that also resolve the watch, e.g. `['requires_action']`.
   * @default [] (only terminal statuses resolve)
   */
  readonly resolveOn?: readonly string[];
  /** Credentials for this watch only (other watches keep theirs). */
  readonly credentials?: Credentials;
  /** Extra headers for this watch's requests. */
  readonly headers?: Readonly<Record<string, string>>;
  /** Stops this watch; it rejects with code `aborted` and emits `watch.error`. */
  readonly signal?: AbortSignal;
  /** Called with each event of this watch, before the watcher's `event` listeners. */
  readonly onEvent?: (event: WatchEvent) => void;
  /** Resume from a stored state (status and last seq) instead of from scratch. */
  readonly initial?: MachineState;
  /** Resume: when the watch first started (deadlines count from it). @default now */
  readonly startedAtMs?: number;
  /** Resume: since when the run has had `initial.status` (for stall detection). @default now */
  readonly statusSinceMs?: number;
  /** Resume: the last snapshot seen before. */
  readonly lastSnapshot?: TSnapshot | null;
  /**
   * Resume: what was done already, so it is not done again (the tool-call set handled,
   * whether a cancel was sent).
   * @default nothing done
   */
  readonly actionsDone?: ActionMemory;
  /**
   * Cancel the resource (`POST .../cancel`) when it stays in one non-terminal status this
   * long, and emit `<prefix>.cancel_requested` with `reason: "stalled"`; the watch then goes
   * on until the resource is cancelled.
   * @default undefined (never)
   */
  readonly cancelAfterStallMs?: number;
}

/** Options of one run watch. */
export interface WatchRunOptions extends WatchOptions<RunSnapshot> {
  /** The thread id (`thread_...`). */
  readonly threadId: string;
  /** The run id (`run_...`). */
  readonly runId: string;
  /**
   * Runs tools for the run: called at each `requires_action` with new tool calls; its outputs
   * are submitted and the watch goes on. Needs a client with `act` (the default one has).
   * @default undefined (the watch just reports requires_action)
   */
  readonly onRequiresAction?: ToolHandler;
}

/** Options of a thread guard: wait until a thread has no active run. */
export interface WatchThreadOptions extends Omit<WatchOptions<ThreadSnapshot>, 'cancelAfterStallMs' | 'resolveOn'> {
  /** The thread id (`thread_...`). */
  readonly threadId: string;
}

/** Options of one background response watch. */
export interface WatchResponseOptions extends WatchOptions<ResponseSnapshot> {
  /** The response id (`resp_...`), of a response created with `background: true`. */
  readonly responseId: string;
}

/** A running watch. */
export interface WatchHandle<TSnapshot extends Snapshot = RunSnapshot> {
  /** The watch id. */
  readonly id: string;
  /** Resolves with the last snapshot when a terminal or `resolveOn` status is seen. */
  readonly promise: Promise<TSnapshot>;
  /** Stops the watch (same as aborting its signal). */
  abort(reason?: unknown): void;
}

/** What a watch looks like right now (for the control API and tests). */
export interface WatchInfo {
  readonly id: string;
  readonly status: string | null;
  readonly seq: number;
  /** Epoch ms of the next planned poll, `null` while a poll is running or queued. */
  readonly nextPollAtMs: number | null;
  readonly deadlineAtMs: number;
  readonly consecutiveErrors: number;
  readonly lastError: string | null;
}

/** Reported after every poll, for metrics and benchmarks. */
export interface PollReport {
  readonly watchId: string;
  /** `ok`, `transient` or the permanent error code. */
  readonly outcome: 'ok' | ErrorCode;
  readonly httpStatus?: number | undefined;
  /** Time from send to answer. */
  readonly latencyMs: number;
  /** Time the request was sent after its planned time (budget waits, event-loop lag). */
  readonly latenessMs: number;
}

/** How a watch ended. */
export type SettledReport =
  | { readonly watchId: string; readonly ok: true; readonly status: string }
  | { readonly watchId: string; readonly ok: false; readonly code: ErrorCode };

/** Events of a `RunWatcher`. */
export interface RunWatcherEvents {
  /** Every transition and `watch.error`, the same objects every sink receives. */
  event: (event: WatchEvent) => void;
  /** After each poll. */
  poll: (report: PollReport) => void;
  /** When a watch ends, however it ends. */
  settled: (report: SettledReport) => void;
}

interface WatchState<TRef extends object, TSnapshot extends Snapshot> {
  readonly id: string;
  readonly kind: ResourceKind<TRef, TSnapshot>;
  readonly ref: TRef;
  readonly credentials: Credentials | undefined;
  readonly headers: Readonly<Record<string, string>> | undefined;
  readonly onEvent: ((event: WatchEvent) => void) | undefined;
  /** Created on first use: a pino child per watch is memory that 10,000 silent watches need not hold. */
  logger: Logger | null;
  readonly settings: StepSettings;
  progress: Progress;
  /** Bumped whenever the planned step changes; heap entries of older generations are skipped. */
  generation: number;
  step: NextStep | null;
  /** Aborts the request in flight when the watch ends; one per watch, not per poll (a watch has one request at a time). */
  readonly request: AbortController;
  done: boolean;
  readonly onRequiresAction: ToolHandler | undefined;
  /** The tool call ids last given to the handler: it is called once per set. */
  handledCalls: string | null;
  readonly cancelAfterStallMs: number | undefined;
  cancelRequested: boolean;
  resolve: (snapshot: TSnapshot) => void;
  reject: (error: WatchError<TSnapshot>) => void;
  detach: () => void;
}

type AnyWatch = WatchState<object, Snapshot>;

interface Scheduled {
  readonly watch: AnyWatch;
  readonly generation: number;
}

/** Creates a random watch id: `w_` and 20 hex digits. */
export function randomWatchId(): string {
  return `w_${randomBytes(10).toString('hex')}`;
}

/**
 * Watches many runs in one process: one timer heap, one HTTP agent, one request budget.
 * Emits `event` for every transition and watch error. `watchRun()` is one watch on one of these.
 *
 * @example
 * const watcher = new RunWatcher({ provider: 'openai', credentials: { apiKey } });
 * watcher.on('event', (e) => console.log(e.type));
 * const run = await watcher.watchRun({ threadId, runId }).promise;
 * await watcher.close();
 */
export class RunWatcher extends EventEmitter<RunWatcherEvents> {
  /** The effective polling policy. */
  readonly policy: PollPolicy;
  readonly #client: PollClient;
  readonly #ownsClient: boolean;
  readonly #budget: RequestBudget;
  readonly #logger: Logger;
  readonly #random: () => number;
  readonly #defaultTimeoutMs: number;
  readonly #expiresGraceMs: number;
  readonly #stallThresholdMs: number | undefined;
  readonly #watches = new Map<string, AnyWatch>();
  readonly #heap = new MinHeap<Scheduled>();
  readonly #ready = new Fifo<AnyWatch>();
  readonly #inFlight = new Set<Promise<void>>();
  #timer: NodeJS.Timeout | null = null;
  #timerAtMs = Infinity;
  #closing: Promise<void> | null = null;
  /** Set while closing: polls in flight finish, nothing new is planned. */
  #draining = false;
  readonly #closed = new AbortController();

  constructor(options: RunWatcherOptions = {}) {
    super();
    this.policy = resolvePollPolicy(options.policy);
    this.#defaultTimeoutMs = checkDuration('defaultTimeoutMs', options.defaultTimeoutMs ?? DEFAULT_DEADLINES.defaultTimeoutMs);
    this.#expiresGraceMs = checkDuration('expiresGraceMs', options.expiresGraceMs ?? DEFAULT_DEADLINES.expiresGraceMs);
    this.#stallThresholdMs = options.stallThresholdMs === undefined ? undefined : checkDuration('stallThresholdMs', options.stallThresholdMs);
    this.#budget = new RequestBudget(options);
    this.#client = options.client ?? new ApiClient(options);
    this.#ownsClient = options.client === undefined;
    this.#logger = options.logger ?? pino({ level: 'silent' });
    this.#random = options.random ?? Math.random;
  }

  /** Number of watches not yet ended. */
  get size(): number {
    return this.#watches.size;
  }

  /** The request budget right now (for metrics). */
  get budget(): { readonly inFlight: number; readonly ratePerSecond: number; readonly queued: number } {
    return { inFlight: this.#budget.inFlight, ratePerSecond: this.#budget.currentRatePerSecond, queued: this.#ready.size };
  }

  /** Ids of the watches not yet ended. */
  ids(): IterableIterator<string> {
    return this.#watches.keys();
  }

  /** Starts watching a run. Throws `InvalidIdError` or `ConfigError` before any request. */
  watchRun(options: WatchRunOptions): WatchHandle<RunSnapshot> {
    if (options.onRequiresAction !== undefined) {
      if (typeof options.onRequiresAction !== 'function') throw new ConfigError('onRequiresAction must be a function');
      if (!this.#client.act) throw new ConfigError('onRequiresAction needs a client that can POST (PollClient.act)');
      if (options.resolveOn?.includes('requires_action')) throw new ConfigError('onRequiresAction and resolveOn requires_action exclude each other: pick one');
    }
    return this.#start(RUN_KIND, { thread_id: options.threadId, run_id: options.runId }, options, options.onRequiresAction);
  }

  /**
   * Starts watching a background response (`GET /responses/{id}`); events are
   * `response.<status>`. Throws `InvalidIdError` or `ConfigError` before any request.
   */
  watchResponse(options: WatchResponseOptions): WatchHandle<ResponseSnapshot> {
    return this.#start(RESPONSE_KIND, { response_id: options.responseId }, options);
  }

  /**
   * The thread guard: resolves when the thread's latest run is no longer active (queued,
   * in_progress, requires_action, cancelling), i.e. when messages and runs may be added.
   * Polls `GET /threads/{id}/runs?limit=1` with the policy's intervals for `busy`
   * (`unknown` unless set); events are `thread.busy` and `thread.idle`.
   */
  waitForIdleThread(options: WatchThreadOptions): WatchHandle<ThreadSnapshot> {
    return this.#start(THREAD_KIND, { thread_id: options.threadId }, options);
  }

  /** The current state of a watch, or `undefined` once it ended. */
  info(watchId: string): WatchInfo | undefined {
    const w = this.#watches.get(watchId);
    if (!w) return undefined;
    return {
      id: w.id,
      status: w.progress.status,
      seq: w.progress.seq,
      nextPollAtMs: w.step?.kind === 'poll' ? w.step.atMs : null,
      deadlineAtMs: w.progress.deadlineAtMs,
      consecutiveErrors: w.progress.consecutiveErrors,
      lastError: w.progress.lastFailure?.message ?? null,
    };
  }

  /**
   * The event stream as an async iterable; ends when `signal` aborts or the watcher closes.
   * Events are buffered between reads, so none is missed.
   */
  async *events(signal?: AbortSignal): AsyncGenerator<WatchEvent, void, undefined> {
    const stop = signal ? AbortSignal.any([signal, this.#closed.signal]) : this.#closed.signal;
    const buffer: WatchEvent[] = [];
    let wake: (() => void) | null = null;
    const onEvent = (event: WatchEvent): void => {
      buffer.push(event);
      wake?.();
    };
    const onStop = (): void => wake?.();
    this.on('event', onEvent);
    stop.addEventListener('abort', onStop, { once: true });
    try {
      for (;;) {
        const event = buffer.shift();
        if (event) yield event;
        else if (stop.aborted) return;
        else await new Promise<void>((resolve) => (wake = resolve));
        wake = null;
      }
    } finally {
      this.off('event', onEvent);
      stop.removeEventListener('abort', onStop);
    }
  }

  /**
   * Stops every watch (their promises reject with code `closed`, no event is emitted: the
   * watches are suspended, not ended) and closes the HTTP agent. With `drainTimeoutMs`, polls
   * already in flight may finish first (their transitions are still emitted) for that long.
   * Idempotent.
   */
  close(options: { readonly drainTimeoutMs?: number } = {}): Promise<void> {
    this.#closing ??= this.#close(options.drainTimeoutMs ?? 0);
    return this.#closing;
  }

  async #close(drainTimeoutMs: number): Promise<void> {
    this.#draining = true;
    this.#clearTimer();
    this.#heap.clear();
    this.#ready.clear();
    if (drainTimeoutMs > 0 && this.#inFlight.size > 0) {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, drainTimeoutMs)));
      await Promise.race([Promise.allSettled([...this.#inFlight]), timeout]);
      clearTimeout(timer);
    }
    this.#closed.abort();
    for (const w of [...this.#watches.values()]) {
      this.#end(w, { ok: false, error: new WatchError('closed', 'the watcher was closed', { lastSnapshot: w.progress.lastSnapshot }), emit: false });
    }
    this.#clearTimer();
    this.#heap.clear();
    this.#ready.clear();
    await Promise.allSettled([...this.#inFlight]);
    if (this.#ownsClient) this.#client.close();
  }

  #start<TRef extends object, TSnapshot extends Snapshot>(
    kind: ResourceKind<TRef, TSnapshot>,
    ref: TRef,
    options: WatchOptions<TSnapshot>,
    onRequiresAction?: ToolHandler,
  ): WatchHandle<TSnapshot> {
    if (this.#closing) throw new ConfigError('the watcher is closed');
    kind.validate(ref);
    const id = options.watchId ?? randomWatchId();
    assertValidId('watch id', id);
    if (this.#watches.has(id)) throw new ConfigError(`a watch with id ${id} is already running`);
    if (options.timeoutMs !== undefined) checkDuration('timeoutMs', options.timeoutMs);
    if (options.cancelAfterStallMs !== undefined) {
      checkDuration('cancelAfterStallMs', options.cancelAfterStallMs);
      if (!this.#client.act) throw new ConfigError('cancelAfterStallMs needs a client that can POST (PollClient.act)');
    }
    for (const [name, value] of Object.entries(options.headers ?? {})) assertValidHeader(name, value);
    const now = Date.now();
    const startedAtMs = options.startedAtMs ?? now;
    let resolve!: (snapshot: TSnapshot) => void;
    let reject!: (error: WatchError<TSnapshot>) => void;
    const promise = new Promise<TSnapshot>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    // a caller that only listens to events must not crash the process with an unhandled rejection
    promise.catch(() => undefined);
    const settings: StepSettings = {
      policy: this.policy,
      resolveOn: new Set(options.resolveOn ?? []),
      startedAtMs,
      timeoutMs: options.timeoutMs,
      expiresGraceMs: this.#expiresGraceMs,
      defaultTimeoutMs: this.#defaultTimeoutMs,
      stallThresholdMs: this.#stallThresholdMs,
      random: this.#random,
    };
    const resume = { status: options.initial?.status, seq: options.initial?.seq, statusSinceMs: options.statusSinceMs, lastSnapshot: options.lastSnapshot };
    const w: WatchState<TRef, TSnapshot> = {
      id,
      kind,
      ref,
      credentials: options.credentials,
      headers: options.headers,
      onEvent: options.onEvent,
      logger: null,
      settings,
      progress: initialProgress(kind as unknown as ResourceKind<object, Snapshot>, settings, resume, now),
      generation: 0,
      step: null,
      request: new AbortController(),
      done: false,
      onRequiresAction,
      handledCalls: options.actionsDone?.handledCalls ?? null,
      cancelAfterStallMs: options.cancelAfterStallMs,
      cancelRequested: options.actionsDone?.cancelRequested ?? false,
      resolve,
      reject,
      detach: () => undefined,
    };
    const aw = w as unknown as AnyWatch;
    const abort = (reason?: unknown): void => {
      this.#end(aw, { ok: false, error: new WatchError('aborted', 'the watch was aborted', { cause: reason, lastSnapshot: aw.progress.lastSnapshot }), emit: true });
    };
    const signal = options.signal;
    if (signal?.aborted) {
      // nothing was sent; the caller still gets the rejection and the event
      this.#watches.set(id, aw);
      abort(signal.reason);
      return { id, promise, abort: () => undefined };
    }
    if (signal) {
      const onAbort = (): void => abort(signal.reason);
      signal.addEventListener('abort', onAbort, { once: true });
      w.detach = () => signal.removeEventListener('abort', onAbort);
    }
    this.#watches.set(id, aw);
    this.#log(aw, 'debug')?.debug({ deadlineAt: new Date(w.progress.deadlineAtMs).toISOString() }, 'watch started');
    this.#plan(aw, { kind: 'poll', atMs: now });
    return { id, promise, abort };
  }

  #plan(w: AnyWatch, step: NextStep): void {
    if (this.#draining) return;
    if (step.kind === 'deadline' && step.atMs <= Date.now()) {
      this.#deadline(w);
      return;
    }
    w.generation += 1;
    w.step = step;
    this.#heap.push(step.atMs, { watch: w, generation: w.generation });
    this.#arm();
  }

  /** Keeps exactly one timer, at the earliest due entry or budget refill. */
  #arm(): void {
    if (this.#closing) return;
    let atMs = this.#heap.peek()?.atMs ?? Infinity;
    if (this.#ready.size > 0) {
      const waitMs = this.#budget.waitMs(Date.now());
      if (waitMs !== undefined) atMs = Math.min(atMs, Date.now() + Math.max(waitMs, 1));
    }
    if (atMs === this.#timerAtMs && this.#timer) return;
    this.#clearTimer();
    if (atMs === Infinity) return;
    this.#timerAtMs = atMs;
    this.#timer = setTimeout(() => this.#tick(), Math.min(Math.max(0, atMs - Date.now()), MAX_TIMER_MS));
  }

  #clearTimer(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    this.#timerAtMs = Infinity;
  }

  #tick(): void {
    this.#timer = null;
    this.#timerAtMs = Infinity;
    const now = Date.now();
    for (let top = this.#heap.peek(); top && top.atMs <= now; top = this.#heap.peek()) {
      this.#heap.pop();
      const { watch: w, generation } = top.value;
      if (w.done || generation !== w.generation || !w.step) continue;
      if (w.step.kind === 'deadline') this.#deadline(w);
      else this.#ready.push(w);
    }
    this.#pump();
  }

  /** Starts as many queued polls as the budget allows, in due order. */
  #pump(): void {
    if (this.#draining) return;
    const now = Date.now();
    while (this.#ready.size > 0 && this.#budget.tryAcquire(now)) {
      const w = this.#ready.shift()!;
      if (w.done) {
        this.#budget.release();
        continue;
      }
      const poll = this.#poll(w, now);
      this.#inFlight.add(poll);
      void poll.finally(() => this.#inFlight.delete(poll));
    }
    this.#arm();
  }

  async #poll(w: AnyWatch, sentAtMs: number): Promise<void> {
    const plannedAtMs = w.step?.atMs ?? sentAtMs;
    w.step = null;
    let outcome: PollOutcome<Snapshot>;
    try {
      outcome = await this.#client.retrieve(w.kind, w.ref, { watchId: w.id, signal: w.request.signal, credentials: w.credentials, headers: w.headers });
    } finally {
      this.#budget.release();
    }
    const now = Date.now();
    if (!w.done) {
      this.#report(w, outcome, now - sentAtMs, sentAtMs - plannedAtMs);
      this.#apply(w, outcome, now);
    }
    this.#pump();
  }

  #report(w: AnyWatch, outcome: PollOutcome<Snapshot>, latencyMs: number, latenessMs: number): void {
    if (this.listenerCount('poll') === 0) return;
    this.#safeEmit('poll', {
      watchId: w.id,
      outcome: outcome.ok ? 'ok' : outcome.code,
      httpStatus: outcome.httpStatus,
      latencyMs,
      latenessMs,
    });
  }

  /** Applies one poll outcome: emits what the step says, then plans the next poll or ends. */
  #apply(w: AnyWatch, outcome: PollOutcome<Snapshot>, now: number): void {
    if (!outcome.ok && outcome.aborted) return;
    if (!outcome.ok && outcome.httpStatus === 429) this.#budget.penalize(now);
    const { progress, emissions, result } = applyOutcome(w.kind, w.progress, outcome, w.settings, now);
    w.progress = progress;
    for (const emission of emissions) {
      if (emission.kind === 'transition') this.#log(w, 'info')?.info({ from: emission.from, to: emission.to }, 'status changed');
      else this.#log(w, 'warn')?.warn({ status: emission.status, stalledForMs: emission.stalledForMs }, 'run stalled');
      this.#emitEvent(w, emissionEvent(w.kind, w.id, w.ref, emission, now));
    }
    if (result.kind === 'resolved') {
      this.#end(w, { ok: true, snapshot: result.snapshot });
      return;
    }
    if (result.kind === 'failed') {
      const failure = result.failure;
      this.#log(w, 'warn')?.warn({ code: failure.code, httpStatus: failure.httpStatus, requestId: failure.requestId }, failure.message);
      this.#end(w, { ok: false, error: this.#errorFromFailure(w, failure), emit: true });
      return;
    }
    if (!outcome.ok) {
      // the first of a series is worth a warning; the rest would flood the log
      const level = progress.consecutiveErrors === 1 ? 'warn' : 'debug';
      this.#log(w, level)?.[level]({ httpStatus: outcome.httpStatus, consecutiveErrors: progress.consecutiveErrors, retryAfterMs: outcome.hints.retryAfterMs }, `transient error: ${outcome.message}`);
    }
    if (outcome.ok && w.onRequiresAction && progress.status === 'requires_action' && this.#startToolHandler(w)) return;
    if (outcome.ok && w.cancelAfterStallMs !== undefined && !w.cancelRequested && progress.status !== null && now - progress.statusSinceMs >= w.cancelAfterStallMs) {
      this.#track(this.#cancel(w, 'stalled', now - progress.statusSinceMs));
    }
    this.#plan(w, result.next);
  }

  /**
   * Asks the server to cancel a watched run or response (`POST .../cancel`). Resolves once the
   * server accepted (a `<prefix>.cancel_requested` event is emitted; the watch goes on until
   * the resource is cancelled); rejects with a `WatchError` when it refused.
   */
  async cancel(watchId: string): Promise<void> {
    const w = this.#watches.get(watchId);
    if (!w) throw new ConfigError(`no running watch ${watchId}`);
    if (!this.#client.act) throw new ConfigError('cancel needs a client that can POST (PollClient.act)');
    const failure = await this.#cancel(w, 'requested');
    if (failure) throw this.#errorFromFailure(w, failure);
  }

  /** Cancels and reports; returns the failure, if any (already reported as an event). */
  async #cancel(w: AnyWatch, reason: 'requested' | 'stalled', stalledForMs?: number): Promise<PollFailure | undefined> {
    w.cancelRequested = true;
    const outcome = await this.#act(w, 'cancel', {});
    if (w.done) return undefined;
    if (!outcome.ok) {
      this.#emitAction(w, 'action_failed', { reason: 'cancel', error: errorDetails(outcome) });
      return outcome;
    }
    this.#emitAction(w, 'cancel_requested', stalledForMs === undefined ? { reason } : { reason, stalled_for_ms: stalledForMs });
    this.#apply(w, outcome, Date.now());
    return undefined;
  }

  /** Calls the tool handler for tool calls it has not seen; false when there are none (then polling goes on). */
  #startToolHandler(w: AnyWatch): boolean {
    const run = w.progress.lastSnapshot;
    const calls = toolCallsOf(run);
    const key = toolCallsKey(calls.map((call) => call.id));
    if (calls.length === 0 || key === w.handledCalls || !run) return false;
    w.handledCalls = key;
    // no poll while the handler works, but the deadline still holds (it aborts the handler's signal)
    this.#plan(w, { kind: 'deadline', atMs: w.progress.deadlineAtMs });
    this.#track(this.#runToolHandler(w, run, calls));
    return true;
  }

  async #runToolHandler(w: AnyWatch, run: RunSnapshot, calls: readonly ToolCall[]): Promise<void> {
    const ids = calls.map((call) => call.id);
    // a handler that never settles must not hold close() or the deadline: the watch's signal ends the wait
    const result = await callToolHandler(w.onRequiresAction!, run, calls, w.request.signal);
    if (w.done) return;
    if (!result.ok) {
      this.#log(w, 'warn')?.warn({ toolCalls: ids }, `tool handler failed: ${result.error.message}`);
      this.#emitAction(w, 'action_failed', { reason: 'submit_tool_outputs', tool_call_ids: ids, error: result.error });
      this.#planAgain(w);
      return;
    }
    const outcome = await this.#act(w, 'submit_tool_outputs', { tool_outputs: result.outputs });
    if (w.done) return;
    if (!outcome.ok) {
      this.#emitAction(w, 'action_failed', { reason: 'submit_tool_outputs', tool_call_ids: ids, error: errorDetails(outcome) });
      this.#planAgain(w);
      return;
    }
    this.#emitAction(w, 'tool_outputs_submitted', { tool_call_ids: ids });
    // the answer is the run after the submission: an observation like any poll
    this.#apply(w, outcome, Date.now());
  }

  /** One POST with retries on transient failures; each try takes a slot of the request budget like a poll. */
  async #act(w: AnyWatch, action: ResourceAction, body: unknown): Promise<PollOutcome<Snapshot>> {
    const signal = w.request.signal;
    return actWithRetries(async () => {
      if (!(await this.#acquire(signal))) return { ok: false, retryable: false, code: 'aborted', message: 'request aborted', hints: {}, aborted: true };
      try {
        return await this.#client.act!(w.kind, w.ref, action, body, { watchId: w.id, signal, credentials: w.credentials, headers: w.headers });
      } finally {
        this.#budget.release();
        this.#pump();
      }
    }, signal);
  }

  /** Waits for a slot of the request budget (rate and in-flight), for an action; false when `signal` aborted first. */
  async #acquire(signal: AbortSignal): Promise<boolean> {
    while (!signal.aborted) {
      const now = Date.now();
      if (this.#budget.tryAcquire(now)) return true;
      // no refill time means the in-flight cap is the limit: a poll ends within its request timeout
      await sleep(Math.max(1, this.#budget.waitMs(now) ?? 25), undefined, { signal }).catch(() => undefined);
    }
    return false;
  }

  /** After an action that did not move the resource on: the next poll as the policy says. */
  #planAgain(w: AnyWatch): void {
    this.#plan(w, stepAfterAction(this.policy, w.progress, Date.now(), this.#random));
  }

  #emitAction(w: AnyWatch, action: ActionEventName, details: Parameters<typeof actionEvent>[5]): void {
    const event = actionEvent(w.kind, w.id, w.ref, w.progress, action, details, Date.now());
    w.progress = { ...w.progress, seq: event.seq };
    this.#emitEvent(w, event);
  }

  /** Keeps a background task in the in-flight set, so close() waits for it. */
  #track(task: Promise<unknown>): void {
    const tracked = task.then(
      () => undefined,
      (error: unknown) => this.#logger.error({ err: error }, 'an action failed unexpectedly'),
    );
    this.#inFlight.add(tracked);
    void tracked.finally(() => this.#inFlight.delete(tracked));
  }

  #deadline(w: AnyWatch): void {
    const { progress } = w;
    const error = new WatchError('deadline_exceeded', deadlineMessage(progress), {
      httpStatus: progress.lastFailure?.httpStatus,
      requestId: progress.lastFailure?.requestId,
      lastSnapshot: progress.lastSnapshot,
    });
    this.#log(w, 'warn')?.warn({ code: error.code }, error.message);
    this.#end(w, { ok: false, error, emit: true });
  }

  #errorFromFailure(w: AnyWatch, failure: PollFailure): WatchError<Snapshot> {
    return new WatchError(failure.code, `${w.kind.name} ${w.kind.path(w.ref)}: ${failure.message}`, {
      httpStatus: failure.httpStatus,
      requestId: failure.requestId,
      lastSnapshot: w.progress.lastSnapshot,
    });
  }

  #end(w: AnyWatch, result: { ok: true; snapshot: Snapshot } | { ok: false; error: WatchError<Snapshot>; emit: boolean }): void {
    if (w.done) return;
    w.done = true;
    w.generation += 1;
    w.step = null;
    w.request.abort();
    w.detach();
    this.#watches.delete(w.id);
    if (result.ok) {
      w.resolve(result.snapshot);
      this.#safeEmit('settled', { watchId: w.id, ok: true, status: result.snapshot.status });
    } else {
      if (result.emit) {
        const event = watchErrorEvent(w.kind, w.id, w.ref, w.progress, result.error, Date.now());
        w.progress = { ...w.progress, seq: event.seq };
        this.#emitEvent(w, event);
      }
      w.reject(result.error);
      this.#safeEmit('settled', { watchId: w.id, ok: false, code: result.error.code });
    }
    if (this.#watches.size === 0) {
      // nothing left to poll: drop stale heap entries so no timer keeps the process alive
      this.#heap.clear();
      this.#ready.clear();
      this.#clearTimer();
    }
  }

  #emitEvent(w: AnyWatch, event: WatchEvent): void {
    if (w.onEvent) {
      try {
        w.onEvent(event);
      } catch (error) {
        this.#log(w, 'error')?.error({ err: error }, 'onEvent threw; polling goes on');
      }
    }
    this.#safeEmit('event', event);
  }

  /** The watch's child logger, or `undefined` when `level` is off (the usual case, and then nothing is allocated). */
  #log(w: AnyWatch, level: 'debug' | 'info' | 'warn' | 'error'): Logger | undefined {
    if (!this.#logger.isLevelEnabled(level)) return undefined;
    if (!w.logger) {
      const fields: Record<string, unknown> = { watchId: w.id };
      for (const field of w.kind.idFields) fields[field] = (w.ref as Record<string, unknown>)[field];
      w.logger = this.#logger.child(fields);
    }
    return w.logger;
  }

  /** A throwing listener is logged, never allowed to break the polling loop. */
  #safeEmit<K extends keyof RunWatcherEvents>(name: K, ...args: Parameters<RunWatcherEvents[K]>): void {
    try {
      (this.emit as (name: K, ...rest: Parameters<RunWatcherEvents[K]>) => boolean)(name, ...args);
    } catch (error) {
      this.#logger.error({ err: error, listener: name }, 'a listener threw; polling goes on');
    }
  }
}

function checkDuration(name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0 || value > Number.MAX_SAFE_INTEGER) {
    throw new ConfigError(`Expected \`${name}\` to be a positive number of milliseconds, got ${JSON.stringify(value)}`);
  }
  return value;
}

