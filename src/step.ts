import type { ToolCall } from './actions.js';
import { requiredActionOf, toolCallsKey } from './actions.js';
import type { PollFailure, PollOutcome } from './client.js';
import type { ResourceKind, Snapshot } from './resource.js';
import type { NextStep, PollPolicy, ServerHints } from './schedule.js';
import { deadlineFor, nextDelayMs, planNextStep, retryAfterFloorMs } from './schedule.js';
import { StatusMachine } from './status.js';

/**
 * Everything a watch remembers between polls: the one record every store persists (memory,
 * SQLite, Redis) and every engine resumes from. Plain JSON data.
 */
export interface Progress {
  /** Last status seen, `null` before the first observation. */
  readonly status: string | null;
  /** Last event seq handed out. */
  readonly seq: number;
  readonly unchangedPolls: number;
  readonly consecutiveErrors: number;
  /** Polls answered or failed since the watch began (0 in records of versions before it was kept). */
  readonly polls: number;
  /** Since when the run has had `status`. */
  readonly statusSinceMs: number;
  readonly stallReported: boolean;
  readonly deadlineAtMs: number;
  readonly lastSnapshot: Snapshot | null;
  /** The last transient failure of the current series, `null` after a success. */
  readonly lastFailure: Pick<PollFailure, 'code' | 'message' | 'httpStatus' | 'requestId'> | null;
  /** The tool-call set last given to the tool (or approval) handler (`toolCallsKey`): a handler runs once per set. */
  readonly handledCalls: string | null;
  /** The tool-call set last announced as waiting for a person's approval (`<prefix>.approval_required`): once per set. */
  readonly approvalReported: string | null;
  /** A cancel was sent (or refused): it is never sent again by the stall rule. */
  readonly cancelRequested: boolean;
  /** What was planned after the last step (a poll, or the end at the deadline); `null` before the first. */
  readonly next: NextStep | null;
  /**
   * A server asked for no request before this time (`retry-after`), epoch ms; `null` when none
   * did. Stored so that a restarted or taking-over process waits it out too.
   */
  readonly notBeforeMs: number | null;
}

/**
 * A progress as a store holds it. Watches stored by earlier versions carry only part of it
 * (status, seq, the last snapshot, what was done); `resumeProgress` fills in the rest.
 */
export type StoredProgress = Partial<Progress> & Pick<Progress, 'status' | 'seq'>;

/** The progress to resume from: the stored one, completed where an earlier version stored less. */
export function resumeProgress(
  kind: ResourceKind<object, Snapshot>,
  settings: Pick<StepSettings, 'startedAtMs' | 'timeoutMs' | 'expiresGraceMs' | 'defaultTimeoutMs'>,
  stored: StoredProgress | null | undefined,
  nowMs: number = Date.now(),
): Progress {
  const fresh = initialProgress(kind, settings, stored ?? {}, nowMs);
  return stored ? { ...fresh, ...stored } : fresh;
}

/** The fixed settings a step needs. */
export interface StepSettings {
  readonly policy: PollPolicy;
  readonly resolveOn: ReadonlySet<string>;
  readonly startedAtMs: number;
  /** An explicit timeout: when set, `expires_at` does not move the deadline. */
  readonly timeoutMs: number | undefined;
  readonly expiresGraceMs: number;
  readonly defaultTimeoutMs: number;
  readonly stallThresholdMs: number | undefined;
  /** Cancel the resource once when it stays in one status this long; `undefined`: never. */
  readonly cancelAfterStallMs: number | undefined;
  /** A tool handler answers `requires_action` with tool calls (runs only). */
  readonly handlesToolCalls: boolean;
  /** An approval handler answers `requires_action` with tool approvals (runs only, Azure). */
  readonly handlesToolApprovals: boolean;
  readonly random: () => number;
}

/** Something to emit as an event. */
export type Emission =
  | { readonly kind: 'transition'; readonly from: string | null; readonly to: string; readonly seq: number; readonly snapshot: Snapshot }
  | { readonly kind: 'stalled'; readonly status: string; readonly seq: number; readonly snapshot: Snapshot; readonly stalledForMs: number }
  /** The run asks for approvals that no handler gives: a person must answer them. */
  | { readonly kind: 'approval_required'; readonly status: string; readonly seq: number; readonly snapshot: Snapshot; readonly calls: readonly ToolCall[] };

/** What the watch does to the resource after an observation. */
export type ActionDecision =
  /** Call the tool handler for these new tool calls and submit its outputs. */
  | { readonly kind: 'submit_tool_outputs'; readonly calls: readonly ToolCall[] }
  /** Call the approval handler for these new tool calls and submit its approvals. */
  | { readonly kind: 'submit_tool_approval'; readonly calls: readonly ToolCall[] }
  /** Cancel the resource: it stayed in one status past `cancelAfterStallMs`. */
  | { readonly kind: 'cancel'; readonly reason: 'stalled'; readonly stalledForMs: number };

