/** Node fires a timer longer than 2^31-1 ms after 1 ms; no delay may exceed this. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * How waits grow between attempts: `baseMs * growth^(attempt-1)`, capped at `capMs`, then
 * jittered. Poll errors, action retries, webhook retries and the outboxes all use this shape.
 *
 * @example
 * // 500 ms, 1 s, 2 s, ... up to 30 s, each drawn uniformly from [0, nominal]
 * const policy: BackoffPolicy = { baseMs: 500, capMs: 30_000, growth: 2, jitter: 1 };
 */
export interface BackoffPolicy {
  /** Wait before the first retry (before jitter). */
  readonly baseMs: number;
  /** Largest wait before jitter, however many attempts failed. */
  readonly capMs: number;
  /** Factor applied to the wait after each further failure. */
  readonly growth: number;
  /**
   * Share of each wait that is randomised: uniform in `[d * (1 - jitter), d]`. `1` is full
   * jitter, `0` none.
   */
  readonly jitter: number;
  /**
   * Largest server floor (`retry-after`) obeyed; a longer one is clamped to it.
   * @default MAX_TIMER_MS
   */
  readonly maxFloorMs?: number | undefined;
}

/** What the rule needs to know about the wait to compute. */
export interface BackoffInput {
  /** Failures so far, from 1: the first retry waits about `baseMs`. */
  readonly attempt: number;
  /**
   * A server's `retry-after` in ms: the wait is never shorter (up to `maxFloorMs`).
   * Absent, non-finite or not positive means no floor.
   */
  readonly floorMs?: number | undefined;
}

/**
 * Milliseconds to wait before the next attempt: the grown, capped and jittered backoff, never
 * below the server floor, rounded up to whole ms and never above `MAX_TIMER_MS`. `random`
 * returns a number in [0, 1) and is called exactly once, so tests can pin the jitter.
 *
 * @example
 * backoffDelayMs({ baseMs: 500, capMs: 5_000, growth: 2, jitter: 0 }, { attempt: 2 }); // 1000
 * backoffDelayMs({ baseMs: 500, capMs: 5_000, growth: 2, jitter: 0, maxFloorMs: 5_000 }, { attempt: 1, floorMs: 9_000 }); // 5000
 */
export function backoffDelayMs(policy: BackoffPolicy, input: BackoffInput, random: () => number = Math.random): number {
  const { baseMs, capMs, growth, jitter } = policy;
  // the exponent is bounded so a huge attempt count gives Infinity (then the cap), never NaN
  const exponent = Math.min(Math.max(input.attempt - 1, 0), 1_000);
  const nominalMs = baseMs <= 0 ? 0 : Math.min(capMs, baseMs * growth ** exponent);
  const jitteredMs = nominalMs - nominalMs * jitter * random();
  const floorMs = input.floorMs !== undefined && Number.isFinite(input.floorMs) && input.floorMs > 0 ? Math.min(input.floorMs, policy.maxFloorMs ?? MAX_TIMER_MS) : 0;
  return Math.min(Math.ceil(Math.max(jitteredMs, floorMs)), MAX_TIMER_MS);
}

/**
 * Resolves after `delayMs` (clamped to `MAX_TIMER_MS`), or rejects with `signal.reason` as
 * soon as `signal` aborts; either way its timer and abort listener are gone.
 *
 * @example
 * await sleep(backoffDelayMs(policy, { attempt }), signal);
 */
export function sleep(delayMs: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(signal.reason as Error);
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason as Error);
    };
    const timer = setTimeout(
      () => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      },
      Math.min(Math.max(delayMs, 0), MAX_TIMER_MS),
    );
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
