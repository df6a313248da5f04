import { z } from 'zod';
import { ConfigError } from './errors.js';
import { MAX_TIMER_MS, POLICY_BOUNDS, POLL_POLICY_DEFAULTS } from './schedule.js';

/** The one message of a number field, whatever is wrong (type, NaN, infinity, range): what it takes. */
function numberFrom([min, max]: readonly [number, number]) {
  const error = `expected a number from ${min} to ${max}`;
  return z.number({ error }).min(min, { error }).max(max, { error });
}

const objectError = { error: (issue: { code: string }) => (issue.code === 'invalid_type' ? 'expected an object' : undefined) };

/** `capMs` below `baseMs` is reported on `capMs`, with the range it may take. */
function capAtLeastBase(bounds: { readonly baseMs: number; readonly capMs: number }, ctx: z.RefinementCtx): void {
  if (bounds.capMs < bounds.baseMs) {
    ctx.addIssue({ code: 'custom', path: ['capMs'], input: bounds.capMs, message: `expected a number from ${bounds.baseMs} to ${MAX_TIMER_MS}` });
  }
}

/** The bounds of one status's interval; fields left out take `defaults`'. */
function intervalSchema(defaults: { readonly baseMs: number; readonly capMs: number }) {
  return z
    .strictObject(
      {
        /** Interval right after the status was first seen. */
        baseMs: numberFrom(POLICY_BOUNDS.interval.baseMs).default(defaults.baseMs),
        /** Largest interval while the status stays unchanged; at least `baseMs`. */
        capMs: numberFrom(POLICY_BOUNDS.interval.capMs).default(defaults.capMs),
      },
      objectError,
    )
    .superRefine(capAtLeastBase)
    .readonly();
}

/** One schema per status of the defaults, each defaulting to that status's interval. */
function knownStatuses<T extends Record<string, { readonly baseMs: number; readonly capMs: number }>>(defaults: T) {
  const entries = Object.entries(defaults).map(([status, bounds]) => [status, intervalSchema(bounds).prefault({})] as const);
  return Object.fromEntries(entries) as { [K in keyof T]: z.ZodPrefault<ReturnType<typeof intervalSchema>> };
}

/**
 * The polling policy for the CLI's `--policy` and the daemon's `watch.policy`: its fields, their
 * bounds (`POLICY_BOUNDS`) and their defaults (`DEFAULT_POLL_POLICY`).
 * Parsing a partial policy gives the whole policy, deep-frozen; a status's interval may be
 * given in part, and a status not listed here (a future API value) starts from `unknown`'s.
 */
export const pollPolicySchema = z
  .strictObject(
    {
      /**
       * Per-status intervals; statuses not listed (future API values) use `unknown`.
       * @default queued 1000..5000, in_progress 1750..8000, cancelling 500..4000, requires_action 5000..60000, unknown 2000..30000
       */
      intervals: z
        .object(knownStatuses(POLL_POLICY_DEFAULTS.intervals), objectError)
        .catchall(intervalSchema(POLL_POLICY_DEFAULTS.intervals.unknown))
        .readonly()
        .prefault({}),
      /**
       * Factor applied to the interval after each poll that sees the same status. Slow on purpose:
       * run durations are heavy-tailed, and the best interval grows only with the square root of
       * the age (see the README's Performance section).
       * @default 1.05
       */
      growth: numberFrom(POLICY_BOUNDS.growth).default(POLL_POLICY_DEFAULTS.growth),
      /**
       * Share of each poll delay that is randomised: uniform in `[d * (1 - jitter), d]`. Enough to
       * keep watches from moving in lockstep; more costs requests for the same latency.
       * @default 0.1
       */
      jitter: numberFrom(POLICY_BOUNDS.jitter).default(POLL_POLICY_DEFAULTS.jitter),
      /**
       * No poll comes sooner than this after the previous one, whatever the jitter drew.
       * @default 100
       */
      minIntervalMs: numberFrom(POLICY_BOUNDS.minIntervalMs).default(POLL_POLICY_DEFAULTS.minIntervalMs),
      /**
       * Backoff after transient errors (network, timeout, 408, 409, 429, 5xx, malformed body):
       * `baseMs * growth^(n-1)` capped, with its own jitter (full by default, so that watches
       * hit by the same outage do not come back together).
       * @default { baseMs: 500, capMs: 30000, growth: 2, jitter: 1 }
       */
      errorBackoff: z
        .strictObject(
          {
            /** Backoff after the first error in a row. */
            baseMs: numberFrom(POLICY_BOUNDS.errorBackoff.baseMs).default(POLL_POLICY_DEFAULTS.errorBackoff.baseMs),
            /** Largest backoff; at least `baseMs`. */
            capMs: numberFrom(POLICY_BOUNDS.errorBackoff.capMs).default(POLL_POLICY_DEFAULTS.errorBackoff.capMs),
            /** Factor per further error in a row. */
            growth: numberFrom(POLICY_BOUNDS.errorBackoff.growth).default(POLL_POLICY_DEFAULTS.errorBackoff.growth),
            /** Share of each backoff that is randomised, as `jitter` for polls. */
            jitter: numberFrom(POLICY_BOUNDS.errorBackoff.jitter).default(POLL_POLICY_DEFAULTS.errorBackoff.jitter),
          },
          objectError,
        )
        .superRefine(capAtLeastBase)
        .readonly()
        .prefault({}),
      /**
       * Largest `retry-after` / `retry-after-ms` obeyed; larger hints are clamped to it.
       * @default 600000
       */
      maxRetryAfterMs: numberFrom(POLICY_BOUNDS.maxRetryAfterMs).default(POLL_POLICY_DEFAULTS.maxRetryAfterMs),
      /**
       * Largest `openai-poll-after-ms` obeyed; larger hints are clamped to it.
       * @default 60000
       */
      maxPollAfterMs: numberFrom(POLICY_BOUNDS.maxPollAfterMs).default(POLL_POLICY_DEFAULTS.maxPollAfterMs),
    },
    objectError,
  )
  .readonly();

