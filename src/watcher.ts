import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'eventemitter3';
import { pino } from 'pino';
import type { Logger } from 'pino';
import type { ToolApprovalHandler, ToolHandler } from './actions.js';
import type { Budget, BudgetOptions } from './budget.js';
import { DEFAULT_BUDGET, LocalBudget } from './budget.js';
import type { ClientOptions, Credentials, PollClient } from './client.js';
import { ApiClient, assertValidHeader } from './client.js';
import type { CommitPort, PollReport, StepEnd, Watch } from './driver.js';
import { WatchDriver } from './driver.js';
import type { ErrorCode } from './errors.js';
import { ConfigError, WatchError } from './errors.js';
import type { WatchEvent } from './events.js';
import type { HeapEntry } from './queues.js';
import { Fifo, MinHeap } from './queues.js';
import type { ResourceKind, ResponseSnapshot, RunSnapshot, Snapshot, ThreadSnapshot } from './resource.js';
import { assertValidId, RESPONSE_KIND, RUN_KIND, THREAD_KIND } from './resource.js';
import type { NextStep, PartialPollPolicy, PollPolicy, SafetyNet } from './schedule.js';
import { DEFAULT_DEADLINES, MAX_TIMER_MS, nextDelayMs, planNextStep, resolvePollPolicy, safetyNetPolicy } from './schedule.js';
import type { Progress, StepSettings, StoredProgress } from './step.js';
import { resumeProgress, resumeStep } from './step.js';
import type { StreamOptions } from './stream.js';
import { ResponseStreams } from './stream.js';
import { activeContext } from './telemetry.js';

export type { RequiresActionContext, ToolApproval, ToolApprovalHandler, ToolCall, ToolHandler, ToolOutput } from './actions.js';
export type { PollReport } from './driver.js';

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
  /**
   * A budget to take request slots from instead of this watcher's own (the Redis fleet's);
   * closed by `close()`.
   * @default a `LocalBudget` from the options above
   */
  readonly budget?: Budget;
  /**
   * Where every step is written before its events are emitted (the daemon's store).
   * @default none: the watches live in this object's memory only
   */
  readonly store?: CommitPort;
  /**
   * How a watch with a push signal (`push: 'stream'` while its stream is open, `push:
   * 'webhook'`) polls: slowly, only to catch a lost signal. Every status starts at `baseMs`,
   * doubles on each unchanged poll, up to `capMs`.
   * @default { baseMs: 30000, capMs: 300000 }
   */
  readonly safetyNet?: SafetyNet;
  /** Limits of the response streams (`push: 'stream'`). @default DEFAULT_STREAMS */
  readonly streams?: StreamOptions;
  /**
   * OpenTelemetry: a client span per request (poll, tool outputs, cancel), child of the
   * watch's `runwatch.watch` span. Only with an SDK registered, like every span.
   * @default true when the logger is at debug level, else false
   */
  readonly tracePolls?: boolean;
}

/**
 * How a background response watch learns of a change besides polling: `none` polls as the
 * policy says; `stream` holds the response's resume stream open (a terminal event triggers
 * the confirming poll) and polls on the safety net meanwhile, or as usual when the server will
 * not stream it or every stream slot is taken; `webhook` polls on the safety net from the
 * start and counts on `wakeResponse()` (the daemon's `/v1/hooks/openai`) to poll at once.
 */
export type PushMode = 'none' | 'stream' | 'webhook';

/** Every push mode. */
export const PUSH_MODES: readonly PushMode[] = ['none', 'stream', 'webhook'];

/** Options of one watch, whatever it watches. */
export interface WatchOptions {
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
  /** Resume: when the watch first started (deadlines count from it). @default now */
  readonly startedAtMs?: number;
  /**
   * Resume from a stored progress (status, seq, what was done already) instead of from scratch;
   * the first poll is sent at once.
   * @default a fresh watch
   */
  readonly progress?: StoredProgress;
  /**
   * Cancel the resource (`POST .../cancel`) when it stays in one non-terminal status this
   * long, and emit `<prefix>.cancel_requested` with `reason: "stalled"`; the watch then goes
   * on until the resource is cancelled.
   * @default undefined (never)
   */
  readonly cancelAfterStallMs?: number;
}

