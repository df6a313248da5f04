import { describe, expect, it } from 'vitest';
import { ConfigError } from '../src/errors.js';
import { DEFAULT_POLL_POLICY, MAX_TIMER_MS, deadlineFor, nextDelayMs, planNextStep, resolvePollPolicy } from '../src/schedule.js';

const noJitter = (): number => 0;
// the mechanics are tested on round numbers (fast growth, full jitter); the defaults have their own test
const policy = resolvePollPolicy({ intervals: { queued: { baseMs: 500, capMs: 5_000 }, in_progress: { baseMs: 1_000, capMs: 8_000 } }, growth: 1.5, jitter: 1 });

describe('nextDelayMs', () => {
  it('starts at the base interval of the status and grows while it is unchanged, up to the cap', () => {
    const delays = [0, 1, 2, 3, 4, 5, 10, 50].map((n) => nextDelayMs(policy, { status: 'in_progress', unchangedPolls: n, consecutiveErrors: 0 }, noJitter));
    expect(delays).toEqual([1000, 1500, 2250, 3375, 5063, 7594, 8000, 8000]);
  });

  it('resets to the base when the status changes (unchangedPolls back to 0)', () => {
    expect(nextDelayMs(policy, { status: 'queued', unchangedPolls: 0, consecutiveErrors: 0 }, noJitter)).toBe(500);
    expect(nextDelayMs(policy, { status: 'requires_action', unchangedPolls: 0, consecutiveErrors: 0 }, noJitter)).toBe(5000);
  });

  it('uses the unknown interval for statuses the API may add later, and for no status yet', () => {
    expect(nextDelayMs(policy, { status: 'thinking', unchangedPolls: 0, consecutiveErrors: 0 }, noJitter)).toBe(2000);
    expect(nextDelayMs(policy, { status: null, unchangedPolls: 0, consecutiveErrors: 0 }, noJitter)).toBe(2000);
  });

  it('keeps full jitter within [minIntervalMs, nominal]', () => {
    let seed = 42;
    const random = (): number => ((seed = (seed * 16807) % 2147483647) - 1) / 2147483646;
    const draws = Array.from({ length: 2000 }, () => nextDelayMs(policy, { status: 'in_progress', unchangedPolls: 3, consecutiveErrors: 0 }, random));
    expect(Math.min(...draws)).toBeGreaterThanOrEqual(policy.minIntervalMs);
    expect(Math.max(...draws)).toBeLessThanOrEqual(3375);
    // spread over the whole range, not stuck at one end
    expect(Math.min(...draws)).toBeLessThan(400);
    expect(Math.max(...draws)).toBeGreaterThan(3000);
    expect(nextDelayMs(policy, { status: 'in_progress', unchangedPolls: 0, consecutiveErrors: 0 }, () => 0.999999)).toBe(100);
  });

  it('applies partial jitter as a share of the delay', () => {
    const half = resolvePollPolicy({ intervals: policy.intervals, jitter: 0.5 });
    expect(nextDelayMs(half, { status: 'in_progress', unchangedPolls: 0, consecutiveErrors: 0 }, () => 0.999999)).toBe(501);
    expect(nextDelayMs(half, { status: 'in_progress', unchangedPolls: 0, consecutiveErrors: 0 }, noJitter)).toBe(1000);
  });

  it('backs off exponentially on transient errors, capped', () => {
    const delays = [1, 2, 3, 4, 5, 6, 7, 20].map((n) => nextDelayMs(policy, { status: 'in_progress', unchangedPolls: 0, consecutiveErrors: n }, noJitter));
    expect(delays).toEqual([500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
  });

  it('obeys retry-after exactly even when the backoff drew less', () => {
    const input = { status: 'in_progress', unchangedPolls: 0, consecutiveErrors: 1, hints: { retryAfterMs: 1234 } };
    expect(nextDelayMs(policy, input, () => 0.999999)).toBe(1234);
    expect(nextDelayMs(policy, { ...input, hints: { retryAfterMs: 1234.2 } }, () => 0.999999)).toBe(1235);
  });

  it('treats openai-poll-after-ms as a floor, not a replacement', () => {
    expect(nextDelayMs(policy, { status: 'in_progress', unchangedPolls: 0, consecutiveErrors: 0, hints: { pollAfterMs: 2500 } }, noJitter)).toBe(2500);
    expect(nextDelayMs(policy, { status: 'in_progress', unchangedPolls: 5, consecutiveErrors: 0, hints: { pollAfterMs: 2500 } }, noJitter)).toBe(7594);
  });

  it('clamps absurd hints', () => {
    expect(nextDelayMs(policy, { status: 'queued', unchangedPolls: 0, consecutiveErrors: 1, hints: { retryAfterMs: 1e12 } }, noJitter)).toBe(policy.maxRetryAfterMs);
    expect(nextDelayMs(policy, { status: 'queued', unchangedPolls: 0, consecutiveErrors: 0, hints: { pollAfterMs: 1e12 } }, noJitter)).toBe(policy.maxPollAfterMs);
    expect(nextDelayMs(policy, { status: 'queued', unchangedPolls: 0, consecutiveErrors: 0, hints: { pollAfterMs: -5, retryAfterMs: Number.NaN } }, noJitter)).toBe(500);
  });

  it('never exceeds the largest timer Node can arm', () => {
    const huge = resolvePollPolicy({ intervals: { in_progress: { baseMs: MAX_TIMER_MS, capMs: MAX_TIMER_MS } }, growth: 100 });
    expect(nextDelayMs(huge, { status: 'in_progress', unchangedPolls: 5, consecutiveErrors: 0 }, noJitter)).toBe(MAX_TIMER_MS);
  });
});

describe('DEFAULT_POLL_POLICY', () => {
  it('grows slowly from 1.75 s to 8 s in progress, jitters polls by 10 % and error backoffs fully', () => {
    const delays = [0, 1, 10, 31, 32].map((n) => nextDelayMs(DEFAULT_POLL_POLICY, { status: 'in_progress', unchangedPolls: n, consecutiveErrors: 0 }, noJitter));
    expect(delays).toEqual([1750, 1838, 2851, 7942, 8000]);
    expect(nextDelayMs(DEFAULT_POLL_POLICY, { status: 'queued', unchangedPolls: 0, consecutiveErrors: 0 }, noJitter)).toBe(1000);
    expect(nextDelayMs(DEFAULT_POLL_POLICY, { status: 'in_progress', unchangedPolls: 0, consecutiveErrors: 0 }, () => 0.999999)).toBe(1576);
    expect(nextDelayMs(DEFAULT_POLL_POLICY, { status: 'in_progress', unchangedPolls: 0, consecutiveErrors: 1 }, () => 0.999999)).toBe(100);
  });
});

describe('resolvePollPolicy', () => {
  it('merges a partial interval over the default of that status', () => {
    const merged = resolvePollPolicy({ intervals: { in_progress: { capMs: 20_000 }, thinking: { baseMs: 300 } } });
    expect(merged.intervals.in_progress).toEqual({ baseMs: 1750, capMs: 20_000 });
    expect(merged.intervals.thinking).toEqual({ baseMs: 300, capMs: 30_000 });
    expect(merged.intervals.queued).toEqual(DEFAULT_POLL_POLICY.intervals.queued);
  });

  it.each([
    [{ growth: 0.5 }, 'growth'],
    [{ jitter: 2 }, 'jitter'],
    [{ intervals: { queued: { baseMs: 5000, capMs: 10 } } }, 'intervals.queued.capMs'],
    [{ errorBackoff: { baseMs: -1 } }, 'errorBackoff.baseMs'],
    [{ minIntervalMs: Number.NaN }, 'minIntervalMs'],
  ])('rejects %j naming the field', (overrides, field) => {
    expect(() => resolvePollPolicy(overrides)).toThrow(ConfigError);
    expect(() => resolvePollPolicy(overrides)).toThrow(`\`${field}\``);
  });
});

describe('planNextStep', () => {
  it('polls after the delay when the deadline is further away', () => {
    expect(planNextStep(1000, 500, 10_000)).toEqual({ kind: 'poll', atMs: 1500 });
  });

  it('places the last poll at the deadline, then gives up', () => {
    expect(planNextStep(9800, 500, 10_000)).toEqual({ kind: 'poll', atMs: 10_000 });
    expect(planNextStep(10_000, 500, 10_000)).toEqual({ kind: 'deadline', atMs: 10_000 });
  });

  it('gives up at the deadline without a request when retry-after reaches past it', () => {
    expect(planNextStep(5000, 6000, 10_000, 11_000)).toEqual({ kind: 'deadline', atMs: 10_000 });
    expect(planNextStep(5000, 4000, 10_000, 9000)).toEqual({ kind: 'poll', atMs: 9000 });
  });
});

describe('deadlineFor', () => {
  const base = { startedAtMs: 1_000_000, expiresGraceMs: 120_000, defaultTimeoutMs: 3_600_000 };

  it('prefers an explicit timeout', () => {
    expect(deadlineFor({ ...base, timeoutMs: 5000, expiresAtMs: 9_000_000 })).toBe(1_005_000);
  });

  it('uses expires_at plus grace when there is no timeout', () => {
    expect(deadlineFor({ ...base, expiresAtMs: 1_600_000 })).toBe(1_720_000);
  });

  it('never ends before start + grace when the server clock is ahead', () => {
    expect(deadlineFor({ ...base, expiresAtMs: 10 })).toBe(1_120_000);
  });

  it('falls back to the default timeout', () => {
    expect(deadlineFor(base)).toBe(4_600_000);
  });
});
