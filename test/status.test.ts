import { describe, expect, it } from 'vitest';
import { RUN_KIND } from '../src/resource.js';
import { StatusMachine, normalizeStatus } from '../src/status.js';

const machine = (): StatusMachine => new StatusMachine(RUN_KIND.rules);

describe('normalizeStatus', () => {
  it('keeps documented statuses and cleans odd ones', () => {
    expect(normalizeStatus('in_progress')).toBe('in_progress');
    expect(normalizeStatus(' Completed ')).toBe('completed');
    expect(normalizeStatus('in-progress.v2')).toBe('in_progress_v2');
    expect(normalizeStatus('x'.repeat(100))).toHaveLength(64);
  });

  it('rejects what is not a non-empty string', () => {
    for (const raw of [undefined, null, 3, '', '   ', {}]) expect(normalizeStatus(raw)).toBeUndefined();
  });
});

describe('StatusMachine', () => {
  it('emits the first observation as a transition from null, then only changes', () => {
    const m = machine();
    expect(m.observe('queued')).toEqual({ kind: 'transition', from: null, to: 'queued', seq: 1, terminal: false });
    expect(m.observe('queued')).toEqual({ kind: 'unchanged', status: 'queued' });
    expect(m.observe('in_progress')).toEqual({ kind: 'transition', from: 'queued', to: 'in_progress', seq: 2, terminal: false });
    expect(m.observe('completed')).toEqual({ kind: 'transition', from: 'in_progress', to: 'completed', seq: 3, terminal: true });
    expect(m.terminal).toBe(true);
  });

  it('accepts skipped states as one transition', () => {
    const m = machine();
    m.observe('queued');
    expect(m.observe('completed')).toMatchObject({ kind: 'transition', from: 'queued', to: 'completed', seq: 2, terminal: true });
  });

  it.each(['completed', 'failed', 'cancelled', 'expired', 'incomplete'])('treats %s as terminal and ignores everything after it', (terminal) => {
    const m = machine();
    m.observe('in_progress');
    expect(m.observe(terminal)).toMatchObject({ kind: 'transition', terminal: true });
    for (const later of ['in_progress', 'queued', 'completed', 'failed', 'brand_new']) {
      expect(m.observe(later)).toEqual({ kind: 'after_terminal', status: later, current: terminal });
    }
    expect(m.seq).toBe(2);
    expect(m.status).toBe(terminal);
  });

  it('treats an unknown status as a non-terminal transition', () => {
    const m = machine();
    m.observe('in_progress');
    expect(m.observe('thinking_hard')).toEqual({ kind: 'transition', from: 'in_progress', to: 'thinking_hard', seq: 2, terminal: false });
    expect(m.terminal).toBe(false);
    expect(m.observe('thinking_hard')).toEqual({ kind: 'unchanged', status: 'thinking_hard' });
    expect(m.observe('completed')).toMatchObject({ kind: 'transition', from: 'thinking_hard', terminal: true });
  });

  it('ignores a stale replica going back to queued, but not the tool-output loop', () => {
    const m = machine();
    m.observe('in_progress');
    expect(m.observe('queued')).toEqual({ kind: 'stale', status: 'queued', current: 'in_progress' });
    expect(m.observe('requires_action')).toMatchObject({ kind: 'transition', seq: 2 });
    // after submit_tool_outputs a run really goes back to queued
    expect(m.observe('queued')).toMatchObject({ kind: 'transition', from: 'requires_action', to: 'queued', seq: 3 });
  });

  it('only lets a cancelling run end', () => {
    const m = machine();
    m.observe('cancelling');
    for (const stale of ['queued', 'in_progress', 'requires_action']) expect(m.observe(stale)).toMatchObject({ kind: 'stale' });
    expect(m.observe('cancelled')).toMatchObject({ kind: 'transition', terminal: true });
  });

  it('resumes from a stored state and reserves seq for error events', () => {
    const m = new StatusMachine(RUN_KIND.rules, { status: 'in_progress', seq: 4 });
    expect(m.observe('in_progress')).toEqual({ kind: 'unchanged', status: 'in_progress' });
    expect(m.observe('completed')).toMatchObject({ from: 'in_progress', seq: 5 });
    expect(m.nextSeq()).toBe(6);
  });
});
