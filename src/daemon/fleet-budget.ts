import type { RedisClient } from '../store/redis.js';
import type { Budget, BudgetOptions, TokenBucket } from '../budget.js';
import { DECREASE_FACTOR, DEFAULT_BUDGET, INCREASE_PER_SECOND, QueuedBudget, RequestBudget } from '../budget.js';

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
-- %.17g: a double survives the round trip exactly, so the bucket never drifts from RequestBudget's
local function exact(x) return string.format('%.17g', x) end
redis.call('HSET', KEYS[1], 'tokens', exact(tokens), 'at', exact(at), 'rate', exact(rate), 'penalized', exact(penalized), 'starved', starved and '1' or '0', 'until', exact(pausedUntil))
redis.call('PEXPIRE', KEYS[1], 3600000)
return {wait, math.floor(rate * 1000)}`;

interface Commands {
  rwBudget(key: string, op: string, maxRate: string, burst: string, minRate: string, retryAfterMs: string, nowMs: string): Promise<[number, number]>;
}

/** How long to wait before asking again when Redis does not answer (nothing could be written either). */
const UNAVAILABLE_WAIT_MS = 1_000;

/**
 * The fleet's token bucket, in one Redis hash: the rules of `RequestBudget` run by a script on
 * Redis's clock, so `maxRequestsPerSecond` is the fleet's and a 429 seen by one replica slows
 * and pauses them all.
 */
class RedisBucket implements TokenBucket {
  readonly #redis: RedisClient & Commands;
  readonly #key: string;
  readonly #args: readonly [maxRate: string, burst: string, minRate: string];
  currentRatePerSecond: number;

  constructor(redis: RedisClient, key: string, limits: RequestBudget) {
    redis.defineCommand('rwBudget', { numberOfKeys: 1, lua: BUDGET });
    this.#redis = redis as RedisClient & Commands;
    this.#key = key;
    this.#args = [String(limits.ratePerSecond), String(limits.burst), String(limits.minRatePerSecond)];
    this.currentRatePerSecond = limits.ratePerSecond;
  }

  async take(): Promise<number> {
    try {
      const [waitMs, rate] = await this.#redis.rwBudget(this.#key, 'acquire', ...this.#args, '0', '');
      this.currentRatePerSecond = rate / 1000;
      return waitMs;
    } catch {
      return UNAVAILABLE_WAIT_MS;
    }
  }

  /** The fleet's clock is Redis's (`TIME`): replicas' clocks may differ, so `nowMs` is not sent. */
  penalize(_nowMs: number, retryAfterMs = 0): void {
    // best effort: a lost penalty only delays the slow-down to the next 429
    this.#redis.rwBudget(this.#key, 'penalize', ...this.#args, String(Math.max(0, Math.round(retryAfterMs))), '').then(
      ([, rate]) => (this.currentRatePerSecond = rate / 1000),
      () => undefined,
    );
  }
}

/**
 * The request budget of a fleet of replicas: the fleet's bucket in Redis behind this replica's
 * queue; `maxInFlight` stays per replica. Options as `RequestBudget`'s, validated the same way,
 * except that `burst` defaults to a twentieth of the rate (requests spread over each second).
 * @param key - the budget's hash (`RedisKeys.budget`)
 */
export function fleetBudget(redis: RedisClient, key: string, options: BudgetOptions = {}): Budget {
  // a bucket of a twentieth of a second's requests (50 ms): a quiet fleet cannot then send a second's worth at once (an API that limits per second would answer 429 to it)
  const ratePerSecond = options.maxRequestsPerSecond ?? DEFAULT_BUDGET.maxRequestsPerSecond;
  const limits = new RequestBudget({ ...options, burst: options.burst ?? Math.max(1, Math.ceil(ratePerSecond / 20)) });
  return new QueuedBudget(new RedisBucket(redis, key, limits), limits.maxInFlight);
}

/** The budget script, for the test that runs it beside `RequestBudget` on the same steps. */
export const FLEET_BUDGET_SCRIPT = BUDGET;
