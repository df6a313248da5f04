import { getEventListeners } from 'node:events';
import type { Clock } from '@sinonjs/fake-timers';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MAX_TIMER_MS, backoffDelayMs, sleep } from '../src/backoff.js';
import { T0, installClock } from './helpers.js';

const noJitter = (): number => 0;
const maxJitter = (): number => 0.999999;
const errorBackoff = { baseMs: 500, capMs: 30_000, growth: 2, jitter: 1 };

describe('backoffDelayMs', () => {
  it('grows by `growth` per attempt from `baseMs`, up to `capMs`', () => {
    const delays = [1, 2, 3, 4, 5, 6, 7, 8, 50, 1e9].map((attempt) => backoffDelayMs(errorBackoff, { attempt }, noJitter));
    expect(delays).toEqual([500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
    expect([1, 2, 3].map((attempt) => backoffDelayMs({ ...errorBackoff, growth: 1.5 }, { attempt }, noJitter))).toEqual([500, 750, 1125]);
  });

  it('keeps full jitter within [0, nominal] and half jitter within [nominal / 2, nominal], over the whole range', () => {
    let seed = 7;
    const random = (): number => ((seed = (seed * 16807) % 2147483647) - 1) / 2147483646;
    const full = Array.from({ length: 2000 }, () => backoffDelayMs(errorBackoff, { attempt: 4 }, random));
    expect(Math.min(...full)).toBeGreaterThanOrEqual(0);
    expect(Math.min(...full)).toBeLessThan(200);
    expect(Math.max(...full)).toBeLessThanOrEqual(4000);
    expect(Math.max(...full)).toBeGreaterThan(3800);
    const half = Array.from({ length: 2000 }, () => backoffDelayMs({ ...errorBackoff, jitter: 0.5 }, { attempt: 4 }, random));
    expect(Math.min(...half)).toBeGreaterThanOrEqual(2000);
    expect(Math.min(...half)).toBeLessThan(2100);
    expect(Math.max(...half)).toBeLessThanOrEqual(4000);
    expect(backoffDelayMs({ ...errorBackoff, jitter: 0.5 }, { attempt: 4 }, maxJitter)).toBe(2001);
    expect(backoffDelayMs({ ...errorBackoff, jitter: 0 }, { attempt: 4 }, maxJitter)).toBe(4000);
  });

  it('draws randomness exactly once, even without jitter', () => {
    let draws = 0;
    backoffDelayMs({ ...errorBackoff, jitter: 0 }, { attempt: 3, floorMs: 10 }, () => (draws += 1) && 0.5);
    expect(draws).toBe(1);
  });

  it('never waits less than the server floor, up to `maxFloorMs`; ignores absurd floors', () => {
    expect(backoffDelayMs(errorBackoff, { attempt: 1, floorMs: 1234 }, maxJitter)).toBe(1234);
    expect(backoffDelayMs(errorBackoff, { attempt: 1, floorMs: 1234.2 }, maxJitter)).toBe(1235);
    expect(backoffDelayMs(errorBackoff, { attempt: 3, floorMs: 100 }, noJitter)).toBe(2000);
    expect(backoffDelayMs({ ...errorBackoff, maxFloorMs: 5_000 }, { attempt: 1, floorMs: 9_000 }, noJitter)).toBe(5000);
    // without maxFloorMs the floor may exceed the cap: a receiver's retry-after is obeyed as given
    expect(backoffDelayMs(errorBackoff, { attempt: 1, floorMs: 3_600_000 }, noJitter)).toBe(3_600_000);
    for (const floorMs of [Number.NaN, -5, 0, Number.POSITIVE_INFINITY, undefined]) {
      expect(backoffDelayMs(errorBackoff, { attempt: 1, floorMs }, noJitter)).toBe(500);
    }
  });

  it('never exceeds the largest timer Node can arm, and never returns NaN', () => {
    const huge = { baseMs: MAX_TIMER_MS, capMs: MAX_TIMER_MS, growth: 100, jitter: 0 };
    expect(backoffDelayMs(huge, { attempt: 5 }, noJitter)).toBe(MAX_TIMER_MS);
    expect(backoffDelayMs({ ...errorBackoff, capMs: 1e15 }, { attempt: 200 }, noJitter)).toBe(MAX_TIMER_MS);
    expect(backoffDelayMs(errorBackoff, { attempt: 1, floorMs: 1e15 }, noJitter)).toBe(MAX_TIMER_MS);
    expect(backoffDelayMs({ baseMs: 0, capMs: 1000, growth: 100, jitter: 1 }, { attempt: 5000 }, noJitter)).toBe(0);
  });
});

/** The abort listeners still registered on `signal`. */
function abortListeners(signal: AbortSignal): number {
  return getEventListeners(signal, 'abort').length;
}

describe('sleep', () => {
  let clock: Clock;
  beforeEach(() => (clock = installClock()));
  afterEach(() => clock.uninstall());

  it('resolves after the delay, not before, and leaves no listener', async () => {
    const controller = new AbortController();
    let done = false;
    const waiting = sleep(1000, controller.signal).then(() => (done = true));
    await clock.tickAsync(999);
    expect(done).toBe(false);
    await clock.tickAsync(1);
    await waiting;
    expect(done).toBe(true);
    expect(clock.countTimers()).toBe(0);
    expect(abortListeners(controller.signal)).toBe(0);
  });

  it('rejects with the signal reason at once on abort, leaving no timer and no listener', async () => {
    const controller = new AbortController();
    const waiting = sleep(60_000, controller.signal);
    expect(clock.countTimers()).toBe(1);
    expect(abortListeners(controller.signal)).toBe(1);
    const reason = new Error('shutting down');
    controller.abort(reason);
    await expect(waiting).rejects.toBe(reason);
    expect(Date.now()).toBe(T0);
    expect(clock.countTimers()).toBe(0);
    expect(abortListeners(controller.signal)).toBe(0);
  });

  it('rejects without arming a timer when the signal has already aborted', async () => {
    const reason = new Error('gone');
    await expect(sleep(1000, AbortSignal.abort(reason))).rejects.toBe(reason);
    expect(clock.countTimers()).toBe(0);
  });

  it('clamps a delay Node cannot arm instead of firing it at once', async () => {
    let done = false;
    void sleep(1e15).then(() => (done = true));
    await clock.tickAsync(1000);
    expect(done).toBe(false);
    await clock.tickAsync(MAX_TIMER_MS - 1000);
    expect(done).toBe(true);
  });
});
