import { createRequire } from 'node:module';
import { MAX_TIMER_MS, backoffDelayMs } from './backoff.js';
import { ConfigError } from './errors.js';
import type * as PolicyModule from './policy.js';
import type { IntervalPolicy, PartialPollPolicy, PollPolicy } from './policy.js';

export { MAX_TIMER_MS } from './backoff.js';
export type { IntervalPolicy, PartialPollPolicy, PollPolicy } from './policy.js';

/**
 * The numbers of `DEFAULT_POLL_POLICY`, typed by themselves: `pollPolicySchema` takes its
 * defaults from here, and `PollPolicy` is inferred from the schema (so it cannot type this).
 */
export const POLL_POLICY_DEFAULTS = Object.freeze({
  intervals: Object.freeze({
    queued: Object.freeze({ baseMs: 1_000, capMs: 5_000 }),
    in_progress: Object.freeze({ baseMs: 1_750, capMs: 8_000 }),
    cancelling: Object.freeze({ baseMs: 500, capMs: 4_000 }),
    requires_action: Object.freeze({ baseMs: 5_000, capMs: 60_000 }),
    unknown: Object.freeze({ baseMs: 2_000, capMs: 30_000 }),
  }),
  growth: 1.05,
  jitter: 0.1,
  minIntervalMs: 100,
  errorBackoff: Object.freeze({ baseMs: 500, capMs: 30_000, growth: 2, jitter: 1 }),
  maxRetryAfterMs: 600_000,
  maxPollAfterMs: 60_000,
});

/** The default polling policy (see the README's "Polling policy" table; `pollPolicySchema` in `policy.ts` documents each field). */
export const DEFAULT_POLL_POLICY: PollPolicy = POLL_POLICY_DEFAULTS;

/**
 * Defaults of the deadline settings (`RunWatcherOptions`, the daemon's `watch` section).
 * @default { defaultTimeoutMs: 3600000 (1 hour), expiresGraceMs: 120000 }
 */
export const DEFAULT_DEADLINES = Object.freeze({ defaultTimeoutMs: 3_600_000, expiresGraceMs: 120_000 });

/** Hints a server gave with its answer (already parsed, not yet clamped). */
export interface ServerHints {
  /** From `retry-after-ms` or `retry-after`: no request before this many ms. */
  readonly retryAfterMs?: number | undefined;
  /** From `openai-poll-after-ms`: a floor for the next poll. */
  readonly pollAfterMs?: number | undefined;
}

/** What the scheduler knows after a poll. */
export interface ScheduleInput {
  /** The current status (after the observation), `null` if none was seen yet. */
  readonly status: string | null;
  /** Polls in a row that saw this same status (0 right after a change). */
  readonly unchangedPolls: number;
  /** Transient errors in a row (0 after a successful poll). */
  readonly consecutiveErrors: number;
  /** Hints from the last answer. */
  readonly hints?: ServerHints | undefined;
}

/** The policy schema's parser, once `policy.ts` is loaded: it is what loads zod (~18 MB). */
let parsePolicy: ((overrides: unknown) => PollPolicy) | undefined;

/** Called by `policy.ts` as it loads, so that the module in memory is the one used. */
export function registerPolicyParser(parse: (overrides: unknown) => PollPolicy): void {
  parsePolicy = parse;
}

/** Loads `policy.ts` synchronously (a constructor needs the policy at once): `require` of an ES module. */
function loadPolicyParser(): (overrides: unknown) => PollPolicy {
  if (!process.features.require_module) {
    throw new ConfigError(`a polling policy override needs Node 22.12 or newer (this is ${process.version}): upgrade Node`);
  }
  return (createRequire(import.meta.url)('./policy.js') as typeof PolicyModule).parsePollPolicy;
}

/**
 * Merges a partial policy over the defaults and validates it with `pollPolicySchema`; throws
 * `ConfigError` naming the field and the bad value. Without overrides it returns
 * `DEFAULT_POLL_POLICY` and loads nothing: zod is loaded on the first override.
 */
