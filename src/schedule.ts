import { MAX_TIMER_MS, backoffDelayMs } from './backoff.js';
import { ConfigError } from './errors.js';

export { MAX_TIMER_MS } from './backoff.js';

/** Polling interval bounds for one status. */
export interface IntervalPolicy {
  /** Interval right after the status was first seen. */
  readonly baseMs: number;
  /** Largest interval while the status stays unchanged. */
  readonly capMs: number;
}

/**
 * When to poll next. Intervals grow multiplicatively while a status stays the same and reset
 * when it changes; every delay is jittered. Server hints take precedence.
 */
export interface PollPolicy {
  /**
   * Per-status intervals; statuses not listed (future API values) use `unknown`.
   * @default queued 1000..5000, in_progress 1750..8000, cancelling 500..4000, requires_action 5000..60000, unknown 2000..30000
   */
  readonly intervals: Readonly<Record<string, IntervalPolicy>> & { readonly unknown: IntervalPolicy };
  /**
   * Factor applied to the interval after each poll that sees the same status. Slow on purpose:
   * run durations are heavy-tailed, and the best interval grows only with the square root of
   * the age (see the README's Performance section).
   * @default 1.05
   */
  readonly growth: number;
  /**
   * Share of each poll delay that is randomised: uniform in `[d * (1 - jitter), d]`. Enough to
   * keep watches from moving in lockstep; more costs requests for the same latency.
   * @default 0.1
   */
  readonly jitter: number;
  /**
   * No poll comes sooner than this after the previous one, whatever the jitter drew.
   * @default 100
   */
  readonly minIntervalMs: number;
  /**
   * Backoff after transient errors (network, timeout, 408, 409, 429, 5xx, malformed body):
   * `baseMs * growth^(n-1)` capped, with its own jitter (full by default, so that watches
   * hit by the same outage do not come back together).
   * @default { baseMs: 500, capMs: 30000, growth: 2, jitter: 1 }
   */
  readonly errorBackoff: IntervalPolicy & { readonly growth: number; readonly jitter: number };
  /**
   * Largest `retry-after` / `retry-after-ms` obeyed; larger hints are clamped to it.
   * @default 600000
   */
  readonly maxRetryAfterMs: number;
  /**
   * Largest `openai-poll-after-ms` obeyed; larger hints are clamped to it.
   * @default 60000
   */
  readonly maxPollAfterMs: number;
}

/** The default polling policy (see the README's "Polling policy" table). */
export const DEFAULT_POLL_POLICY: PollPolicy = Object.freeze({
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

/** Merges a partial policy over the defaults and validates it; throws `ConfigError`. */
export function resolvePollPolicy(overrides: PartialPollPolicy = {}, base: PollPolicy = DEFAULT_POLL_POLICY): PollPolicy {
  const intervals: Record<string, IntervalPolicy> = { ...base.intervals };
  for (const [status, value] of Object.entries(overrides.intervals ?? {})) {
    if (value) intervals[status] = { ...(intervals[status] ?? base.intervals.unknown), ...value };
  }
  const policy: PollPolicy = {
    ...base,
    ...overrides,
    intervals: intervals as PollPolicy['intervals'],
    errorBackoff: { ...base.errorBackoff, ...overrides.errorBackoff },
  };
  for (const [status, interval] of Object.entries(policy.intervals)) {
    checkInterval(`intervals.${status}`, interval);
  }
  checkInterval('errorBackoff', policy.errorBackoff);
  checkNumber('growth', policy.growth, 1, 100);
  checkNumber('errorBackoff.growth', policy.errorBackoff.growth, 1, 100);
  checkNumber('jitter', policy.jitter, 0, 1);
  checkNumber('errorBackoff.jitter', policy.errorBackoff.jitter, 0, 1);
  checkNumber('minIntervalMs', policy.minIntervalMs, 0, MAX_TIMER_MS);
  checkNumber('maxRetryAfterMs', policy.maxRetryAfterMs, 0, MAX_TIMER_MS);
  checkNumber('maxPollAfterMs', policy.maxPollAfterMs, 0, MAX_TIMER_MS);
  return policy;
}

/** A policy override: any field, and any status's interval in part. */
export interface PartialPollPolicy {
  readonly intervals?: Readonly<Record<string, Partial<IntervalPolicy> | undefined>>;
  readonly growth?: number;
  readonly jitter?: number;
  readonly minIntervalMs?: number;
  readonly errorBackoff?: Partial<PollPolicy['errorBackoff']>;
  readonly maxRetryAfterMs?: number;
  readonly maxPollAfterMs?: number;
}

function checkInterval(name: string, interval: IntervalPolicy): void {
  checkNumber(`${name}.baseMs`, interval.baseMs, 0, MAX_TIMER_MS);
  checkNumber(`${name}.capMs`, interval.capMs, interval.baseMs, MAX_TIMER_MS);
}

function checkNumber(name: string, value: unknown, min: number, max: number): void {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) {
    throw new ConfigError(`Expected \`${name}\` to be a number from ${min} to ${max}, got ${JSON.stringify(value)}`);
  }
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
