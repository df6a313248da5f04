import { describe, expect, it } from 'vitest';
import { PollWindow } from '../src/daemon/metrics.js';

describe('PollWindow (the fleet view\'s polls/s and 429 share)', () => {
  const T = 1_700_000_000_000;

  it('gives the rate over the last whole seconds and the share answered 429', () => {
    const window = new PollWindow();
    // 10 polls a second for 10 s, every fifth one throttled
    for (let s = 0; s < 10; s++) for (let i = 0; i < 10; i++) window.record(T + s * 1000 + i * 50, i % 5 === 0);
    expect(window.rate(T + 10_000)).toBe(10);
    expect(window.throttledShare(T + 10_000)).toBeCloseTo(0.2);
    // the second still filling is not counted yet
    window.record(T + 10_100, false);
    expect(window.rate(T + 10_500)).toBe(10);
  });

  it('forgets a bucket once its second is a minute old, and answers 0 without polls', () => {
    const window = new PollWindow();
    expect(window.rate(T)).toBe(0);
    expect(window.throttledShare(T)).toBe(0);
    window.record(T, true);
    expect(window.throttledShare(T + 1000)).toBe(1);
    expect(window.rate(T + 1000, 1)).toBe(1);
    // the ring slot of T is reused 60 s later: the old count must not leak into the new second
    window.record(T + 60_000, false);
    expect(window.rate(T + 61_000, 1)).toBe(1);
    expect(window.throttledShare(T + 61_000)).toBe(0);
    expect(window.rate(T + 200_000)).toBe(0);
  });
});
