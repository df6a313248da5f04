import { MAX_TIMER_MS, backoffDelayMs } from './backoff.js';
import { ConfigError } from './errors.js';
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

/** A number's bounds: `[min, max]`. */
type Bounds = readonly [min: number, max: number];
const ANY_MS: Bounds = [0, MAX_TIMER_MS];
const FACTOR: Bounds = [1, 100];
const SHARE: Bounds = [0, 1];

/**
 * The bounds of every number of the policy, written once: `pollPolicySchema` (zod, for the
 * CLI and the daemon config) is built from this table, and so is `resolvePollPolicy`'s check
 * (the library's, which must not load zod: it costs a polling process about 100 MB); a test
 * feeds both the same policies. A `capMs` is also at least its `baseMs`.
 */
export const POLICY_BOUNDS = Object.freeze({
  interval: Object.freeze({ baseMs: ANY_MS, capMs: ANY_MS }),
  growth: FACTOR,
  jitter: SHARE,
  minIntervalMs: ANY_MS,
  errorBackoff: Object.freeze({ baseMs: ANY_MS, capMs: ANY_MS, growth: FACTOR, jitter: SHARE }),
  maxRetryAfterMs: ANY_MS,
  maxPollAfterMs: ANY_MS,
});

/**
 * Merges a partial policy over the defaults and checks it against `POLICY_BOUNDS`; throws
 * `ConfigError` naming the field and the bad value (``Expected `growth` to be a number from 1
 * to 100, got 0``). Without overrides it returns `DEFAULT_POLL_POLICY` itself.
 */
export function resolvePollPolicy(overrides?: PartialPollPolicy): PollPolicy {
  if (overrides === undefined || isEmptyObject(overrides)) return DEFAULT_POLL_POLICY;
  const given = fields('', overrides, ['intervals', 'errorBackoff', 'growth', 'jitter', 'minIntervalMs', 'maxRetryAfterMs', 'maxPollAfterMs']);
  const intervals: Record<string, IntervalPolicy> = { ...DEFAULT_POLL_POLICY.intervals };
  if (given.intervals !== undefined) {
    for (const [status, interval] of Object.entries(fields('intervals', given.intervals))) {
      if (interval === undefined) continue;
      const defaults = DEFAULT_POLL_POLICY.intervals[status] ?? DEFAULT_POLL_POLICY.intervals.unknown;
      intervals[status] = bounded(`intervals.${status}`, interval, defaults, POLICY_BOUNDS.interval);
    }
  }
  const top: Record<string, number> = {};
  for (const key of ['growth', 'jitter', 'minIntervalMs', 'maxRetryAfterMs', 'maxPollAfterMs'] as const) {
    top[key] = given[key] === undefined ? DEFAULT_POLL_POLICY[key] : checkNumber(key, given[key], POLICY_BOUNDS[key]);
  }
  const errorBackoff = given.errorBackoff === undefined ? DEFAULT_POLL_POLICY.errorBackoff : bounded('errorBackoff', given.errorBackoff, DEFAULT_POLL_POLICY.errorBackoff, POLICY_BOUNDS.errorBackoff);
  return Object.freeze({ ...(top as Pick<PollPolicy, 'growth' | 'jitter' | 'minIntervalMs' | 'maxRetryAfterMs' | 'maxPollAfterMs'>), intervals: Object.freeze(intervals) as PollPolicy['intervals'], errorBackoff });
}

function isEmptyObject(value: unknown): boolean {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && Object.keys(value).length === 0;
}

/** How a message shows a value: JSON, except the numbers JSON has no text for. */
function shown(value: unknown): string {
  return typeof value === 'number' && !Number.isFinite(value) ? String(value) : String(JSON.stringify(value));
}

function invalid(path: string, what: string, value: unknown): never {
  throw new ConfigError(`Expected \`${path}\` to be ${what}, got ${shown(value)}`);
}

/** An object's fields, refusing keys outside `known` (when given). */
function fields(path: string, value: unknown, known?: readonly string[]): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) invalid(path || 'policy', 'an object', value);
  const record = value as Record<string, unknown>;
  const unknown = known && Object.keys(record).find((key) => !known.includes(key));
  if (unknown !== undefined) throw new ConfigError(`Unknown polling policy setting \`${path ? `${path}.` : ''}${unknown}\``);
  return record;
}

function checkNumber(path: string, value: unknown, [min, max]: Bounds): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) invalid(path, `a number from ${min} to ${max}`, value);
  return value;
}

/** A group of numbers (an interval, the error backoff) over its defaults, each in its bounds, `capMs` at least `baseMs`. */
function bounded<T extends { readonly baseMs: number; readonly capMs: number }>(path: string, value: unknown, defaults: T, bounds: { readonly [K in keyof T]: Bounds }): T {
  const given = fields(path, value, Object.keys(bounds));
  const out: Record<string, number> = { ...defaults };
  for (const key of Object.keys(bounds) as Array<keyof T & string>) if (given[key] !== undefined) out[key] = checkNumber(`${path}.${key}`, given[key], bounds[key]);
  if (out.capMs! < out.baseMs!) invalid(`${path}.capMs`, `a number from ${out.baseMs} to ${MAX_TIMER_MS}`, out.capMs);
  return Object.freeze(out) as unknown as T;
}

/** The safety net of a watch with a push signal: its polls start at `baseMs` and double up to `capMs`. */
export interface SafetyNet {
  /** @default 30000 */
  readonly baseMs?: number;
  /** @default 300000 (5 minutes) */
  readonly capMs?: number;
}

/** Defaults of `SafetyNet`. */
export const DEFAULT_SAFETY_NET = Object.freeze({ baseMs: 30_000, capMs: 300_000 });

/**
 * The policy of a watch a push signal covers: `policy` with every status (known or not) at the
 * safety net's interval, doubling on each unchanged poll; errors and server hints as in `policy`.
 * Throws `ConfigError` naming the field (`safetyNet.capMs`).
 */
export function safetyNetPolicy(policy: PollPolicy, net: SafetyNet = {}): PollPolicy {
  const interval = bounded('safetyNet', { ...DEFAULT_SAFETY_NET, ...net }, DEFAULT_SAFETY_NET, POLICY_BOUNDS.interval);
  const intervals = Object.fromEntries([...Object.keys(policy.intervals), 'unknown'].map((status) => [status, interval]));
  return Object.freeze({ ...policy, intervals: Object.freeze(intervals) as PollPolicy['intervals'], growth: 2 });
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