/** Options of one run watch. */
export interface WatchRunOptions extends WatchOptions {
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
  /**
   * Approves tool calls for the run (Azure's MCP tools): called at each `requires_action` whose
   * `required_action.type` is `submit_tool_approval`, with new tool calls; its approvals are
   * submitted (`tool_approvals`) and the watch goes on. Needs a client with `act`.
   * @default undefined (the watch emits `run.approval_required` once per set of tool calls and waits for a person)
   */
  readonly onToolApproval?: ToolApprovalHandler;
}

/** Options of a thread guard: wait until a thread has no active run. */
export interface WatchThreadOptions extends Omit<WatchOptions, 'cancelAfterStallMs' | 'resolveOn'> {
  /** The thread id (`thread_...`). */
  readonly threadId: string;
}

/** Options of one background response watch. */
export interface WatchResponseOptions extends WatchOptions {
  /** The response id (`resp_...`), of a response created with `background: true`. */
  readonly responseId: string;
  /**
   * The push signal this watch counts on besides polling (see `PushMode`); `stream` needs a
   * response created with `stream: true`.
   * @default 'none'
   */
  readonly push?: PushMode;
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
  /**
   * A step could not be written to the `store`: its watch stops (its promise rejects with this
   * error, no event) and the host should stop and resume from the store.
   */
  error: (error: Error) => void;
}

interface LiveWatch extends Watch {
  /** What the driver steps with: `base`, or `net` while a push signal covers the watch. */
  settings: StepSettings;
  readonly base: StepSettings;
  /** The settings with the safety-net policy (`base` for a watch without a push signal). */
  readonly net: StepSettings;
  readonly push: PushMode;
  /** The watch was woken while its step ran: the next poll is at once. */
  wakePending: boolean;
  readonly onEvent: ((event: WatchEvent) => void) | undefined;
  /** Aborted when the watch ends: the request in flight and a tool handler stop. */
  readonly controller: AbortController;
  /** Its entry in the timer heap; any other entry of it there is stale and skipped (one object per plan, not two). */
  planned: HeapEntry<LiveWatch> | null;
  /** The planned step, `null` while a step runs. */
  step: NextStep | null;
  /** Off the books: no step is planned or started any more. */
  done: boolean;
  /** Its promise is settled and `settled` was emitted. */
  finished: boolean;
  /** Its last task (a step, a cancel): a suspend waits for it. */
  task: Promise<unknown> | null;
  resolve: (snapshot: Snapshot) => void;
  reject: (error: WatchError<Snapshot>) => void;
  detach: () => void;
}

/** The `resolveOn` of the usual watch: one shared empty set, where a set each costs about 200 bytes a watch. */
const NO_STATUSES: ReadonlySet<string> = new Set();

/** Creates a random watch id: `w_` and 20 hex digits. */
export function randomWatchId(): string {
  return `w_${randomBytes(10).toString('hex')}`;
}

