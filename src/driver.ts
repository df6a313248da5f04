import type { Context } from '@opentelemetry/api';
import type { Logger } from 'pino';
import type { ToolApproval, ToolApprovalHandler, ToolHandler } from './actions.js';
import { actWithRetries, callApprovalHandler, callToolHandler, errorDetails, toolCallsKey } from './actions.js';
import type { Budget } from './budget.js';
import type { Credentials, PollClient, PollFailure, PollOutcome, ResourceAction } from './client.js';
import { ABORTED } from './client.js';
import type { ErrorCode } from './errors.js';
import { WatchError } from './errors.js';
import type { ActionDetails, ActionEventName, WatchErrorDetails, WatchEvent } from './events.js';
import { actionEvent, emissionEvent, watchErrorEvent } from './events.js';
import type { ResourceKind, RunSnapshot, Snapshot } from './resource.js';
import type { NextStep } from './schedule.js';
import type { ActionDecision, Progress, StepSettings } from './step.js';
import { applyOutcome, deadlineMessage, stepAfterAction } from './step.js';
import type { WatchTrace } from './telemetry.js';
import { endWatchSpan, inWatchContext, recordEvents, startWatchSpan, suspendWatchSpan } from './telemetry.js';

/** Where a watch is in its life, as a store keeps it. */
export type WatchState = 'active' | 'finished' | 'failed' | 'deleted';

/** What a step asks the store to write, in one transaction. */
export interface WatchChange {
  /** The watch's progress after the step: the one record every store persists. */
  readonly progress: Progress;
  /** Events to append (and deliver) in order; may be empty (a checkpoint). */
  readonly events: readonly WatchEvent[];
  /** The watch's state after the step, decided here, never by the store. */
  readonly state: WatchState;
  /** Why the watch ended, with its `watch.error`. */
  readonly error?: WatchErrorDetails | undefined;
}

/** How a commit went: written, or refused because the store moved on (`stale`) or the watch ended or vanished. */
export type CommitResult = 'ok' | 'stale' | 'ended' | 'missing';

/** The part of a store the driver writes through. */
export interface CommitPort {
  /**
   * Writes a change atomically if the stored seq is still `expectedSeq` and the watch is
   * active. A change without events (a checkpoint) may be written later, in a batch; a
   * refusal of it is then silent. Throws when the store cannot be written (the caller stops,
   * a restart resumes).
   */
  commit(watchId: string, expectedSeq: number, change: WatchChange): Promise<CommitResult>;
  /** The stored progress of a watch, to retry an action's commit after another writer moved it on. */
  loadProgress?(watchId: string): Promise<Progress | undefined>;
}

/** One watch as the driver works on it: what it watches, how, and its progress. */
export interface Watch {
  readonly id: string;
  readonly kind: ResourceKind<object, Snapshot>;
  readonly ref: object;
  readonly settings: StepSettings;
  readonly credentials?: Credentials | undefined;
  readonly headers?: Readonly<Record<string, string>> | undefined;
  readonly toolHandler?: ToolHandler | undefined;
  /** Answers a run's requests for tool approvals (Azure's MCP tools). */
  readonly approvalHandler?: ToolApprovalHandler | undefined;
  /** Aborted when the watch ends or its host stops: requests and handlers stop with it. */
  readonly signal: AbortSignal;
  /** Read after every await: another task (a cancel) may have moved it on meanwhile. */
  progress: Progress;
  /** OpenTelemetry: the context the watch was started in; its span is a child of this one's span. @default none (a root span) */
  readonly traceParent?: Context | undefined;
  /**
   * OpenTelemetry: the watch's span, started by the driver at its first step (`null`: none,
   * OpenTelemetry is not in use) and ended when the watch ends or `release` is called.
   */
  trace?: WatchTrace | null | undefined;
}