export function resolvePollPolicy(overrides?: PartialPollPolicy): PollPolicy {
  if (overrides === undefined || isEmptyObject(overrides)) return DEFAULT_POLL_POLICY;
  parsePolicy ??= loadPolicyParser();
  return parsePolicy(overrides);
}

function isEmptyObject(value: unknown): boolean {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && Object.keys(value).length === 0;
}

/** The interval bounds that apply to a status. */
export function intervalFor(policy: PollPolicy, status: string | null): IntervalPolicy {
  return (status === null ? undefined : policy.intervals[status]) ?? policy.intervals.unknown;
}

/**
 * Milliseconds from now until the next poll. `random` returns a number in [0, 1) and is
 * injectable so tests can pin the jitter.
 *
 * After a transient error the error backoff applies and `retry-after` is a hard floor;
 * `openai-poll-after-ms` is always a floor. Nothing is ever below `minIntervalMs`.
 */
export function nextDelayMs(policy: PollPolicy, input: ScheduleInput, random: () => number = Math.random): number {
  // one growth rule for both; the hints are applied below, after errors and successes alike
  let delayMs =
    input.consecutiveErrors > 0
      ? backoffDelayMs(policy.errorBackoff, { attempt: input.consecutiveErrors }, random)
      : backoffDelayMs({ ...intervalFor(policy, input.status), growth: policy.growth, jitter: policy.jitter }, { attempt: input.unchangedPolls + 1 }, random);
  delayMs = Math.max(delayMs, policy.minIntervalMs, clampHint(input.hints?.pollAfterMs, policy.maxPollAfterMs));
  delayMs = Math.max(delayMs, clampHint(input.hints?.retryAfterMs, policy.maxRetryAfterMs));
  return Math.min(Math.ceil(delayMs), MAX_TIMER_MS);
}

function clampHint(valueMs: number | undefined, maxMs: number): number {
  if (valueMs === undefined || !Number.isFinite(valueMs) || valueMs <= 0) return 0;
  return Math.min(valueMs, maxMs);
}

/** What to do next for a watch: poll at a time, or give up at the deadline. */
export type NextStep = { readonly kind: 'poll'; readonly atMs: number } | { readonly kind: 'deadline'; readonly atMs: number };

/**
 * Places the next poll in time relative to the watch's deadline: a poll never goes past the
 * deadline (the last one happens at it), and when a server hint forbids any request before
 * the deadline, the watch ends there without one.
 */
export function planNextStep(nowMs: number, delayMs: number, deadlineAtMs: number, notBeforeMs = 0): NextStep {
  if (nowMs >= deadlineAtMs || notBeforeMs > deadlineAtMs) return { kind: 'deadline', atMs: Math.max(nowMs, deadlineAtMs) };
  return { kind: 'poll', atMs: Math.min(nowMs + delayMs, deadlineAtMs) };
}

/** When a watch must end, from what is known. */
export interface DeadlineInput {
  /** When the watch started. */
  readonly startedAtMs: number;
  /** An explicit timeout, if the caller gave one. */
  readonly timeoutMs?: number | undefined;
  /** The resource's own expiry (`expires_at`), if a snapshot carried one. */
  readonly expiresAtMs?: number | undefined;
  /** Added to `expiresAtMs`: the server needs a moment to mark the run expired. */
  readonly expiresGraceMs: number;
  /** Used when there is neither a timeout nor an expiry. */
  readonly defaultTimeoutMs: number;
}

/**
 * The deadline: the explicit timeout, else `expires_at` plus grace, else the default timeout.
 */
export function deadlineFor(input: DeadlineInput): number {
  if (input.timeoutMs !== undefined) return input.startedAtMs + input.timeoutMs;
  // never before start + grace: a server clock ahead of ours must not end a watch at once
  if (input.expiresAtMs !== undefined) return Math.max(input.expiresAtMs, input.startedAtMs) + input.expiresGraceMs;
  return input.startedAtMs + input.defaultTimeoutMs;
}

/** The `retry-after` hint after clamping: no request may be sent sooner than this. */
export function retryAfterFloorMs(policy: PollPolicy, hints: ServerHints | undefined): number {
  return clampHint(hints?.retryAfterMs, policy.maxRetryAfterMs);
}
