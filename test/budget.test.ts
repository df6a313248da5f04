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

  it('halves the rate on 429 once per second, then grows back over ten seconds', () => {
    const budget = new RequestBudget({ maxRequestsPerSecond: 100, minRequestsPerSecond: 20 }, 0);
    budget.penalize(0);
    expect(budget.currentRatePerSecond).toBe(50);
    // a second 429 within the same second is the same congestion: no second halving (and 500 ms of growth)
    budget.penalize(500);
    expect(budget.currentRatePerSecond).toBe(55);
    // a 429 every second: +10 and halve each time would settle near 10, the floor holds it at 20
    for (const t of [1500, 2500, 3500, 4500, 5500, 6500]) budget.penalize(t);
    expect(budget.currentRatePerSecond).toBe(20);
    budget.waitMs(7500);
    expect(budget.currentRatePerSecond).toBeCloseTo(30);
    budget.waitMs(30_000);
    expect(budget.currentRatePerSecond).toBe(100);
  });

  it('rejects bad limits naming them', () => {
    expect(() => new RequestBudget({ maxInFlight: 0 })).toThrow(ConfigError);
    expect(() => new RequestBudget({ maxRequestsPerSecond: -1 })).toThrow('maxRequestsPerSecond');
    expect(() => new RequestBudget({ maxInFlight: 1.5 })).toThrow('positive integer');
  });
});