/** Reported after every poll, for metrics and benchmarks. */
export interface PollReport {
  readonly watchId: string;
  /** `ok`, `transient` or the permanent error code. */
  readonly outcome: 'ok' | ErrorCode;
  readonly httpStatus?: number | undefined;
  /** The failure's one-line message (e.g. `network error ECONNREFUSED`, never a credential); absent on `ok`. */
  readonly message?: string | undefined;
  /** Time from send to answer. */
  readonly latencyMs: number;
  /** Time the request was sent after its planned time (budget waits, event-loop lag). */
  readonly latenessMs: number;
}

/** How a step (or a cancel) ended for the watch. */
export type StepEnd =
  /** Keep watching: poll at a time, or end at the deadline. */
  | { readonly kind: 'next'; readonly next: NextStep }
  /** A terminal or `resolveOn` status was seen: the watch ended well. */
  | { readonly kind: 'resolved'; readonly snapshot: Snapshot }
  /** The watch ended with an error; its `watch.error` was committed. */
  | { readonly kind: 'failed'; readonly error: WatchError<Snapshot> }
  /** Another writer moved the stored watch on (or ended it): load it again before the next step. */
  | { readonly kind: 'stale'; readonly result: Exclude<CommitResult, 'ok'> }
  /** The watch's signal aborted (it ended, or its host stops): nothing more was written. */
  | { readonly kind: 'interrupted' };

/** The ports a driver works through. */
export interface DriverPorts {
  readonly client: PollClient;
  readonly budget: Budget;
  /** Where steps are written; without one nothing is persisted (the library's watcher). */
  readonly store?: CommitPort | undefined;
  readonly logger: Logger;
  /** Aborted when the host stops: no new action starts (its step is redone after the restart). */
  readonly stopping: AbortSignal;
  /** Committed events, in order. */
  onEvents(watch: Watch, events: readonly WatchEvent[]): void;
  /** After each poll. */
  onPoll?(report: PollReport): void;
  /** OpenTelemetry: give each request (poll, action) a client span, child of its watch's. @default false */
  readonly tracePolls?: boolean | undefined;
}

/** How many times an action event is appended again after another writer moved the watch on. */
const ACTION_COMMIT_TRIES = 5;

const INTERRUPTED: StepEnd = Object.freeze({ kind: 'interrupted' });
const NO_EVENTS: readonly WatchEvent[] = Object.freeze([]);

/**
 * The watch loop, written once: poll, apply the outcome, commit, act as the step decides
 * (submit tool outputs or tool approvals, cancel after a stall), commit again. Every host drives it: the
 * library's `RunWatcher`, the SQLite daemon and each Redis replica (over its partitions) from a timer heap.
 * It owns no timer and no watch list: the host schedules what `step` returns.
 */
export class WatchDriver {
  readonly #ports: DriverPorts;

  constructor(ports: DriverPorts) {
    this.#ports = ports;
  }

  /**
   * The host lets this watch object go while the watch goes on (the library closes, a Redis
   * replica hands the watch's partition over): its span ends (`runwatch.watch.outcome` `suspended`) and no other starts for
   * this object. A watch that ended has no span left to end.
   */
  release(w: Watch): void {
    if (w.trace) suspendWatchSpan(w.trace);
    else w.trace = null;
  }

  /** The watch's span, started at its first use; `null` without OpenTelemetry. */
  #trace(w: Watch): WatchTrace | null {
    if (w.trace === undefined) w.trace = startWatchSpan(w, w.traceParent, this.#ports.tracePolls ?? false);
    return w.trace;
  }

