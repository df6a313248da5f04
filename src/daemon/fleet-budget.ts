import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import type { Budget, BudgetOptions, BudgetSnapshot } from '../budget.js';
import { DECREASE_FACTOR, DEFAULT_BUDGET, INCREASE_PER_SECOND, RequestBudget } from '../budget.js';
import { Fifo } from '../queues.js';

// The rules of RequestBudget (refill, 70 % on a 429 once a second, +2 %/s while starved, the
// retry-after pause) on one hash for the whole fleet; test/budget.test.ts runs both side by side.
// KEYS: the budget hash. ARGV: op ('acquire' | 'penalize'), max rate, burst, min rate,
// retry-after ms, now ms ('' = the Redis clock, one clock for every replica).
// Returns { wait ms (0 = granted), rate * 1000 }.
const BUDGET = `
local now
if ARGV[6] ~= '' then now = tonumber(ARGV[6]) else local t = redis.call('TIME'); now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) end
local maxRate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local minRate = tonumber(ARGV[4])
local h = redis.call('HMGET', KEYS[1], 'tokens', 'at', 'rate', 'penalized', 'starved', 'until')
local tokens = tonumber(h[1]) or burst
local at = tonumber(h[2]) or now
local rate = math.min(tonumber(h[3]) or maxRate, maxRate)
local penalized = tonumber(h[4]) or -1e15
local starved = h[5] == '1'
local pausedUntil = tonumber(h[6]) or 0
local elapsed = now - at
if elapsed > 0 then
  tokens = math.min(burst, tokens + elapsed * rate / 1000)
  if starved and rate < maxRate then rate = math.min(maxRate, rate * (1 + ${INCREASE_PER_SECOND} * elapsed / 1000)) end
  starved = false
  at = now
end
local wait = 0
if ARGV[1] == 'penalize' then
  local retryAfter = tonumber(ARGV[5])
  if retryAfter > 0 then pausedUntil = math.max(pausedUntil, now + retryAfter) end
  if now - penalized >= 1000 then
    penalized = now
    rate = math.max(minRate, rate * ${DECREASE_FACTOR})
    tokens = math.min(tokens, 0)
  end
elseif now < pausedUntil then
  wait = pausedUntil - now
elseif tokens < 1 then
  starved = true
  wait = math.ceil((1 - tokens) * 1000 / rate)
else
  tokens = tokens - 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(at), 'rate', tostring(rate), 'penalized', tostring(penalized), 'starved', starved and '1' or '0', 'until', tostring(pausedUntil))
redis.call('PEXPIRE', KEYS[1], 3600000)
return {wait, math.floor(rate * 1000)}`;

interface Commands {
  rwBudget(key: string, op: string, maxRate: string, burst: string, minRate: string, retryAfterMs: string, nowMs: string): Promise<[number, number]>;
}

/** Longest local wait between two asks: another replica's release or a config change is seen this soon. */
const MAX_WAIT_MS = 1_000;
/** How long to wait before asking again when Redis does not answer. */
const UNAVAILABLE_WAIT_MS = 1_000;

/**
 * The request budget of a fleet of replicas: one token bucket in Redis (rate, burst, AIMD on
 * 429, the `retry-after` pause), so `maxRequestsPerSecond` is the fleet's and a 429 seen by one
 * replica slows and pauses them all. `maxInFlight` stays per replica. Waiters queue in arrival
 * order, and only the first asks Redis, so a saturated budget costs one script call per grant.
 */
export class FleetBudget implements Budget {
  readonly #redis: Redis & Commands;
  readonly #key: string;
  readonly #limits: { readonly maxRate: string; readonly burst: string; readonly minRate: string; readonly maxInFlight: number };
  /** Waiters for the turn; `wake` returns false for one that gave up meanwhile. */
  readonly #queue = new Fifo<{ wake: () => boolean }>();
  readonly #closed = new AbortController();
  #busy = false;
  #inFlight = 0;
  #queued = 0;
  #rate: number;

