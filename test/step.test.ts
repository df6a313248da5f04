import { describe, expect, it } from 'vitest';
import { RUN_KIND } from '../src/resource.js';
import type { ResourceKind, Snapshot } from '../src/resource.js';
import { DEFAULT_POLL_POLICY } from '../src/schedule.js';
import type { StepSettings } from '../src/step.js';
import { applyOutcome, deadlineMessage, decideAction, initialProgress, resumeProgress, resumeStep } from '../src/step.js';
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
  handlesToolApprovals: false,
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

  it('counts every poll, answered or failed, and an older record without the count starts at 0', () => {
    let progress = applyOutcome(kind, start, ok('queued'), settings, 0).progress;
    progress = applyOutcome(kind, progress, failure(503, 'transient'), settings, 1000).progress;
    progress = applyOutcome(kind, progress, ok('queued'), settings, 2000).progress;
    expect(progress.polls).toBe(3);
    expect(resumeProgress(kind, settings, { status: 'queued', seq: 1 }, 0).polls).toBe(0);
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

describe('tool approvals in the pure step', () => {
  const approval = { type: 'submit_tool_approval', submit_tool_approval: { tool_calls: [{ id: 'call_a', type: 'mcp', name: 'fetch_docs', arguments: '{}', server_label: 'docs' }] } };
  const outputs = { type: 'submit_tool_outputs', submit_tool_outputs: { tool_calls: [{ id: 'call_o', type: 'function', function: { name: 'f', arguments: '{}' } }] } };
  const approver: StepSettings = { ...settings, handlesToolApprovals: true };
  const runner: StepSettings = { ...settings, handlesToolCalls: true };
  const at = (requiredAction: unknown, with_: StepSettings = settings) => applyOutcome(kind, start, ok('requires_action', { required_action: requiredAction }), with_, 0);

  it('decides to submit tool approvals when an approval handler is set, once per set of tool calls', () => {
    const first = at(approval, approver);
    expect(first.emissions.map((e) => e.kind)).toEqual(['transition']);
    expect(first.result).toMatchObject({ kind: 'continue', action: { kind: 'submit_tool_approval', calls: [{ id: 'call_a', name: 'fetch_docs', server_label: 'docs' }] } });
    expect(decideAction({ ...first.progress, handledCalls: 'call_a' }, approver, 0)).toBeUndefined();
    // each handler answers its own kind of required action only
    expect(decideAction(first.progress, runner, 0)).toBeUndefined();
    expect(at(outputs, approver).result).not.toHaveProperty('action');
    expect(at(outputs, runner).result).toMatchObject({ action: { kind: 'submit_tool_outputs', calls: [{ id: 'call_o' }] } });
    // a required action without a type (an older server) is read by the field it carries
    const untyped = { ...first.progress, lastSnapshot: { id: 'run_1', status: 'requires_action', required_action: { submit_tool_outputs: outputs.submit_tool_outputs } } };
    expect(decideAction(untyped, runner, 0)).toMatchObject({ kind: 'submit_tool_outputs' });
  });

  it('without an approval handler, says once per set of tool calls that the run waits for a person', () => {
    const first = at(approval, runner);
    expect(first.emissions).toMatchObject([
      { kind: 'transition', to: 'requires_action', seq: 1 },
      { kind: 'approval_required', status: 'requires_action', seq: 2, calls: [{ id: 'call_a' }], snapshot: { required_action: approval } },
    ]);
    expect(first.progress).toMatchObject({ seq: 2, approvalReported: 'call_a', handledCalls: null });
    expect(first.result).not.toHaveProperty('action');
    const stored = JSON.parse(JSON.stringify(first.progress)) as typeof first.progress;
    const again = applyOutcome(kind, stored, ok('requires_action', { required_action: approval }), runner, 1000);
    expect(again.emissions).toEqual([]);
    const other = { ...approval, submit_tool_approval: { tool_calls: [{ id: 'call_b', type: 'mcp' }] } };
    expect(applyOutcome(kind, again.progress, ok('requires_action', { required_action: other }), runner, 2000).emissions).toMatchObject([{ kind: 'approval_required', seq: 3, calls: [{ id: 'call_b' }] }]);
    // tool outputs are only a transition, as before; a watch that resolves on requires_action ends there
    expect(at(outputs).emissions.map((e) => e.kind)).toEqual(['transition']);
    expect(at(approval, { ...settings, resolveOn: new Set(['requires_action']) }).emissions.map((e) => e.kind)).toEqual(['transition']);
  });

  it('resumes a progress stored before approvals were remembered', () => {
    expect(resumeProgress(kind, settings, { status: 'requires_action', seq: 3, handledCalls: 'call_1' }, 0)).toMatchObject({ seq: 3, handledCalls: 'call_1', approvalReported: null });
  });
});

describe("a server's retry-after", () => {
  it('is kept in the progress until the next answer without one, and a resumed watch starts after it', () => {
    const limited = applyOutcome(kind, start, failure(429, 'transient', { retryAfterMs: 2_000 }), settings, 10_000);
    expect(limited.progress.notBeforeMs).toBe(12_000);
    expect(limited.result).toMatchObject({ kind: 'continue', next: { kind: 'poll' } });
    // a restart inside it waits; one after it polls at once
    expect(resumeStep(limited.progress, 11_000)).toEqual({ kind: 'poll', atMs: 12_000 });
    expect(resumeStep(limited.progress, 12_500)).toEqual({ kind: 'poll', atMs: 12_500 });
    // a floor past the deadline ends the watch there
    expect(resumeStep({ ...limited.progress, notBeforeMs: limited.progress.deadlineAtMs + 1 }, 11_000)).toEqual({ kind: 'deadline', atMs: limited.progress.deadlineAtMs });
    const answered = applyOutcome(kind, limited.progress, ok('queued'), settings, 12_000);
    expect(answered.progress.notBeforeMs).toBeNull();
    expect(resumeStep(answered.progress, 12_001)).toEqual({ kind: 'poll', atMs: 12_001 });
    // an older stored progress has none
    expect(resumeProgress(kind, settings, { status: 'queued', seq: 1 }, 0).notBeforeMs).toBeNull();
  });
});