/**
 * When to poll next. Intervals grow multiplicatively while a status stays the same and reset
 * when it changes; every delay is jittered. Server hints take precedence.
 */
export type PollPolicy = z.output<typeof pollPolicySchema>;

/** A policy override: any field, any status's interval in part, statuses of its own. */
export type PartialPollPolicy = z.input<typeof pollPolicySchema>;

/** Polling interval bounds for one status. */
export type IntervalPolicy = z.output<ReturnType<typeof intervalSchema>>;

/** The first problem of a failed parse: the setting's path, what it takes and what it got. */
export interface SettingIssue {
  /** Keys from the parsed object down to the setting; empty for the object itself. */
  readonly path: readonly string[];
  /** What the setting takes (`expected a number from 0 to 1`), or `unknown setting`. */
  readonly message: string;
  /** Whether the setting is not one the schema knows. */
  readonly unknown: boolean;
  /** The value found there, when zod reported it (`reportInput`). */
  readonly got?: { readonly value: unknown } | undefined;
}

/** Reads the first issue of a zod error (parsed with `reportInput: true` to know the value). */
export function firstIssue(error: z.ZodError): SettingIssue {
  return settingIssues(error)[0] ?? { path: [], message: 'invalid', unknown: false };
}

/** Reads every issue of a zod error, one per unknown key, in zod's order; a setting with several gets its first only. */
export function settingIssues(error: z.ZodError): SettingIssue[] {
  const seen = new Set<string>();
  const issues = error.issues.flatMap((issue): SettingIssue[] => {
    const path = issue.path.map(String);
    if (issue.code === 'unrecognized_keys') {
      return issue.keys.map((key) => ({ path: [...path, key], message: 'unknown setting', unknown: true, got: issue.input ? { value: issue.input[key] } : undefined }));
    }
    return [{ path, message: issue.message, unknown: false, got: 'input' in issue ? { value: issue.input } : undefined }];
  });
  // JSON of the path: keys may hold dots
  return issues.filter((issue) => !seen.has(JSON.stringify(issue.path)) && seen.add(JSON.stringify(issue.path)));
}

/** A value as a message shows it: JSON, except the numbers JSON has no text for. */
export function showValue(value: unknown): string {
  return typeof value === 'number' && !Number.isFinite(value) ? String(value) : String(JSON.stringify(value));
}

/**
 * Validates a partial policy and merges it over the defaults. Throws `ConfigError` naming the
 * field and the bad value: ``Expected `growth` to be a number from 1 to 100, got 0``.
 */
export function parsePollPolicy(overrides: unknown): PollPolicy {
  const parsed = pollPolicySchema.safeParse(overrides, { reportInput: true });
  if (parsed.success) return parsed.data;
  const issue = firstIssue(parsed.error);
  const name = issue.path.length > 0 ? issue.path.join('.') : 'policy';
  if (issue.unknown) throw new ConfigError(`Unknown polling policy setting \`${name}\``);
  const got = issue.got ? `, got ${showValue(issue.got.value)}` : '';
  throw new ConfigError(`Expected \`${name}\` to be ${issue.message.replace(/^expected /, '')}${got}`);
}
