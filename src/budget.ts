import { ConfigError } from './errors.js';

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

/** After a 429 the rate is multiplied by this. */
const DECREASE_FACTOR = 0.7;
/** Growth of the rate per second while requests wait for tokens. */
const INCREASE_PER_SECOND = 0.02;

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
   * The server said 429: cut the rate to 70 % (once per second, so a burst of 429s from
   * requests already in flight counts once) and drop the tokens saved up.
   */
  penalize(nowMs: number): void {
    this.#refill(nowMs);
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
    if (this.#inFlight >= this.maxInFlight) return false;
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

function positive(name: string, value: number, integer: boolean): void {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) {
    throw new ConfigError(`Expected \`${name}\` to be a positive ${integer ? 'integer' : 'number'}, got ${JSON.stringify(value)}`);
  }
}
