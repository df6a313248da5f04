import type { Clock } from '@sinonjs/fake-timers';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LocalBudget, RequestBudget } from '../src/budget.js';
import { FLEET_BUDGET_SCRIPT } from '../src/daemon/fleet-budget.js';
import { ConfigError } from '../src/errors.js';
import { installClock } from './helpers.js';
import { REDIS_URL, removeKeys, requireRedis, testPrefix } from './redis.js';

describe('RequestBudget (the bucket)', () => {
  it('hands out a burst, then tokens at the rate', () => {
    const budget = new RequestBudget({ maxRequestsPerSecond: 10, burst: 2, maxInFlight: 100 }, 0);
    expect([budget.take(0), budget.take(0), budget.take(0)]).toEqual([0, 0, 100]);
    expect(budget.take(100)).toBe(0);
  });

  it('cuts the rate to 70 % on 429 once per second, and grows it back 2 % per second only under demand', () => {
    const budget = new RequestBudget({ maxRequestsPerSecond: 100, minRequestsPerSecond: 20 }, 0);
    budget.penalize(0);
    expect(budget.currentRatePerSecond).toBe(70);
    // a second 429 within the same second is the same congestion: no second cut
    budget.penalize(500);
    expect(budget.currentRatePerSecond).toBe(70);
    for (const t of [1500, 2500, 3500, 4500, 5500, 6500]) budget.penalize(t);
    expect(budget.currentRatePerSecond).toBe(20);
    // idle: no request waited for a token, so the rate stays where the server put it
    budget.take(16_500);
    expect(budget.currentRatePerSecond).toBe(20);
    // under demand: every attempt fails for lack of tokens, and the rate grows 2 % per second
    while (budget.take(16_500) === 0);
    budget.take(17_500);
    expect(budget.currentRatePerSecond).toBeCloseTo(20.4);
    // doubles in about 35 s, so from 20 to 100 in about 80 s
    for (let t = 18_500; t <= 52_500; t += 1000) while (budget.take(t) === 0);
    expect(budget.currentRatePerSecond).toBeGreaterThan(39);
    expect(budget.currentRatePerSecond).toBeLessThan(42);
    for (let t = 53_500; t < 110_000; t += 1000) while (budget.take(t) === 0);
    expect(budget.currentRatePerSecond).toBe(100);
  });

  it("holds every request back until a 429's retry-after has passed", () => {
    const budget = new RequestBudget({ maxRequestsPerSecond: 1000 }, 0);
    budget.penalize(0, 2_000);
    expect(budget.take(500)).toBe(1_500);
    expect(budget.take(1_999)).toBe(1);
    expect(budget.take(2_000)).toBe(0);
  });

  it('rejects bad limits naming them', () => {
    expect(() => new RequestBudget({ maxInFlight: 0 })).toThrow(ConfigError);
    expect(() => new RequestBudget({ maxRequestsPerSecond: -1 })).toThrow('maxRequestsPerSecond');
    expect(() => new RequestBudget({ maxInFlight: 1.5 })).toThrow('positive integer');
  });
});

describe('LocalBudget (the queue)', () => {
  let clock: Clock;
  beforeEach(() => {
    clock = installClock();
  });
  afterEach(() => {
    clock.uninstall();
  });

  it('limits requests in flight, in arrival order, and frees a slot on release', async () => {
    const budget = new LocalBudget({ maxRequestsPerSecond: 1000, maxInFlight: 1 });
    const signal = new AbortController().signal;
    const granted: string[] = [];
    expect(await budget.acquire(signal)).toBe(true);
    void budget.acquire(signal).then(() => granted.push('b'));
    void budget.acquire(signal).then(() => granted.push('c'));
    await clock.tickAsync(5_000);
    expect(granted).toEqual([]);
    expect(budget.snapshot()).toMatchObject({ inFlight: 1, queued: 2 });
    budget.release();
    await clock.tickAsync(1);
    expect(granted).toEqual(['b']);
    budget.release();
    await clock.tickAsync(1);
    expect(granted).toEqual(['b', 'c']);
  });

  it('lets a waiter give up on abort, and answers false to every waiter once closed, leaving no timer', async () => {
    const budget = new LocalBudget({ maxRequestsPerSecond: 1, burst: 1 });
    const open = new AbortController().signal;
    expect(await budget.acquire(open)).toBe(true);
    const leaving = new AbortController();
    const gaveUp = budget.acquire(leaving.signal);
    const closed = budget.acquire(open);
    leaving.abort();
    expect(await gaveUp).toBe(false);
    budget.close();
    expect(await closed).toBe(false);
    expect(await budget.acquire(open)).toBe(false);
    await clock.tickAsync(2_000);
    expect(clock.countTimers()).toBe(0);
  });
});

const redisAvailable = await requireRedis();
const prefix = testPrefix();
afterAll(async () => {
  if (redisAvailable) await removeKeys(prefix);
});

describe.skipIf(!redisAvailable)('the fleet budget script (needs Redis)', () => {
  it('follows the same rules as RequestBudget, step for step', async () => {
    const redis = new Redis(REDIS_URL);
    try {
      const limits = { maxRequestsPerSecond: 40, burst: 5, minRequestsPerSecond: 2 };
      const local = new RequestBudget(limits, 0);
      const key = `${prefix}budget`;
      const script = (op: string, retryAfterMs: number, nowMs: number): Promise<[number, number]> =>
        redis.eval(FLEET_BUDGET_SCRIPT, 1, key, op, String(limits.maxRequestsPerSecond), String(limits.burst), String(limits.minRequestsPerSecond), String(retryAfterMs), String(nowMs)) as Promise<[number, number]>;
      let seed = 11;
      const random = (): number => ((seed = (seed * 48271) % 2147483647) - 1) / 2147483646;
      let nowMs = 0;
      for (let step = 0; step < 400; step++) {
        nowMs += Math.floor(random() * 120);
        if (random() < 0.05) {
          const retryAfterMs = random() < 0.5 ? 0 : Math.floor(random() * 800);
          local.penalize(nowMs, retryAfterMs);
          await script('penalize', retryAfterMs, nowMs);
        } else {
          const [waitMs, rate] = await script('acquire', 0, nowMs);
          expect([step, waitMs]).toEqual([step, local.take(nowMs)]);
          expect(rate / 1000).toBeCloseTo(local.currentRatePerSecond, 2);
        }
      }
    } finally {
      redis.disconnect();
    }
  });
});