/** What happens to the watch after a step. */
export type StepResult =
  /** Keep watching: act first when `action` says so, then poll at a time, or end at the deadline. */
  | { readonly kind: 'continue'; readonly next: NextStep; readonly action?: ActionDecision }
  /** A terminal or `resolveOn` status was seen. */
  | { readonly kind: 'resolved'; readonly snapshot: Snapshot }
  /** A permanent failure ends the watch. */
  | { readonly kind: 'failed'; readonly failure: PollFailure };

/** The next step after an action that did not move the resource on: the next poll as the policy says for its status. */
export function stepAfterAction(policy: PollPolicy, progress: Progress, nowMs: number, random: () => number): NextStep {
  const delayMs = nextDelayMs(policy, { status: progress.status, unchangedPolls: progress.unchangedPolls, consecutiveErrors: 0 }, random);
  return planNextStep(nowMs, delayMs, progress.deadlineAtMs);
}

/** The progress of a watch that has not polled yet. */
export function initialProgress(
  kind: ResourceKind<object, Snapshot>,
  settings: Pick<StepSettings, 'startedAtMs' | 'timeoutMs' | 'expiresGraceMs' | 'defaultTimeoutMs'>,
  resume: {
    readonly status?: string | null;
    readonly seq?: number;
    readonly statusSinceMs?: number | undefined;
    readonly lastSnapshot?: Snapshot | null;
    readonly handledCalls?: string | null;
    readonly approvalReported?: string | null;
    readonly cancelRequested?: boolean;
  } = {},
  nowMs: number = Date.now(),
): Progress {
  const lastSnapshot = resume.lastSnapshot ?? null;
  return {
    status: resume.status ?? null,
    seq: resume.seq ?? 0,
    unchangedPolls: 0,
    consecutiveErrors: 0,
    polls: 0,
    statusSinceMs: resume.statusSinceMs ?? nowMs,
    stallReported: false,
    deadlineAtMs: deadlineFor({ ...settings, expiresAtMs: lastSnapshot ? kind.expiresAtMs(lastSnapshot) : undefined }),
    lastSnapshot,
    lastFailure: null,
    handledCalls: resume.handledCalls ?? null,
    approvalReported: resume.approvalReported ?? null,
    cancelRequested: resume.cancelRequested ?? false,
    next: null,
    notBeforeMs: null,
  };
}

/**
 * What to do to the resource after a successful observation, if anything: answer new tool
 * calls with outputs or approvals, by what the run asks and which handler the watch has (once
 * per set), or cancel a resource stalled past `cancelAfterStallMs` (once).
 */
export function decideAction(progress: Progress, settings: StepSettings, nowMs: number): ActionDecision | undefined {
  const asked = progress.status === 'requires_action' ? requiredActionOf(progress.lastSnapshot) : undefined;
  if (asked && asked.calls.length > 0 && (asked.type === 'submit_tool_outputs' ? settings.handlesToolCalls : settings.handlesToolApprovals)) {
    if (toolCallsKey(asked.calls.map((call) => call.id)) !== progress.handledCalls) return { kind: asked.type, calls: asked.calls };
  }
  const stalledForMs = nowMs - progress.statusSinceMs;
  if (settings.cancelAfterStallMs !== undefined && !progress.cancelRequested && progress.status !== null && stalledForMs >= settings.cancelAfterStallMs) {
    return { kind: 'cancel', reason: 'stalled', stalledForMs };
  }
  return undefined;
}

/**
 * The tool calls a run waits to have approved when no handler will approve them and no event
 * said so yet for this set: a person must answer them (`<prefix>.approval_required`).
 */
export function unannouncedApprovals(status: string | null, snapshot: Snapshot | null, approvalReported: string | null, settings: StepSettings): { readonly calls: ToolCall[]; readonly key: string } | undefined {
  if (settings.handlesToolApprovals || status !== 'requires_action') return undefined;
  const asked = requiredActionOf(snapshot);
  if (asked?.type !== 'submit_tool_approval' || asked.calls.length === 0) return undefined;
  const key = toolCallsKey(asked.calls.map((call) => call.id));
  return key === approvalReported ? undefined : { calls: asked.calls, key };
}

/**
 * One step of a watch: applies a poll outcome to its progress and says what to emit and what
 * to do next (the returned progress carries that plan in `next`). Pure apart from
 * `settings.random`; no I/O, no timers.
 */