  /**
   * One step of a watch: at a planned poll, poll once and act on what was seen; at the
   * deadline, end the watch. Throws only when the store cannot be written.
   */
  async step(w: Watch, due: NextStep): Promise<StepEnd> {
    if (due.kind === 'deadline') return this.end(w, this.#deadlineError(w));
    const { budget, client } = this.#ports;
    if (!(await budget.acquire(w.signal))) return INTERRUPTED;
    const sentAtMs = Date.now();
    let outcome: PollOutcome<Snapshot>;
    try {
      outcome = await client.retrieve(w.kind, w.ref, { watchId: w.id, signal: w.signal, credentials: w.credentials, headers: w.headers, trace: this.#trace(w)?.request, lastSnapshot: w.progress.lastSnapshot });
    } finally {
      budget.release();
    }
    if (w.signal.aborted || (!outcome.ok && outcome.aborted)) return INTERRUPTED;
    const now = Date.now();
    this.#ports.onPoll?.({ watchId: w.id, outcome: outcome.ok ? 'ok' : outcome.code, httpStatus: outcome.httpStatus, message: outcome.ok ? undefined : outcome.message, latencyMs: now - sentAtMs, latenessMs: Math.max(0, sentAtMs - due.atMs) });
    if (!outcome.ok && outcome.httpStatus === 429) budget.penalize(now, outcome.hints.retryAfterMs);
    return this.#observe(w, outcome, now);
  }

  /**
   * Asks the server to cancel the resource; records `<prefix>.cancel_requested` (and applies the
   * answer like a poll) or `<prefix>.action_failed`. Returns the step that follows, and the
   * failure when the server refused.
   */
  async cancel(w: Watch, reason: 'requested' | 'stalled', stalledForMs?: number): Promise<{ end: StepEnd; failure?: PollFailure }> {
    const answer = await this.#act(w, 'cancel', {});
    if (!answer) return { end: INTERRUPTED };
    const memory = { cancelRequested: true };
    if (!answer.ok) return { end: await this.#recordAction(w, 'action_failed', { reason: 'cancel', error: errorDetails(answer) }, memory), failure: answer };
    const details = stalledForMs === undefined ? { reason } : { reason, stalled_for_ms: stalledForMs };
    return { end: await this.#recordAction(w, 'cancel_requested', details, memory, answer) };
  }

  /** Ends a watch with an error: commits its `watch.error` (after `before`), state `deleted` for an abort, else `failed`. */
  async end(w: Watch, error: WatchError<Snapshot>, before: readonly WatchEvent[] = [], progress: Progress = w.progress): Promise<StepEnd> {
    if (error.code !== 'aborted') this.#log('warn', w, { code: error.code, httpStatus: error.httpStatus, requestId: error.requestId }, error.message);
    const event = watchErrorEvent(w.kind, w.id, w.ref, progress, { code: error.code, message: error.message, httpStatus: error.httpStatus }, Date.now());
    const state: WatchState = error.code === 'aborted' ? 'deleted' : 'failed';
    const result = await this.#commit(w, { progress: { ...progress, seq: event.seq, next: null }, events: [...before, event], state, error: event.error });
    return result === 'ok' ? { kind: 'failed', error } : { kind: 'stale', result };
  }

  /** The error of a failed request, naming the resource. */
  errorFrom(w: Watch, failure: PollFailure): WatchError<Snapshot> {
    return new WatchError(failure.code, `${w.kind.name} ${w.kind.path(w.ref)}: ${failure.message}`, {
      httpStatus: failure.httpStatus,
      requestId: failure.requestId,
      lastSnapshot: w.progress.lastSnapshot,
    });
  }

  /** Applies a poll's outcome: commits what it shows, then acts if the step says so. */
  async #observe(w: Watch, outcome: PollOutcome<Snapshot>, now: number): Promise<StepEnd> {
    const { progress, emissions, result } = applyOutcome(w.kind, w.progress, outcome, w.settings, now);
    const events = emissions.length === 0 ? NO_EVENTS : emissions.map((emission) => {
      if (emission.kind === 'transition') this.#log('info', w, { from: emission.from, to: emission.to }, 'status changed');
      else if (emission.kind === 'stalled') this.#log('warn', w, { status: emission.status, stalledForMs: emission.stalledForMs }, 'run stalled');
      else this.#log('info', w, { toolCalls: emission.calls.map((call) => call.id) }, 'run waits for a person to approve tool calls');
      return emissionEvent(w.kind, w.id, w.ref, emission, now);
    });
    if (result.kind === 'failed') return this.end(w, this.errorFrom(w, result.failure), events, progress);
    if (!outcome.ok) {
      // the first of a series is worth a warning; the rest would flood the log
      const level = progress.consecutiveErrors === 1 ? 'warn' : 'debug';
      this.#log(level, w, { httpStatus: outcome.httpStatus, consecutiveErrors: progress.consecutiveErrors, retryAfterMs: outcome.hints.retryAfterMs }, `transient error: ${outcome.message}`);
    }
    const committed = await this.#commit(w, { progress, events, state: result.kind === 'resolved' ? 'finished' : 'active' });
    if (committed !== 'ok') return { kind: 'stale', result: committed };
    if (result.kind === 'resolved') return { kind: 'resolved', snapshot: result.snapshot };
    if (result.action && !this.#ports.stopping.aborted) return this.#decided(w, result.action);
    return { kind: 'next', next: result.next };
  }

  /** Carries out what the step decided. */
  async #decided(w: Watch, action: ActionDecision): Promise<StepEnd> {
    if (action.kind === 'cancel') return (await this.cancel(w, action.reason, action.stalledForMs)).end;
    return this.#answerToolCalls(w, action);
  }

  /**
   * Runs the tool handler (outputs) or the approval handler (approvals) on new tool calls and
   * submits its answers in one `POST .../submit_tool_outputs`; the deadline cuts the handler short.
   */
  async #answerToolCalls(w: Watch, action: Extract<ActionDecision, { kind: 'submit_tool_outputs' | 'submit_tool_approval' }>): Promise<StepEnd> {
    const { kind: reason, calls } = action;
    const ids = calls.map((call) => call.id);
    const memory = { handledCalls: toolCallsKey(ids) };
    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(new Error('the watch reached its deadline')), Math.max(1, w.progress.deadlineAtMs - Date.now()));
    const signal = AbortSignal.any([w.signal, deadline.signal, this.#ports.stopping]);
    const run = w.progress.lastSnapshot as RunSnapshot;
    try {
      // a handler that never settles must not hold the watch: the signal ends the wait
      // in the watch's trace: spans the handler starts are children of the watch's (with a context manager registered)
      const result = await inWatchContext(this.#trace(w), () =>
        reason === 'submit_tool_outputs' ? callToolHandler(w.toolHandler!, run, calls, signal) : callApprovalHandler(w.approvalHandler!, run, calls, signal),
      );
      if (w.signal.aborted || this.#ports.stopping.aborted) return INTERRUPTED;
      if (deadline.signal.aborted) return this.end(w, this.#deadlineError(w));
      if (!result.ok) {
        this.#log('warn', w, { toolCalls: ids }, `${reason === 'submit_tool_outputs' ? 'tool' : 'tool approval'} handler failed: ${result.error.message}`);
        return this.#recordAction(w, 'action_failed', { reason, tool_call_ids: ids, error: result.error }, memory);
      }
      // one endpoint for both: outputs go as tool_outputs, approvals as tool_approvals
      const body = reason === 'submit_tool_outputs' ? { tool_outputs: result.answers } : { tool_approvals: result.answers };
      const answer = await this.#act(w, 'submit_tool_outputs', body, signal);
      if (!answer) return deadline.signal.aborted && !w.signal.aborted && !this.#ports.stopping.aborted ? this.end(w, this.#deadlineError(w)) : INTERRUPTED;
      if (!answer.ok) return this.#recordAction(w, 'action_failed', { reason, tool_call_ids: ids, error: errorDetails(answer) }, memory);
      // the answer is the run after the submission: an observation like any poll
      if (reason === 'submit_tool_outputs') return await this.#recordAction(w, 'tool_outputs_submitted', { tool_call_ids: ids }, memory, answer);
      const approvals = (result.answers as readonly ToolApproval[]).map(({ tool_call_id, approve }) => ({ tool_call_id, approve }));
      return await this.#recordAction(w, 'tool_approvals_submitted', { tool_call_ids: ids, approvals }, memory, answer);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Appends an action's event, with what the watch must remember of it, then applies the
   * server's answer like a poll (or plans the next poll as the policy says). When another writer
   * moved the watch on meanwhile, it is appended again after the new seq.
   */
  async #recordAction(w: Watch, name: ActionEventName, details: ActionDetails, memory: Partial<Pick<Progress, 'handledCalls' | 'cancelRequested'>>, answer?: PollOutcome<Snapshot>): Promise<StepEnd> {
    for (let attempt = 1; ; attempt += 1) {
      const now = Date.now();
      const event = actionEvent(w.kind, w.id, w.ref, w.progress, name, details, now);
      const after: Progress = { ...w.progress, ...memory, seq: event.seq };
      const step = answer ? applyOutcome(w.kind, after, answer, w.settings, now) : undefined;
      const events = [event, ...(step?.emissions ?? []).map((emission) => emissionEvent(w.kind, w.id, w.ref, emission, now))];
      const result = step?.result;
      if (result?.kind === 'failed') return this.end(w, this.errorFrom(w, result.failure), events, step!.progress);
      const progress = step?.progress ?? { ...after, next: stepAfterAction(w.settings.policy, after, now, w.settings.random) };
      const committed = await this.#commit(w, { progress, events, state: result?.kind === 'resolved' ? 'finished' : 'active' });
      if (committed === 'ok') return result?.kind === 'resolved' ? { kind: 'resolved', snapshot: result.snapshot } : { kind: 'next', next: progress.next! };
      const fresh = committed === 'stale' && attempt < ACTION_COMMIT_TRIES ? await this.#ports.store?.loadProgress?.(w.id) : undefined;
      if (!fresh) return { kind: 'stale', result: committed };
      w.progress = fresh;
    }
  }

  /** Writes a change and, once written, hands its events on; `w.progress` moves on before the write, so a task reading it next sees it. */
  async #commit(w: Watch, change: WatchChange): Promise<CommitResult> {
    const expectedSeq = w.progress.seq;
    w.progress = change.progress;
    const result = this.#ports.store ? await this.#ports.store.commit(w.id, expectedSeq, change) : 'ok';
    if (result !== 'ok') {
      this.#log('warn', w, { result }, 'step not committed: another writer got there first');
      return result;
    }
    const t = this.#trace(w);
    if (change.events.length > 0) {
      if (t) recordEvents(t, change.events);
      this.#ports.onEvents(w, change.events);
    }
    if (t && change.state !== 'active') endWatchSpan(t, change.state, change.error);
    return result;
  }

  /** One POST with retries on transient failures, each try inside the budget like a poll; `undefined` when aborted. */
  async #act(w: Watch, action: ResourceAction, body: unknown, signal: AbortSignal = w.signal): Promise<PollOutcome<Snapshot> | undefined> {
    const { budget, client } = this.#ports;
    if (!client.act) throw new Error('the client cannot POST (PollClient.act)');
    const outcome = await actWithRetries(async (): Promise<PollOutcome<Snapshot>> => {
      if (!(await budget.acquire(signal))) return ABORTED;
      try {
        const answer = await client.act!(w.kind, w.ref, action, body, { watchId: w.id, signal, credentials: w.credentials, headers: w.headers, trace: this.#trace(w)?.request });
        if (!answer.ok && answer.httpStatus === 429) budget.penalize(Date.now(), answer.hints.retryAfterMs);
        return answer;
      } finally {
        budget.release();
      }
    }, signal);
    return signal.aborted || (!outcome.ok && outcome.aborted) ? undefined : outcome;
  }

  #deadlineError(w: Watch): WatchError<Snapshot> {
    const { progress } = w;
    return new WatchError('deadline_exceeded', deadlineMessage(progress), {
      httpStatus: progress.lastFailure?.httpStatus,
      requestId: progress.lastFailure?.requestId,
      lastSnapshot: progress.lastSnapshot,
    });
  }

  /** Logs with the watch's ids; builds nothing when the level is off (10,000 silent watches are the usual case). */
  #log(level: 'debug' | 'info' | 'warn', w: Watch, fields: Record<string, unknown>, message: string): void {
    const { logger } = this.#ports;
    if (!logger.isLevelEnabled(level)) return;
    const ids: Record<string, unknown> = { watchId: w.id };
    for (const field of w.kind.idFields) ids[field] = (w.ref as Record<string, unknown>)[field];
    logger[level]({ ...ids, ...fields }, message);
  }
}
