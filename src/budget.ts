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
}

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
    this.#tokens = this.burst;
    this.#refilledAtMs = nowMs;
  }

  /** Requests currently in flight. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Takes one slot and one token if both are available. */
  tryAcquire(nowMs: number): boolean {
    if (this.#inFlight >= this.maxInFlight) return false;
    this.#refill(nowMs);
    if (this.#tokens < 1) return false;
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
    return this.#tokens >= 1 ? 0 : Math.ceil(((1 - this.#tokens) * 1000) / this.ratePerSecond);
  }

  #refill(nowMs: number): void {
    const elapsedMs = nowMs - this.#refilledAtMs;
    if (elapsedMs <= 0) return;
    this.#tokens = Math.min(this.burst, this.#tokens + (elapsedMs * this.ratePerSecond) / 1000);
    this.#refilledAtMs = nowMs;
  }
}

function positive(name: string, value: number, integer: boolean): void {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) {
    throw new ConfigError(`Expected \`${name}\` to be a positive ${integer ? 'integer' : 'number'}, got ${JSON.stringify(value)}`);
  }
}
