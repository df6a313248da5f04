import pRetry from 'p-retry';
import { backoffDelayMs, sleep } from './backoff.js';
import type { BackoffPolicy } from './backoff.js';

/** Options of `retryWithBackoff`. */
export interface RetryWithBackoffOptions {
  /** Retries after the first try (so `retries + 1` tries at most). */
  readonly retries: number;
  /** The waits between tries (see `backoffDelayMs`). */
  readonly backoff: BackoffPolicy;
  /** Whether a failure is worth another try; others are rethrown at once. */
  readonly shouldRetry: (error: Error) => boolean;
  /** The server's `retry-after` carried by a failure, in ms: the wait is never shorter. */
  readonly floorMsOf?: ((error: Error) => number | undefined) | undefined;
  /** Stops the tries and cuts a wait short; the promise then rejects with `signal.reason`. */
  readonly signal?: AbortSignal | undefined;
  /**
   * Draws the jitter, in [0, 1).
   * @default Math.random
   */
  readonly random?: (() => number) | undefined;
}

/**
 * Calls `attempt` until it resolves, a failure is not retryable, the retries run out (the
 * last failure is rethrown) or `signal` aborts. p-retry runs the loop; the waits come from
 * `backoffDelayMs` and are abortable.
 *
 * @example
 * await retryWithBackoff(() => post(), { retries: 2, backoff: { baseMs: 200, capMs: 2_000, growth: 2, jitter: 0 }, shouldRetry: isTransient, signal });
 */
export function retryWithBackoff<T>(attempt: (attemptNumber: number) => Promise<T>, options: RetryWithBackoffOptions): Promise<T> {
  const { backoff, shouldRetry, floorMsOf, signal, random } = options;
  return pRetry(attempt, {
    retries: options.retries,
    // p-retry's own timer is off: the wait happens in shouldRetry, timed by the one rule
    minTimeout: 0,
    signal,
    // p-retry asks only when another try can follow, so no wait is spent after the last one
    shouldRetry: async ({ error, attemptNumber }) => {
      if (!shouldRetry(error)) return false;
      await sleep(backoffDelayMs(backoff, { attempt: attemptNumber, floorMs: floorMsOf?.(error) }, random), signal);
      return true;
    },
  });
}
