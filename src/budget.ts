import { ConfigError } from './errors.js';
import { Fifo } from './queues.js';
import { MAX_TIMER_MS, sleep } from './backoff.js';

/** Limits on the requests one process sends, shared by every watch. */
export interface BudgetOptions {
  /**
   * Requests in flight at once.
   * @default 32
   */
  readonly maxInFlight?: number;
  /**
   * Sustained requests per second (token bucket refill rate).
   * @default 50
   */
  readonly maxRequestsPerSecond?: number;
  /**
   * Requests that may start at once after a quiet period (bucket size).
   * @default maxRequestsPerSecond
   */
  readonly burst?: number;
  /**
   * After a 429 the rate drops to 70 % (at most once per second, never below this); while
   * requests wait for tokens it then grows back by 2 % per second, up to `maxRequestsPerSecond`.
   * So a budget set too high settles just under the server's limit within seconds, and then
   * probes it rarely: in `npm run bench`, under 1 % of requests meet a 429 after the first 10 s.
   * @default 1
   */
  readonly minRequestsPerSecond?: number;
}

/** After a 429 the rate is multiplied by this (the fleet budget's script uses the same figure). */
export const DECREASE_FACTOR = 0.7;
/** Growth of the rate per second while requests wait for tokens. */
export const INCREASE_PER_SECOND = 0.02;

/** Default budget limits. */
export const DEFAULT_BUDGET = Object.freeze({ maxInFlight: 32, maxRequestsPerSecond: 50 });

/**
 * The request budget's bucket: tokens refilled at an adaptive rate (AIMD on 429s) and a pause
 * for a server's `retry-after`. Time is passed in, so it is a pure object; the fleet budget runs
 * the same rules in a Redis script (test/budget.test.ts runs both on the same steps).
 */
export class RequestBudget {
  /** Limit of concurrent requests (kept by the queue, `QueuedBudget`). */
  readonly maxInFlight: number;
  /** Refill rate, tokens per second. */
  readonly ratePerSecond: number;
  /** Bucket size. */
  readonly burst: number;
  /** Floor of the adaptive rate. */
  readonly minRatePerSecond: number;
  #rate: number;
  #penalizedAtMs = -Infinity;
  /** A request waited for a token since the last refill: only then may the rate grow. */
  #starved = false;
  #tokens: number;
  #refilledAtMs: number;
  /** No request before this: a server's `retry-after` on a 429 holds for every request, not one watch. */
  #pausedUntilMs = -Infinity;

  constructor(options: BudgetOptions = {}, nowMs: number = Date.now()) {
    this.maxInFlight = options.maxInFlight ?? DEFAULT_BUDGET.maxInFlight;
    this.ratePerSecond = options.maxRequestsPerSecond ?? DEFAULT_BUDGET.maxRequestsPerSecond;
    this.burst = options.burst ?? Math.max(1, this.ratePerSecond);
    positive('maxInFlight', this.maxInFlight, true);
    positive('maxRequestsPerSecond', this.ratePerSecond, false);
    positive('burst', this.burst, false);
    this.minRatePerSecond = Math.min(options.minRequestsPerSecond ?? 1, this.ratePerSecond);
    positive('minRequestsPerSecond', this.minRatePerSecond, false);
    this.#rate = this.ratePerSecond;
    this.#tokens = this.burst;
    this.#refilledAtMs = nowMs;
  }

  /** The rate in force now: `ratePerSecond`, or less after 429s. */
  get currentRatePerSecond(): number {
    return this.#rate;
  }