  /** @param key - the budget's hash (`RedisKeys.budget`); options as `RequestBudget`'s, validated the same way */
  constructor(redis: Redis, key: string, options: BudgetOptions = {}) {
    const local = new RequestBudget(options);
    redis.defineCommand('rwBudget', { numberOfKeys: 1, lua: BUDGET });
    this.#redis = redis as Redis & Commands;
    this.#key = key;
    this.#limits = { maxRate: String(local.ratePerSecond), burst: String(local.burst), minRate: String(local.minRatePerSecond), maxInFlight: options.maxInFlight ?? DEFAULT_BUDGET.maxInFlight };
    this.#rate = local.ratePerSecond;
  }

  async acquire(signal: AbortSignal): Promise<boolean> {
    const stop = AbortSignal.any([signal, this.#closed.signal]);
    if (stop.aborted) return false;
    this.#queued += 1;
    try {
      if (!(await this.#turn(stop))) return false;
      try {
        for (;;) {
          const waitMs = await this.#ask(stop);
          if (waitMs === 0) {
            this.#inFlight += 1;
            return true;
          }
          if (!(await sleep(Math.min(waitMs, MAX_WAIT_MS), true, { signal: stop }).catch(() => false))) return false;
        }
      } finally {
        this.#next();
      }
    } finally {
      this.#queued -= 1;
    }
  }

  release(): void {
    if (this.#inFlight > 0) this.#inFlight -= 1;
    // a waiter held back by the in-flight cap may go now
    if (!this.#busy) this.#next();
  }

  /** The fleet's clock is Redis's (`TIME`): replicas' clocks may differ, so `nowMs` is not sent. */
  penalize(_nowMs: number, retryAfterMs = 0): void {
    // best effort: a lost penalty only delays the slow-down to the next 429
    this.#redis.rwBudget(this.#key, 'penalize', this.#limits.maxRate, this.#limits.burst, this.#limits.minRate, String(Math.max(0, Math.round(retryAfterMs))), '').then(
      ([, rate]) => (this.#rate = rate / 1000),
      () => undefined,
    );
  }

  snapshot(): BudgetSnapshot {
    return { ratePerSecond: this.#rate, inFlight: this.#inFlight, queued: this.#queued };
  }

  close(): void {
    this.#closed.abort();
  }

  /** Waits to be first in line with an in-flight slot free; false when stopped. */
  async #turn(stop: AbortSignal): Promise<boolean> {
    while (this.#busy || this.#inFlight >= this.#limits.maxInFlight) {
      await new Promise<void>((resolve) => {
        let waiting = true;
        const onAbort = (): void => {
          waiting = false;
          resolve();
        };
        stop.addEventListener('abort', onAbort, { once: true });
        this.#queue.push({
          wake: () => {
            if (!waiting) return false;
            waiting = false;
            stop.removeEventListener('abort', onAbort);
            resolve();
            return true;
          },
        });
      });
      if (stop.aborted) return false;
    }
    this.#busy = true;
    return true;
  }

  /** Hands the turn to the next waiter still waiting. */
  #next(): void {
    this.#busy = false;
    for (let waiter = this.#queue.shift(); waiter; waiter = this.#queue.shift()) if (waiter.wake()) return;
  }

  /** One script call: 0 when a token was taken, else how long to wait. */
  async #ask(stop: AbortSignal): Promise<number> {
    try {
      const [waitMs, rate] = await this.#redis.rwBudget(this.#key, 'acquire', this.#limits.maxRate, this.#limits.burst, this.#limits.minRate, '0', '');
      this.#rate = rate / 1000;
      return waitMs;
    } catch {
      // Redis away: nothing can be committed either; ask again shortly
      return stop.aborted ? MAX_WAIT_MS : UNAVAILABLE_WAIT_MS;
    }
  }
}

/** The budget script, for the test that runs it beside `RequestBudget` on the same steps. */
export const FLEET_BUDGET_SCRIPT = BUDGET;
