import { ConfigError } from './errors.js';
import { Fifo } from './queues.js';
import { MAX_TIMER_MS } from './schedule.js';

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
 * A token bucket plus an in-flight limit. Callers queue when it says no; nothing is dropped.
 * Time is passed in, so the bucket is a pure object and easy to test.
 */
export class RequestBudget {
  /** Limit of concurrent requests. */
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
  #inFlight = 0;
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

  /** Requests currently in flight. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Takes one slot and one token if both are available. */
  tryAcquire(nowMs: number): boolean {
    if (this.#inFlight >= this.maxInFlight || nowMs < this.#pausedUntilMs) return false;
    this.#refill(nowMs);
    if (this.#tokens < 1) {
      this.#starved = true;
      return false;
    }
    this.#tokens -= 1;
    this.#inFlight += 1;
    return true;
  }

  /** Returns the slot of a finished request. */
  release(): void {
    if (this.#inFlight > 0) this.#inFlight -= 1;
  }

  /**
   * Milliseconds until a token is available (0 if one is), or `undefined` when the
   * in-flight limit is what blocks (a release, not time, unblocks it).
   */
  waitMs(nowMs: number): number | undefined {
    if (this.#inFlight >= this.maxInFlight) return undefined;
    if (nowMs < this.#pausedUntilMs) return Math.ceil(this.#pausedUntilMs - nowMs);
    this.#refill(nowMs);
    return this.#tokens >= 1 ? 0 : Math.ceil(((1 - this.#tokens) * 1000) / this.#rate);
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
 * and gives it back when answered. In one process it is a `LocalBudget`; in Redis mode a fleet
 * budget shared by every replica.
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
  /** Resolves every waiting `acquire` with `false`; later calls get `false` at once. */
  close(): void;
}

interface Waiter {
  readonly signal: AbortSignal;
  readonly resolve: (granted: boolean) => void;
  readonly onAbort: () => void;
  settled: boolean;
}

/**
 * The budget of one process: a `RequestBudget` with a queue. Requests that find no slot wait
 * in arrival order (due order, since the scheduler starts polls when due); one timer wakes the
 * queue at the next refill, and a release wakes it at once. Nothing is dropped.
 */
export class LocalBudget implements Budget {
  readonly #bucket: RequestBudget;
  readonly #waiters = new Fifo<Waiter>();
  #queued = 0;
  #timer: NodeJS.Timeout | null = null;
  #closed = false;

  constructor(options: BudgetOptions = {}) {
    this.#bucket = new RequestBudget(options);
  }

  acquire(signal: AbortSignal): Promise<boolean> {
    if (this.#closed || signal.aborted) return Promise.resolve(false);
    if (this.#queued === 0 && this.#bucket.tryAcquire(Date.now())) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      const waiter: Waiter = {
        signal,
        resolve,
        settled: false,
        onAbort: () => this.#settle(waiter, false),
      };
      signal.addEventListener('abort', waiter.onAbort, { once: true });
      this.#waiters.push(waiter);
      this.#queued += 1;
      this.#arm();
    });
  }

  release(): void {
    this.#bucket.release();
    this.#pump();
  }

  penalize(nowMs: number, retryAfterMs?: number): void {
    this.#bucket.penalize(nowMs, retryAfterMs);
  }

  snapshot(): BudgetSnapshot {
    return { ratePerSecond: this.#bucket.currentRatePerSecond, inFlight: this.#bucket.inFlight, queued: this.#queued };
  }

  close(): void {
    this.#closed = true;
    this.#clearTimer();
    for (let waiter = this.#waiters.shift(); waiter; waiter = this.#waiters.shift()) this.#settle(waiter, false);
  }

  #settle(waiter: Waiter, granted: boolean): void {
    if (waiter.settled) return;
    waiter.settled = true;
    this.#queued -= 1;
    waiter.signal.removeEventListener('abort', waiter.onAbort);
    waiter.resolve(granted);
  }

  /** Grants slots to waiters in order while the bucket allows, then arms the timer for the rest. */
  #pump(): void {
    this.#clearTimer();
    const now = Date.now();
    for (;;) {
      const waiter = this.#peek();
      if (!waiter || !this.#bucket.tryAcquire(now)) break;
      this.#waiters.shift();
      this.#settle(waiter, true);
    }
    this.#arm();
  }

  /** The first waiter still waiting; aborted ones are dropped on the way. */
  #peek(): Waiter | undefined {
    for (let waiter = this.#waiters.peek(); waiter; waiter = this.#waiters.peek()) {
      if (!waiter.settled) return waiter;
      this.#waiters.shift();
    }
    return undefined;
  }

  /** One timer at the next refill while someone waits; a release (not time) unblocks the in-flight cap. */
  #arm(): void {
    if (this.#timer || this.#queued === 0 || this.#closed) return;
    const waitMs = this.#bucket.waitMs(Date.now());
    if (waitMs === undefined) return;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#pump();
    }, Math.max(1, waitMs));
  }

  #clearTimer(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }
}

function positive(name: string, value: number, integer: boolean): void {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) {
    throw new ConfigError(`Expected \`${name}\` to be a positive ${integer ? 'integer' : 'number'}, got ${JSON.stringify(value)}`);
  }
}
