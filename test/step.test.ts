import { describe, expect, it } from 'vitest';
import { RUN_KIND } from '../src/resource.js';
import type { ResourceKind, Snapshot } from '../src/resource.js';
import { DEFAULT_POLL_POLICY } from '../src/schedule.js';
import type { StepSettings } from '../src/step.js';
import { applyOutcome, deadlineMessage, initialProgress } from '../src/step.js';
import { failure, ok } from './helpers.js';

const kind = RUN_KIND as unknown as ResourceKind<object, Snapshot>;
const settings: StepSettings = {
  policy: DEFAULT_POLL_POLICY,
  resolveOn: new Set(),
  startedAtMs: 0,
  timeoutMs: undefined,
  expiresGraceMs: 1000,
  defaultTimeoutMs: 60_000,
  stallThresholdMs: 5000,
  cancelAfterStallMs: undefined,
  handlesToolCalls: false,
  random: () => 0,
};
const start = initialProgress(kind, settings, {}, 0);

describe('applyOutcome', () => {
  it('is plain data in, plain data out: a stored progress continues where it stopped', () => {
    const first = applyOutcome(kind, start, ok('queued'), settings, 0);
    expect(first.emissions).toEqual([{ kind: 'transition', from: null, to: 'queued', seq: 1, snapshot: expect.objectContaining({ status: 'queued' }) as unknown }]);
    expect(first.result).toEqual({ kind: 'continue', next: { kind: 'poll', atMs: 1000 } });
    const restored = JSON.parse(JSON.stringify(first.progress)) as typeof first.progress;
    const second = applyOutcome(kind, restored, ok('completed'), settings, 1000);
    expect(second.emissions).toMatchObject([{ from: 'queued', to: 'completed', seq: 2 }]);
    expect(second.result).toMatchObject({ kind: 'resolved', snapshot: { status: 'completed' } });
  });

  it('counts transient errors and obeys retry-after', () => {
    const { progress, result } = applyOutcome(kind, start, failure(429, 'transient', { retryAfterMs: 3000 }), settings, 100);
    expect(progress).toMatchObject({ consecutiveErrors: 1, lastFailure: { httpStatus: 429 } });
    expect(result).toEqual({ kind: 'continue', next: { kind: 'poll', atMs: 3100 } });
    expect(deadlineMessage(progress)).toMatch(/last error: HTTP 429$/);
  });

  it('fails on a permanent error without touching the progress', () => {
    const { progress, result } = applyOutcome(kind, start, failure(404, 'run_not_found'), settings, 0);
    expect(progress).toBe(start);
    expect(result).toMatchObject({ kind: 'failed', failure: { code: 'run_not_found' } });
  });

  it('reports a stall once, with its own seq', () => {
    let progress = applyOutcome(kind, start, ok('queued'), settings, 0).progress;
    const stalled = applyOutcome(kind, progress, ok('queued'), settings, 5000);
    expect(stalled.emissions).toMatchObject([{ kind: 'stalled', status: 'queued', seq: 2, stalledForMs: 5000 }]);
    progress = stalled.progress;
    expect(applyOutcome(kind, progress, ok('queued'), settings, 9000).emissions).toEqual([]);
  });

  it('ends at the deadline when it is reached', () => {
    const late = { ...start, deadlineAtMs: 1000 };
    expect(applyOutcome(kind, late, ok('queued'), settings, 1000).result).toEqual({ kind: 'continue', next: { kind: 'deadline', atMs: 1000 } });
  });
});
