import type { PollFailure, PollOutcome } from './client.js';
import type { ResourceKind, Snapshot } from './resource.js';
import type { NextStep, PollPolicy } from './schedule.js';
import { deadlineFor, nextDelayMs, planNextStep, retryAfterFloorMs } from './schedule.js';
import { StatusMachine } from './status.js';

/**
 * Everything a watch remembers between polls. Plain data, so the in-process watcher keeps it
 * in memory and a distributed one stores it between polls (any replica can take the next step).
 */
export interface Progress {
  /** Last status seen, `null` before the first observation. */
  readonly status: string | null;
  /** Last event seq handed out. */
  readonly seq: number;
  readonly unchangedPolls: number;
  readonly consecutiveErrors: number;
  /** Since when the run has had `status`. */
  readonly statusSinceMs: number;
  readonly stallReported: boolean;
  readonly deadlineAtMs: number;
  readonly lastSnapshot: Snapshot | null;
  /** The last transient failure of the current series, `null` after a success. */
  readonly lastFailure: Pick<PollFailure, 'code' | 'message' | 'httpStatus' | 'requestId'> | null;
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
  readonly random: () => number;
}

/** Something to emit as an event. */
export type Emission =
  | { readonly kind: 'transition'; readonly from: string | null; readonly to: string; readonly seq: number; readonly snapshot: Snapshot }
  | { readonly kind: 'stalled'; readonly status: string; readonly seq: number; readonly snapshot: Snapshot; readonly stalledForMs: number };

/** What happens to the watch after a step. */
export type StepResult =
  /** Keep watching: poll at a time, or end at the deadline. */
  | { readonly kind: 'continue'; readonly next: NextStep }
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
  resume: { readonly status?: string | null; readonly seq?: number; readonly statusSinceMs?: number | undefined; readonly lastSnapshot?: Snapshot | null } = {},
  nowMs: number = Date.now(),
): Progress {
  const lastSnapshot = resume.lastSnapshot ?? null;
  return {
    status: resume.status ?? null,
    seq: resume.seq ?? 0,
    unchangedPolls: 0,
    consecutiveErrors: 0,
    statusSinceMs: resume.statusSinceMs ?? nowMs,
    stallReported: false,
    deadlineAtMs: deadlineFor({ ...settings, expiresAtMs: lastSnapshot ? kind.expiresAtMs(lastSnapshot) : undefined }),
    lastSnapshot,
    lastFailure: null,
  };
}

/**
 * One step of a watch: applies a poll outcome to its progress and says what to emit and what
 * to do next. Pure apart from `settings.random`; no I/O, no timers.
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
    const next: Progress = {
      ...progress,
      consecutiveErrors,
      lastFailure: { code: outcome.code, message: outcome.message, httpStatus: outcome.httpStatus, requestId: outcome.requestId },
    };
    const delayMs = nextDelayMs(settings.policy, { status: progress.status, unchangedPolls: progress.unchangedPolls, consecutiveErrors, hints: outcome.hints }, settings.random);
    const notBeforeMs = nowMs + retryAfterFloorMs(settings.policy, outcome.hints);
    return { progress: next, emissions: [], result: { kind: 'continue', next: planNextStep(nowMs, delayMs, next.deadlineAtMs, notBeforeMs) } };
  }

  const snapshot = outcome.snapshot;
  const machine = new StatusMachine(kind.rules, { status: progress.status, seq: progress.seq });
  const observation = machine.observe(snapshot.status);
  const emissions: Emission[] = [];
  let next: Progress = { ...progress, consecutiveErrors: 0, lastFailure: null };

  if (observation.kind === 'stale' || observation.kind === 'after_terminal') {
    next = { ...next, unchangedPolls: next.unchangedPolls + 1 };
  } else {
    let deadlineAtMs = next.deadlineAtMs;
    const expiresAtMs = settings.timeoutMs === undefined ? kind.expiresAtMs(snapshot) : undefined;
    if (expiresAtMs !== undefined) deadlineAtMs = deadlineFor({ ...settings, expiresAtMs });
    next = { ...next, lastSnapshot: snapshot, deadlineAtMs };
    if (observation.kind === 'unchanged') {
      next = { ...next, unchangedPolls: next.unchangedPolls + 1 };
      const stalledForMs = nowMs - next.statusSinceMs;
      if (settings.stallThresholdMs !== undefined && !next.stallReported && stalledForMs >= settings.stallThresholdMs) {
        emissions.push({ kind: 'stalled', status: observation.status, seq: machine.nextSeq(), snapshot, stalledForMs });
        next = { ...next, stallReported: true };
      }
    } else {
      emissions.push({ kind: 'transition', from: observation.from, to: observation.to, seq: observation.seq, snapshot });
      next = { ...next, status: observation.to, unchangedPolls: 0, statusSinceMs: nowMs, stallReported: false };
      if (observation.terminal || settings.resolveOn.has(observation.to)) {
        return { progress: { ...next, seq: machine.seq }, emissions, result: { kind: 'resolved', snapshot } };
      }
    }
  }
  next = { ...next, seq: machine.seq, status: machine.status };
  const delayMs = nextDelayMs(settings.policy, { status: next.status, unchangedPolls: next.unchangedPolls, consecutiveErrors: 0, hints: outcome.hints }, settings.random);
  return { progress: next, emissions, result: { kind: 'continue', next: planNextStep(nowMs, delayMs, next.deadlineAtMs) } };
}

/** The message of a `deadline_exceeded` error, naming the last error or status. */
export function deadlineMessage(progress: Progress): string {
  const last = progress.lastFailure ? `; last error: ${progress.lastFailure.message}` : progress.status ? `; last status: ${progress.status}` : '';
  return `deadline exceeded at ${new Date(progress.deadlineAtMs).toISOString()}${last}`;
}