export function applyOutcome(
  kind: ResourceKind<object, Snapshot>,
  progress: Progress,
  outcome: PollOutcome<Snapshot>,
  settings: StepSettings,
  nowMs: number,
): { progress: Progress; emissions: Emission[]; result: StepResult } {
  if (!outcome.ok) {
    if (!outcome.retryable) return { progress, emissions: [], result: { kind: 'failed', failure: outcome } };
    const consecutiveErrors = progress.consecutiveErrors + 1;
    const delayMs = nextDelayMs(settings.policy, { status: progress.status, unchangedPolls: progress.unchangedPolls, consecutiveErrors, hints: outcome.hints }, settings.random);
    const notBeforeMs = serverFloorAt(settings, outcome.hints, nowMs);
    const planned = planNextStep(nowMs, delayMs, progress.deadlineAtMs, notBeforeMs ?? nowMs);
    const lastFailure = { code: outcome.code, message: outcome.message, httpStatus: outcome.httpStatus, requestId: outcome.requestId };
    return { progress: { ...progress, polls: progress.polls + 1, consecutiveErrors, lastFailure, next: planned, notBeforeMs }, emissions: [], result: { kind: 'continue', next: planned } };
  }

  const snapshot = outcome.snapshot;
  const machine = new StatusMachine(kind.rules, { status: progress.status, seq: progress.seq });
  const observation = machine.observe(snapshot.status);
  const emissions: Emission[] = [];
  // every field is worked out first and the progress built once: this runs for every poll
  let { unchangedPolls, statusSinceMs, stallReported, deadlineAtMs, lastSnapshot } = progress;
  let resolved = false;
  if (observation.kind === 'stale' || observation.kind === 'after_terminal') {
    unchangedPolls += 1;
  } else {
    const expiresAtMs = settings.timeoutMs === undefined ? kind.expiresAtMs(snapshot) : undefined;
    if (expiresAtMs !== undefined) deadlineAtMs = deadlineFor({ ...settings, expiresAtMs });
    lastSnapshot = snapshot;
    if (observation.kind === 'unchanged') {
      unchangedPolls += 1;
      const stalledForMs = nowMs - statusSinceMs;
      if (settings.stallThresholdMs !== undefined && !stallReported && stalledForMs >= settings.stallThresholdMs) {
        emissions.push({ kind: 'stalled', status: observation.status, seq: machine.nextSeq(), snapshot, stalledForMs });
        stallReported = true;
      }
    } else {
      emissions.push({ kind: 'transition', from: observation.from, to: observation.to, seq: observation.seq, snapshot });
      unchangedPolls = 0;
      statusSinceMs = nowMs;
      stallReported = false;
      resolved = observation.terminal || settings.resolveOn.has(observation.to);
    }
  }
  const status = machine.status;
  const planned = resolved ? null : planNextStep(nowMs, nextDelayMs(settings.policy, { status, unchangedPolls, consecutiveErrors: 0, hints: outcome.hints }, settings.random), deadlineAtMs);
  let { approvalReported } = progress;
  // a watch that ends here hands the run to its caller; one that goes on says once what it waits for
  const waiting = planned ? unannouncedApprovals(status, lastSnapshot, approvalReported, settings) : undefined;
  if (waiting) {
    emissions.push({ kind: 'approval_required', status: status!, seq: machine.nextSeq(), snapshot: lastSnapshot!, calls: waiting.calls });
    approvalReported = waiting.key;
  }
  // every field named, no spread: a literal has an allocation site, so V8 can learn that these
  // records outlive the young generation and allocate them in the old one (pretenuring), where
  // copying them in every scavenge would grow the young generation, the bulk of peak RSS
  const next: Progress = {
    status,
    seq: machine.seq,
    unchangedPolls,
    consecutiveErrors: 0,
    polls: progress.polls + 1,
    statusSinceMs,
    stallReported,
    deadlineAtMs,
    lastSnapshot,
    lastFailure: null,
    handledCalls: progress.handledCalls,
    approvalReported,
    cancelRequested: progress.cancelRequested,
    next: planned,
    notBeforeMs: serverFloorAt(settings, outcome.hints, nowMs),
  };
  if (!planned) return { progress: next, emissions, result: { kind: 'resolved', snapshot } };
  const action = decideAction(next, settings, nowMs);
  return { progress: next, emissions, result: action ? { kind: 'continue', next: planned, action } : { kind: 'continue', next: planned } };
}

/** When a server's `retry-after` (clamped by the policy) lets the next request go, or `null` without one. */
function serverFloorAt(settings: StepSettings, hints: ServerHints | undefined, nowMs: number): number | null {
  const floorMs = retryAfterFloorMs(settings.policy, hints);
  return floorMs > 0 ? nowMs + floorMs : null;
}

/**
 * Where a resumed watch starts: at once, unless a server's `retry-after` stored with it has
 * not passed yet (or reaches past the deadline, which then ends it).
 */
export function resumeStep(progress: Progress, nowMs: number): NextStep {
  const notBeforeMs = progress.notBeforeMs;
  if (notBeforeMs === null || notBeforeMs <= nowMs) return { kind: 'poll', atMs: nowMs };
  return planNextStep(nowMs, notBeforeMs - nowMs, progress.deadlineAtMs, notBeforeMs);
}

/** The message of a `deadline_exceeded` error, naming the last error or status. */
export function deadlineMessage(progress: Progress): string {
  const last = progress.lastFailure ? `; last error: ${progress.lastFailure.message}` : progress.status ? `; last status: ${progress.status}` : '';
  return `deadline exceeded at ${new Date(progress.deadlineAtMs).toISOString()}${last}`;
}