  /**
   * The server said 429: no request before its `retry-after` (a limit is per key, not per
   * watch), cut the rate to 70 % (once per second, so a burst of 429s from requests already in
   * flight counts once) and drop the tokens saved up.
   */
  penalize(nowMs: number, retryAfterMs = 0): void {
    this.#refill(nowMs);
    if (retryAfterMs > 0) this.#pausedUntilMs = Math.max(this.#pausedUntilMs, nowMs + Math.min(retryAfterMs, MAX_TIMER_MS));
    if (nowMs - this.#penalizedAtMs < 1000) return;
    this.#penalizedAtMs = nowMs;
    this.#rate = Math.max(this.minRatePerSecond, this.#rate * DECREASE_FACTOR);
    this.#tokens = Math.min(this.#tokens, 0);
  }

  /** Takes a token: 0 when one was taken, else the milliseconds until one may be (nothing is taken then). */
  take(nowMs: number): number {
    this.#refill(nowMs);
    if (nowMs < this.#pausedUntilMs) return Math.ceil(this.#pausedUntilMs - nowMs);
    if (this.#tokens < 1) {
      this.#starved = true;
      return Math.ceil(((1 - this.#tokens) * 1000) / this.#rate);
    }
    this.#tokens -= 1;
    return 0;
  }

  #refill(nowMs: number): void {
    const elapsedMs = nowMs - this.#refilledAtMs;
    if (elapsedMs <= 0) return;
    this.#tokens = Math.min(this.burst, this.#tokens + (elapsedMs * this.#rate) / 1000);
    // grow only under demand: a rate raised while idle would meet the limit all at once later
    if (this.#starved && this.#rate < this.ratePerSecond) this.#rate = Math.min(this.ratePerSecond, this.#rate * (1 + (INCREASE_PER_SECOND * elapsedMs) / 1000));
    this.#starved = false;
    this.#refilledAtMs = nowMs;
  }
}

/** The budget's figures now, for gauges. */
export interface BudgetSnapshot {
  /** The rate allowed now (lower after 429s). */
  readonly ratePerSecond: number;
  /** Requests in flight (this process). */
  readonly inFlight: number;
  /** Requests waiting for the budget (this process). */
  readonly queued: number;
}

/**
 * The request budget as the driver sees it: every request (poll or action) takes a slot first
 * and gives it back when answered. In one process it is a `RequestBudget` behind a queue; in
 * Redis mode the same bucket lives in Redis for the fleet.
 */
export interface Budget {
  /** Waits for a slot, in arrival order; resolves `false` when `signal` aborts first or the budget closed. */
  acquire(signal: AbortSignal): Promise<boolean>;
  /** Returns the slot of an answered request. */
  release(): void;
  /** The server answered 429: slow down, and send nothing before `retryAfterMs`. */
  penalize(nowMs: number, retryAfterMs?: number): void;
  /** Figures for the gauges. */
  snapshot(): BudgetSnapshot;
  /** Requests waiting for a slot now (read by a scheduler before each step it starts). */
  readonly queued: number;
  /** Resolves every waiting `acquire` with `false`; later calls get `false` at once. */
  close(): void;
}

/** A bucket a `QueuedBudget` takes tokens from: this process's `RequestBudget`, or the fleet's in Redis. */
export interface TokenBucket {
  /** 0 when a token was taken, else how long until one may be. */
  take(nowMs: number): number | Promise<number>;
  penalize(nowMs: number, retryAfterMs?: number): void;
  readonly currentRatePerSecond: number;
}

// shared answers: the common case allocates nothing
const GRANTED = Promise.resolve(true);
const REFUSED = Promise.resolve(false);

/** Longest sleep of the first waiter before it asks the bucket again (a config change or another replica's pause is seen this soon). */
const MAX_WAIT_MS = 1_000;

/**
 * A budget: an in-flight limit and a token bucket, with a queue in front. Requests that cannot
 * go yet wait in arrival order (due order: the scheduler starts polls when due); only the
 * first asks the bucket and sleeps until its token, so a saturated budget costs one timer (and
 * in Redis mode one script call per grant). Nothing is dropped.
 */
export class QueuedBudget implements Budget {
  readonly #bucket: TokenBucket;
  readonly #maxInFlight: number;
  /** Waiters for the turn: `wake(true)` gives it, `wake(false)` sends one away; false for one that gave up meanwhile. */
  readonly #waiters = new Fifo<{ wake: (go: boolean) => boolean }>();
  /** Wakes the first waiter early from its sleep (close). */
  #nap: AbortController | null = null;
  #closed = false;
  /** The first waiter holds the turn while it asks and sleeps. */
  #busy = false;
  #inFlight = 0;
  #queued = 0;

  constructor(bucket: TokenBucket, maxInFlight: number) {
    this.#bucket = bucket;
    this.#maxInFlight = maxInFlight;
  }

  acquire(signal: AbortSignal): Promise<boolean> {
    if (this.#closed || signal.aborted) return REFUSED;
    if (this.#busy || this.#waiters.size > 0 || this.#inFlight >= this.#maxInFlight) return this.#wait(signal);
    // first in line: ask at once; a token at hand costs no timer, no listener and no promise to wait on
    this.#busy = true;
    const first = this.#bucket.take(Date.now());
    if (first !== 0) return this.#wait(signal, first);
    this.#inFlight += 1;
    this.#next();
    return GRANTED;
  }

  release(): void {
    if (this.#inFlight > 0) this.#inFlight -= 1;
    // a waiter held back by the in-flight cap may go now
    if (!this.#busy) this.#next();
  }

  penalize(nowMs: number, retryAfterMs?: number): void {
    this.#bucket.penalize(nowMs, retryAfterMs);
  }

  snapshot(): BudgetSnapshot {
    return { ratePerSecond: this.#bucket.currentRatePerSecond, inFlight: this.#inFlight, queued: this.#queued };
  }

  /** Requests waiting for the budget now (read by the scheduler before each step it starts). */
  get queued(): number {
    return this.#queued;
  }

  close(): void {
    this.#closed = true;
    this.#nap?.abort();
    for (let waiter = this.#waiters.shift(); waiter; waiter = this.#waiters.shift()) waiter.wake(false);
  }

  /** Waits for the turn (unless `first`, the answer of an ask made holding it, is given), then for a token. */
  async #wait(signal: AbortSignal, first?: number | Promise<number>): Promise<boolean> {
    this.#queued += 1;
    try {
      if (first === undefined && !(await this.#turn(signal))) return false;
      try {
        for (let answer = first ?? this.#bucket.take(Date.now()); ; answer = this.#bucket.take(Date.now())) {
          const waitMs = await answer;
          if (this.#closed || signal.aborted) return false;
          if (waitMs === 0) {
            this.#inFlight += 1;
            return true;
          }
          if (!(await this.#sleep(Math.min(waitMs, MAX_WAIT_MS), signal))) return false;
        }
      } finally {
        this.#next();
      }
    } finally {
      this.#queued -= 1;
    }
  }

  /** The first waiter's sleep until its token: cut short by its signal or by close(). */
  async #sleep(ms: number, signal: AbortSignal): Promise<boolean> {
    const nap = (this.#nap = new AbortController());
    const onAbort = (): void => nap.abort();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      return await sleep(ms, nap.signal).then(
        () => true,
        () => false,
      );
    } finally {
      signal.removeEventListener('abort', onAbort);
      this.#nap = null;
    }
  }

  /** Waits to be first in line with an in-flight slot free; false when its signal aborts or the budget closes. */
  async #turn(signal: AbortSignal): Promise<boolean> {
    while (this.#busy || this.#inFlight >= this.#maxInFlight) {
      const go = await new Promise<boolean>((resolve) => {
        let waiting = true;
        const wake = (go: boolean): boolean => {
          if (!waiting) return false;
          waiting = false;
          signal.removeEventListener('abort', onAbort);
          resolve(go);
          return true;
        };
        const onAbort = (): void => void wake(false);
        signal.addEventListener('abort', onAbort, { once: true });
        this.#waiters.push({ wake });
      });
      if (!go) return false;
    }
    this.#busy = true;
    return true;
  }

  /** Hands the turn to the next waiter still waiting. */
  #next(): void {
    this.#busy = false;
    for (let waiter = this.#waiters.shift(); waiter; waiter = this.#waiters.shift()) if (waiter.wake(true)) return;
  }
}

/** The budget of one process. */
export class LocalBudget extends QueuedBudget {
  constructor(options: BudgetOptions = {}) {
    const bucket = new RequestBudget(options);
    super(bucket, bucket.maxInFlight);
  }
}

function positive(name: string, value: number, integer: boolean): void {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) {
    throw new ConfigError(`Expected \`${name}\` to be a positive ${integer ? 'integer' : 'number'}, got ${JSON.stringify(value)}`);
  }
}
