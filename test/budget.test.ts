import { describe, expect, it } from 'vitest';
import { RequestBudget } from '../src/budget.js';
import { ConfigError } from '../src/errors.js';

describe('RequestBudget', () => {
  it('hands out a burst, then tokens at the rate', () => {
    const budget = new RequestBudget({ maxRequestsPerSecond: 10, burst: 2, maxInFlight: 100 }, 0);
    expect([budget.tryAcquire(0), budget.tryAcquire(0), budget.tryAcquire(0)]).toEqual([true, true, false]);
    expect(budget.waitMs(0)).toBe(100);
    expect(budget.tryAcquire(100)).toBe(true);
  });

  it('limits requests in flight and frees a slot on release', () => {
    const budget = new RequestBudget({ maxRequestsPerSecond: 1000, maxInFlight: 1 }, 0);
    expect(budget.tryAcquire(0)).toBe(true);
    expect(budget.tryAcquire(0)).toBe(false);
    expect(budget.waitMs(0)).toBeUndefined();
    budget.release();
    expect(budget.tryAcquire(0)).toBe(true);
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
    budget.waitMs(16_500);
    expect(budget.currentRatePerSecond).toBe(20);
    // under demand: every attempt fails for lack of tokens, and the rate grows 2 % per second
    while (budget.tryAcquire(16_500)) budget.release();
    expect(budget.tryAcquire(16_500)).toBe(false);
    budget.waitMs(17_500);
    expect(budget.currentRatePerSecond).toBeCloseTo(20.4);
    // doubles in about 35 s, so from 20 to 100 in about 80 s
    for (let t = 18_500; t <= 52_500; t += 1000) while (budget.tryAcquire(t)) budget.release();
    expect(budget.currentRatePerSecond).toBeGreaterThan(39);
    expect(budget.currentRatePerSecond).toBeLessThan(42);
    for (let t = 53_500; t < 110_000; t += 1000) while (budget.tryAcquire(t)) budget.release();
    expect(budget.currentRatePerSecond).toBe(100);
  });

  it('rejects bad limits naming them', () => {
    expect(() => new RequestBudget({ maxInFlight: 0 })).toThrow(ConfigError);
    expect(() => new RequestBudget({ maxRequestsPerSecond: -1 })).toThrow('maxRequestsPerSecond');
    expect(() => new RequestBudget({ maxInFlight: 1.5 })).toThrow('positive integer');
  });
});