/**
 * Watches many runs in one process: one timer heap, one HTTP agent, one request budget, and
 * the engine's `WatchDriver` for every step. Emits `event` for every transition and watch
 * error. `watchRun()` is one watch on one of these.
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
  readonly #budget: Budget;
  readonly #store: CommitPort | undefined;
  readonly #driver: WatchDriver;
  readonly #logger: Logger;
  readonly #random: () => number;
  readonly #defaultTimeoutMs: number;
  readonly #expiresGraceMs: number;
  readonly #stallThresholdMs: number | undefined;
  readonly #watches = new Map<string, LiveWatch>();
  /** Response watches by response id, for `wakeResponse`. */
  readonly #byResponse = new Map<string, LiveWatch[]>();
  readonly #safetyNet: PollPolicy;
  readonly #streamOptions: StreamOptions | undefined;
  /** Created with the first `push: 'stream'` watch. */
  #streams: ResponseStreams | undefined;
  readonly #heap = new MinHeap<LiveWatch>();
  /** Due watches whose step waits to start: a reference each, where a started step would hold its whole frame. */
  readonly #ready = new Fifo<LiveWatch>();
  /** Steps started and not yet past the budget are kept to this many; the rest wait in `#ready`. */
  readonly #maxQueued: number;
  /** Steps and actions running: close() waits until none is. */
  #running = 0;
  #drained: (() => void) | null = null;
  #timer: NodeJS.Timeout | null = null;
  #timerAtMs = Infinity;
  #closing: Promise<void> | null = null;
  /** Aborted while closing: steps in flight finish, nothing new is planned or started. */
  readonly #draining = new AbortController();
  readonly #closed = new AbortController();

  constructor(options: RunWatcherOptions = {}) {
    super();
    this.policy = resolvePollPolicy(options.policy);
    this.#safetyNet = safetyNetPolicy(this.policy, options.safetyNet);
    this.#streamOptions = options.streams;
    this.#defaultTimeoutMs = checkDuration('defaultTimeoutMs', options.defaultTimeoutMs ?? DEFAULT_DEADLINES.defaultTimeoutMs);
    this.#expiresGraceMs = checkDuration('expiresGraceMs', options.expiresGraceMs ?? DEFAULT_DEADLINES.expiresGraceMs);
    this.#stallThresholdMs = options.stallThresholdMs === undefined ? undefined : checkDuration('stallThresholdMs', options.stallThresholdMs);
    this.#budget = options.budget ?? new LocalBudget(options);
    this.#store = options.store;
    this.#maxQueued = options.maxInFlight ?? DEFAULT_BUDGET.maxInFlight;
    this.#client = options.client ?? new ApiClient(options);
    this.#ownsClient = options.client === undefined;
    this.#logger = options.logger ?? pino({ level: 'silent' });
    this.#random = options.random ?? Math.random;
    this.#driver = new WatchDriver({
      client: this.#client,
      budget: this.#budget,
      store: options.store,
      logger: this.#logger,
      stopping: this.#draining.signal,
      tracePolls: options.tracePolls ?? this.#logger.isLevelEnabled('debug'),
      onEvents: (w, events) => {
        for (const event of events) this.#emitEvent(w as LiveWatch, event);
      },
      onPoll: (report) => {
        if (this.listenerCount('poll') > 0) this.#safeEmit('poll', report);
      },
    });
  }

  /** Number of watches not yet ended. */
  get size(): number {
    return this.#watches.size;
  }

  /** The request budget right now (for metrics); `queued` counts the due polls not yet sent. */
  get budget(): { readonly inFlight: number; readonly ratePerSecond: number; readonly queued: number } {
    const { inFlight, ratePerSecond, queued } = this.#budget.snapshot();
    return { inFlight, ratePerSecond, queued: queued + this.#ready.size };
  }

  /** Ids of the watches not yet ended. */
  ids(): IterableIterator<string> {
    return this.#watches.keys();
  }

  /** Starts watching a run. Throws `InvalidIdError` or `ConfigError` before any request. */
  watchRun(options: WatchRunOptions): WatchHandle<RunSnapshot> {
    for (const name of ['onRequiresAction', 'onToolApproval'] as const) {
      if (options[name] === undefined) continue;
      if (typeof options[name] !== 'function') throw new ConfigError(`${name} must be a function`);
      if (!this.#client.act) throw new ConfigError(`${name} needs a client that can POST (PollClient.act)`);
      if (options.resolveOn?.includes('requires_action')) throw new ConfigError(`${name} and resolveOn requires_action exclude each other: pick one`);
    }
    return this.#start(RUN_KIND, { thread_id: options.threadId, run_id: options.runId }, options, { toolHandler: options.onRequiresAction, approvalHandler: options.onToolApproval });
  }

  /**
   * Starts watching a background response (`GET /responses/{id}`); events are
   * `response.<status>`. Throws `InvalidIdError` or `ConfigError` before any request.
   */
  watchResponse(options: WatchResponseOptions): WatchHandle<ResponseSnapshot> {
    const push = options.push ?? 'none';
    if (!PUSH_MODES.includes(push)) throw new ConfigError(`unknown push ${JSON.stringify(push)}: use ${PUSH_MODES.join(', ')}`);
    return this.#start(RESPONSE_KIND, { response_id: options.responseId }, options, {}, push);
  }

  /**
   * Polls every watch of this background response now (or right after its step in flight): a
   * push signal (an OpenAI webhook) said it changed. The poll decides what happened, so a
   * forged or stale signal costs one request and ends nothing. Returns how many watches woke.
   */
  wakeResponse(responseId: string): number {
    const watches = this.#byResponse.get(responseId) ?? [];
    for (const w of watches) this.#wake(w);
    return watches.length;
  }

  /** Response streams open now (`push: 'stream'`). */
  get openStreams(): number {
    return this.#streams?.size ?? 0;
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
    this.#draining.abort();
    this.#streams?.close();
    // polls waiting for the budget are not in flight: they give up their turn
    this.#budget.close();
    this.#clearTimer();
    this.#heap.clear();
    this.#ready.clear();
    if (drainTimeoutMs > 0 && this.#running > 0) {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, drainTimeoutMs)));
      await Promise.race([this.#idle(), timeout]);
      clearTimeout(timer);
    }
    this.#closed.abort();
    for (const w of [...this.#watches.values()]) {
      this.#finish(w, { ok: false, error: new WatchError('closed', 'the watcher was closed', { lastSnapshot: w.progress.lastSnapshot }) });
    }
    this.#clearTimer();
    this.#heap.clear();
    this.#ready.clear();
    await this.#idle();
    if (this.#ownsClient) this.#client.close();
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
    const result = await this.#track(this.#driver.cancel(w, 'requested'), w);
    if (!result) throw new WatchError('closed', 'the watch stopped before the cancel was recorded');
    // a step in flight plans its own next poll; an end (cancelled at once) ends the watch either way
    if (result.end.kind !== 'next' || w.step !== null) this.#settle(w, result.end);
    if (result.failure) throw this.#driver.errorFrom(w, result.failure);
  }

  /**
   * Lets a watch go without writing anything (another process takes it over, or it is loaded
   * again from the store): its request in flight stops, its promise rejects with code `closed`,
   * no event is emitted. Resolves once its step in flight (if any) is over, so nothing more of
   * it is written after; false when no such watch runs.
   */
  async suspend(watchId: string): Promise<boolean> {
    const w = this.#watches.get(watchId);
    if (!w) return false;
    this.#finish(w, { ok: false, error: new WatchError('closed', 'the watch was suspended: another process or a reload goes on with it', { lastSnapshot: w.progress.lastSnapshot }) });
    await w.task;
    return true;
  }

  #start<TRef extends object, TSnapshot extends Snapshot>(
    kind: ResourceKind<TRef, TSnapshot>,
    ref: TRef,
    options: WatchOptions,
    handlers: Pick<Watch, 'toolHandler' | 'approvalHandler'> = {},
    push: PushMode = 'none',
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
      resolveOn: options.resolveOn === undefined || options.resolveOn.length === 0 ? NO_STATUSES : new Set(options.resolveOn),
      startedAtMs: options.startedAtMs ?? now,
      timeoutMs: options.timeoutMs,
      expiresGraceMs: this.#expiresGraceMs,
      defaultTimeoutMs: this.#defaultTimeoutMs,
      stallThresholdMs: this.#stallThresholdMs,
      cancelAfterStallMs: options.cancelAfterStallMs,
      handlesToolCalls: handlers.toolHandler !== undefined,
      handlesToolApprovals: handlers.approvalHandler !== undefined,
      random: this.#random,
    };
    const controller = new AbortController();
    const net = push === 'none' ? settings : { ...settings, policy: this.#safetyNet };
    const w: LiveWatch = {
      id,
      kind: kind as unknown as ResourceKind<object, Snapshot>,
      ref,
      settings: push === 'webhook' ? net : settings,
      base: settings,
      net,
      push,
      wakePending: false,
      credentials: options.credentials,
      headers: options.headers,
      toolHandler: handlers.toolHandler,
      approvalHandler: handlers.approvalHandler,
      signal: controller.signal,
      progress: resumeProgress(kind as unknown as ResourceKind<object, Snapshot>, settings, options.progress, now),
      // the caller's span (with a context manager registered) is the parent of the watch's
      traceParent: activeContext(),
      // declared here, set at the first step: every watch keeps one shape
      trace: undefined,
      onEvent: options.onEvent,
      controller,
      planned: null,
      step: null,
      done: false,
      finished: false,
      task: null,
      resolve: resolve as (snapshot: Snapshot) => void,
      reject: reject as (error: WatchError<Snapshot>) => void,
      detach: () => undefined,
    };
    const abort = (reason?: unknown): void => this.#abort(w, reason);
    const signal = options.signal;
    this.#watches.set(id, w);
    if (kind === (RESPONSE_KIND as unknown)) {
      const responseId = (ref as { response_id: string }).response_id;
      this.#byResponse.set(responseId, [...(this.#byResponse.get(responseId) ?? []), w]);
    }
    if (signal?.aborted) {
      // nothing was sent; the caller still gets the rejection and the event
      abort(signal.reason);
      return { id, promise, abort: () => undefined };
    }
    if (signal) {
      const onAbort = (): void => abort(signal.reason);
      signal.addEventListener('abort', onAbort, { once: true });
      w.detach = () => signal.removeEventListener('abort', onAbort);
    }
    if (this.#logger.isLevelEnabled('debug')) this.#logger.debug({ watchId: id, deadlineAt: new Date(w.progress.deadlineAtMs).toISOString() }, 'watch started');
    // at once, unless a server's retry-after stored with a resumed watch has not passed yet
    this.#plan(w, resumeStep(w.progress, now));
    return { id, promise, abort };
  }

  /** Ends a watch on request: the request in flight stops, then its `watch.error` (aborted) is written and emitted. */
  #abort(w: LiveWatch, reason: unknown): void {
    if (w.done || this.#closing) return;
    const error = new WatchError('aborted', 'the watch was aborted', { cause: reason, lastSnapshot: w.progress.lastSnapshot });
    this.#stop(w);
    // the watch is already off the books; what is left is recording why
    void this.#track(this.#driver.end(w, error), w, () => this.#finish(w, { ok: false, error }));
  }

  #plan(w: LiveWatch, step: NextStep): void {
    if (this.#draining.signal.aborted || w.done) return;
    // a deadline already reached ends the watch now, not at the next timer
    if (step.kind === 'deadline' && step.atMs <= Date.now()) {
      this.#run(w, step);
      return;
    }
    w.step = step;
    w.planned = this.#heap.push(step.atMs, w);
    this.#arm();
  }

  /** Keeps exactly one timer, at the earliest due entry. */
  #arm(): void {
    if (this.#closing) return;
    const atMs = this.#heap.peek()?.atMs ?? Infinity;
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

  /** Moves every due watch to the ready queue, in due order, and starts what the budget can take. */
  #tick(): void {
    this.#timer = null;
    this.#timerAtMs = Infinity;
    const now = Date.now();
    for (let top = this.#heap.peek(); top && top.atMs <= now; top = this.#heap.peek()) {
      this.#heap.pop();
      const w = top.value;
      if (w.done || w.planned !== top || !w.step) continue;
      w.planned = null;
      this.#ready.push(w);
    }
    this.#pump();
    this.#arm();
  }

  /** Starts ready steps while few wait for the budget; each step that ends starts the next. */
  #pump(): void {
    while (this.#ready.size > 0 && this.#budget.queued < this.#maxQueued && !this.#draining.signal.aborted) {
      const w = this.#ready.shift()!;
      if (!w.done && w.step) this.#run(w, w.step);
    }
  }

  /** Runs one step of a watch; what it returns plans the next. */
  #run(w: LiveWatch, due: NextStep): void {
    w.planned = null;
    w.step = null;
    void this.#track(this.#driver.step(w, due), w, (end) => this.#settle(w, end));
  }

  /** Polls a watch now, or right after the step it is running. */
  #wake(w: LiveWatch): void {
    if (w.done || this.#draining.signal.aborted) return;
    if (w.step === null) w.wakePending = true;
    else if (w.step.atMs > Date.now()) this.#plan(w, { kind: 'poll', atMs: Date.now() });
  }

  /** The response stream of a `push: 'stream'` watch, opened after its first poll when a slot is free. */
  #stream(w: LiveWatch): void {
    this.#streams ??= new ResponseStreams(this.#client, this.#budget, {
      opened: (sw) => this.#pushed(sw as LiveWatch),
      // the stream is over: polling as usual again, and at once, in case it ended in silence
      terminal: (sw) => this.#unpushed(sw as LiveWatch),
      dropped: (sw) => this.#unpushed(sw as LiveWatch),
    }, this.#logger, this.#streamOptions);
    this.#streams.start(w);
  }

  /** A stream delivers: the poll planned by the normal policy moves to the safety net's time. */
  #pushed(w: LiveWatch): void {
    if (w.done || w.settings === w.net) return;
    w.settings = w.net;
    const { progress } = w;
    // a step already due (or running) keeps its turn; only a planned one moves
    if (w.step?.kind !== 'poll' || w.step.atMs <= Date.now()) return;
    const delayMs = nextDelayMs(w.net.policy, { status: progress.status, unchangedPolls: progress.unchangedPolls, consecutiveErrors: progress.consecutiveErrors }, this.#random);
    this.#plan(w, planNextStep(Date.now(), delayMs, progress.deadlineAtMs));
  }

  #unpushed(w: LiveWatch): void {
    if (w.done) return;
    w.settings = w.base;
    this.#wake(w);
  }

  /** What a step's end means for a watch held here. */
  #settle(w: LiveWatch, end: StepEnd): void {
    if (w.done) return;
    if (end.kind === 'next') {
      const now = Date.now();
      const next = w.wakePending && end.next.atMs > now ? { kind: 'poll' as const, atMs: now } : end.next;
      w.wakePending = false;
      this.#plan(w, next);
      if (w.push === 'stream') this.#stream(w);
    } else if (end.kind === 'resolved') this.#finish(w, { ok: true, snapshot: end.snapshot });
    else if (end.kind === 'failed') this.#finish(w, { ok: false, error: end.error });
    else if (end.kind === 'stale') {
      // another writer (a cancel over another replica's API) moved the watch on: go on from what it wrote
      if (end.result === 'stale' && this.#store?.loadProgress) {
        void this.#track(this.#store.loadProgress(w.id), w, (stored) => this.#reload(w, stored));
        return;
      }
      // it ended or vanished meanwhile: only a store shared with another writer gets here
      this.#finish(w, { ok: false, error: new WatchError('closed', `the store refused the step (${end.result}): another writer holds this watch`, { lastSnapshot: w.progress.lastSnapshot }) });
    }
    // 'interrupted': the watch ended, or the watcher closes
  }

  /** Goes on from the stored progress after a refused commit; a watch no longer stored stops. */
  #reload(w: LiveWatch, stored: Progress | undefined): void {
    if (w.done) return;
    if (!stored) {
      this.#finish(w, { ok: false, error: new WatchError('closed', 'the store no longer holds this watch', { lastSnapshot: w.progress.lastSnapshot }) });
      return;
    }
    const now = Date.now();
    w.progress = resumeProgress(w.kind, w.settings, stored, now);
    this.#plan(w, resumeStep(w.progress, now));
  }

  /**
   * Runs a task of a watch (a step, a cancel), counted so close() waits for it, then `onDone`
   * with its result; each one that ends lets the next ready step start. A store that cannot be
   * written stops the watch (no event: the store is the truth) and is reported as `error`.
   */
  #track<T>(task: Promise<T>, w: LiveWatch, onDone?: (value: T) => void): Promise<T | undefined> {
    this.#running += 1;
    const tracked = task.then(
      (value) => {
        this.#ended();
        onDone?.(value);
        this.#pump();
        return value;
      },
      (error: unknown) => {
        this.#ended();
        const failure = error instanceof Error ? error : new Error(String(error));
        this.#logger.error({ err: failure, watchId: w.id }, 'a step failed; the watch stops');
        this.#finish(w, { ok: false, error: new WatchError('closed', `the watch stopped: ${failure.message}`, { cause: failure, lastSnapshot: w.progress.lastSnapshot }) });
        this.#safeEmit('error', failure);
        this.#pump();
        return undefined;
      },
    );
    w.task = tracked;
    return tracked;
  }

  #ended(): void {
    this.#running -= 1;
    if (this.#running === 0) this.#drained?.();
  }

  /** Resolves once no task runs. */
  #idle(): Promise<void> {
    return this.#running === 0 ? Promise.resolve() : new Promise<void>((resolve) => (this.#drained = resolve));
  }

  /** Takes a watch off the books: no more steps, its request and handler stop. */
  #stop(w: LiveWatch): void {
    if (w.done) return;
    w.done = true;
    w.planned = null;
    w.step = null;
    w.controller.abort();
    w.detach();
    this.#watches.delete(w.id);
    if (w.kind === (RESPONSE_KIND as unknown)) this.#unindex(w);
    if (w.push === 'stream') this.#streams?.stop(w.id);
    if (this.#watches.size === 0) {
      // nothing left to poll: drop stale heap entries so no timer keeps the process alive
      this.#heap.clear();
      this.#ready.clear();
      this.#clearTimer();
    }
  }

  #unindex(w: LiveWatch): void {
    const responseId = (w.ref as { response_id: string }).response_id;
    const rest = (this.#byResponse.get(responseId) ?? []).filter((other) => other !== w);
    if (rest.length > 0) this.#byResponse.set(responseId, rest);
    else this.#byResponse.delete(responseId);
  }

  /** Settles a watch's promise once and reports how it ended. */
  #finish(w: LiveWatch, result: { ok: true; snapshot: Snapshot } | { ok: false; error: WatchError<Snapshot> }): void {
    this.#stop(w);
    // a watch that ended ended its span; one closed (or refused by the store) suspends it
    this.#driver.release(w);
    if (w.finished) return;
    w.finished = true;
    if (result.ok) {
      w.resolve(result.snapshot);
      this.#safeEmit('settled', { watchId: w.id, ok: true, status: result.snapshot.status });
    } else {
      w.reject(result.error);
      this.#safeEmit('settled', { watchId: w.id, ok: false, code: result.error.code });
    }
  }

  #emitEvent(w: LiveWatch, event: WatchEvent): void {
    if (w.onEvent) {
      try {
        w.onEvent(event);
      } catch (error) {
        this.#logger.error({ err: error, watchId: w.id }, 'onEvent threw; polling goes on');
      }
    }
    this.#safeEmit('event', event);
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
