import { describe, expect, it } from 'vitest';
import { ApiClient } from '../src/client.js';
import type { PollClient } from '../src/client.js';
import type { RunEvent, WatchEvent } from '../src/events.js';
import type { RunningSimulator, TimelineStep } from '../src/simulator.js';
import { waitForIdleThread, watchRun } from '../src/watch-run.js';
import type { ToolHandler } from '../src/watcher.js';
import { RunWatcher } from '../src/watcher.js';
import { runCli } from './spawn.js';
import { useSimulator } from './sim.js';

const KEY = 'sk-test-ACTIONS-555555';
const FAST = { jitter: 0, intervals: { queued: { baseMs: 100, capMs: 100 }, in_progress: { baseMs: 100, capMs: 100 }, requires_action: { baseMs: 100, capMs: 100 }, cancelling: { baseMs: 100, capMs: 100 }, unknown: { baseMs: 100, capMs: 100 } } };
const client = () => ({ provider: 'openai' as const, baseUrl: sim.baseUrl, credentials: { apiKey: KEY }, policy: FAST });
let sim: RunningSimulator;
let counter = 0;

useSimulator({ apiKey: KEY }, (started) => (sim = started));

function addRun(timeline: TimelineStep[], threadId?: string): { threadId: string; runId: string } {
  counter += 1;
  const ids = { threadId: threadId ?? `thread_act${counter}`, runId: `run_act${counter}` };
  sim.addRun({ ...ids, timeline, start: 'first_request' });
  return ids;
}

describe('tool handler (onRequiresAction)', () => {
  it('answers two rounds of requires_action, submitting all outputs in one POST each, and watches on to completed', async () => {
    const ids = addRun([{ status: 'in_progress', durationMs: 150 }, { status: 'requires_action' }, { status: 'in_progress', durationMs: 150 }, { status: 'requires_action' }, { status: 'in_progress', durationMs: 150 }, { status: 'completed' }]);
    const seen: string[][] = [];
    const onRequiresAction: ToolHandler = ({ toolCalls, run }) => {
      expect(run.status).toBe('requires_action');
      seen.push(toolCalls.map((c) => `${c.id}:${c.function?.name ?? ''}`));
      return toolCalls.map((c) => ({ tool_call_id: c.id, output: JSON.stringify({ city: 'Paris', temp: 21 }) }));
    };
    const events: WatchEvent[] = [];
    const run = await watchRun({ ...client(), ...ids, onRequiresAction, onEvent: (e) => events.push(e) });
    expect(run.status).toBe('completed');
    expect(seen).toEqual([['call_1:get_weather'], ['call_3:get_weather']]);
    expect(events.map((e) => e.type)).toEqual([
      'run.in_progress',
      'run.requires_action',
      'run.tool_outputs_submitted',
      'run.in_progress',
      'run.requires_action',
      'run.tool_outputs_submitted',
      'run.in_progress',
      'run.completed',
    ]);
    expect(events.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(events[2]).toMatchObject({ from: 'requires_action', to: 'requires_action', tool_call_ids: ['call_1'] });
    const posts = sim.requests(ids.runId).filter((r) => r.method === 'POST');
    expect(posts.map((p) => p.path)).toEqual([`/v1/threads/${ids.threadId}/runs/${ids.runId}/submit_tool_outputs`, `/v1/threads/${ids.threadId}/runs/${ids.runId}/submit_tool_outputs`]);
    expect(JSON.parse(posts[0]!.body!)).toEqual({ tool_outputs: [{ tool_call_id: 'call_1', output: '{"city":"Paris","temp":21}' }] });
  });

  it('reports a throwing handler once as run.action_failed and leaves the run for a person (no retry storm)', async () => {
    const ids = addRun([{ status: 'requires_action' }]);
    let calls = 0;
    const watcher = new RunWatcher(client());
    const events: RunEvent[] = [];
    watcher.on('event', (e) => events.push(e as RunEvent));
    const handle = watcher.watchRun({
      ...ids,
      timeoutMs: 1_500,
      onRequiresAction: () => {
        calls += 1;
        throw new Error('weather service down');
      },
    });
    await handle.promise.catch(() => undefined);
    await watcher.close();
    expect(calls).toBe(1);
    expect(events.map((e) => e.type)).toEqual(['run.requires_action', 'run.action_failed', 'watch.error']);
    expect(events[1]).toMatchObject({ reason: 'submit_tool_outputs', tool_call_ids: ['call_0'], error: { code: 'tool_handler_failed', message: 'weather service down' } });
    // it kept polling (a person may submit), but never posted
    expect(sim.requests(ids.runId).filter((r) => r.method === 'POST')).toHaveLength(0);
    expect(sim.requests(ids.runId).length).toBeGreaterThan(5);
  });

  it('reports outputs the server refuses (a missing tool call) as run.action_failed with the HTTP error', async () => {
    const ids = addRun([{ status: 'requires_action' }]);
    const events: WatchEvent[] = [];
    const error = await watchRun({ ...client(), ...ids, timeoutMs: 800, onEvent: (e) => events.push(e), onRequiresAction: () => [{ tool_call_id: 'call_0', output: 'ok' }, { tool_call_id: 'call_x', output: 'extra' }].slice(1) }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'deadline_exceeded' });
    expect(events[1]).toMatchObject({ type: 'run.action_failed', error: { code: 'tool_handler_failed', message: 'no output for tool call(s) call_0' } });
  });

  it('ends a watch whose handler never returns at the deadline, aborting the handler signal (no action_failed: the deadline ended it)', async () => {
    const ids = addRun([{ status: 'requires_action' }]);
    let aborted = false;
    const events: WatchEvent[] = [];
    const error = await watchRun({
      ...client(),
      ...ids,
      timeoutMs: 600,
      onEvent: (e) => events.push(e),
      onRequiresAction: ({ signal }) =>
        new Promise(() => {
          signal.addEventListener('abort', () => (aborted = true));
        }),
    }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'deadline_exceeded' });
    expect(aborted).toBe(true);
    expect(events.map((e) => e.type)).toEqual(['run.requires_action', 'watch.error']);
  });

  it('sends the submission inside the request budget, like a poll', async () => {
    const ids = addRun([{ status: 'requires_action' }, { status: 'completed' }]);
    const api = new ApiClient(client());
    const inFlightDuringPost: number[] = [];
    const counting: PollClient = {
      retrieve: (kind, ref, context) => api.retrieve(kind, ref, context),
      act: (kind, ref, action, body, context) => {
        inFlightDuringPost.push(watcher.budget.inFlight);
        return api.act(kind, ref, action, body, context);
      },
      close: () => api.close(),
    };
    const watcher = new RunWatcher({ client: counting, policy: FAST, maxInFlight: 1 });
    try {
      const handle = watcher.watchRun({ ...ids, onRequiresAction: ({ toolCalls }) => toolCalls.map((c) => ({ tool_call_id: c.id, output: 'ok' })) });
      expect((await handle.promise).status).toBe('completed');
    } finally {
      await watcher.close();
      api.close();
    }
    // the POST held the only slot: no poll could run beside it
    expect(inFlightDuringPost).toEqual([1]);
  });

  it('refuses onRequiresAction together with resolveOn requires_action', () => {
    const watcher = new RunWatcher(client());
    expect(() => watcher.watchRun({ threadId: 'thread_a', runId: 'run_a', resolveOn: ['requires_action'], onRequiresAction: () => [] })).toThrow('exclude each other');
    void watcher.close();
  });
});

describe('cancel', () => {
  it('cancels a run on request: run.cancel_requested, then cancelling and cancelled', async () => {
    const ids = addRun([{ status: 'in_progress' }]);
    const watcher = new RunWatcher(client());
    const events: WatchEvent[] = [];
    watcher.on('event', (e) => events.push(e));
    const handle = watcher.watchRun({ ...ids, watchId: 'w_cancel' });
    await new Promise<void>((resolve) => watcher.once('event', () => resolve()));
    await watcher.cancel('w_cancel');
    expect((await handle.promise).status).toBe('cancelled');
    await watcher.close();
    expect(events.map((e) => e.type)).toEqual(['run.in_progress', 'run.cancel_requested', 'run.cancelling', 'run.cancelled']);
    expect(events[1]).toMatchObject({ reason: 'requested', from: 'in_progress', to: 'in_progress' });
  });

  it('ends a response watch at once when the cancel answer is already final (cancelled)', async () => {
    const responseId = `resp_act${(counter += 1)}`;
    sim.addResponse({ responseId, timeline: [{ status: 'in_progress' }] });
    const watcher = new RunWatcher(client());
    const events: WatchEvent[] = [];
    watcher.on('event', (e) => events.push(e));
    const handle = watcher.watchResponse({ responseId, watchId: 'w_cancel_response', timeoutMs: 30_000 });
    await new Promise<void>((resolve) => watcher.once('event', () => resolve()));
    const polls = sim.requests(responseId).filter((r) => r.method === 'GET').length;
    await watcher.cancel('w_cancel_response');
    expect((await handle.promise).status).toBe('cancelled');
    await watcher.close();
    expect(events.map((e) => e.type)).toEqual(['response.in_progress', 'response.cancel_requested', 'response.cancelled']);
    // the answer to the cancel ended it: no poll after it
    expect(sim.requests(responseId).filter((r) => r.method === 'GET').length).toBeLessThanOrEqual(polls + 1);
  });

  it('cancels a run stalled past cancelAfterStallMs, once', async () => {
    const ids = addRun([{ status: 'queued' }]);
    const events: WatchEvent[] = [];
    const run = await watchRun({ ...client(), ...ids, cancelAfterStallMs: 400, onEvent: (e) => events.push(e) });
    expect(run.status).toBe('cancelled');
    expect(events.map((e) => e.type)).toEqual(['run.queued', 'run.cancel_requested', 'run.cancelling', 'run.cancelled']);
    expect(events[1]).toMatchObject({ reason: 'stalled' });
    expect((events[1] as { stalled_for_ms: number }).stalled_for_ms).toBeGreaterThanOrEqual(400);
    expect(sim.requests(ids.runId).filter((r) => r.method === 'POST')).toHaveLength(1);
  });

  it('reports a refused cancel as run.action_failed and rejects the call', async () => {
    const ids = addRun([{ status: 'in_progress', durationMs: 100 }, { status: 'cancelling' }]);
    const watcher = new RunWatcher(client());
    const events: WatchEvent[] = [];
    watcher.on('event', (e) => events.push(e));
    watcher.watchRun({ ...ids, watchId: 'w_refused', timeoutMs: 3_000 });
    await new Promise<void>((resolve) => watcher.on('event', (e) => e.type === 'run.cancelling' && resolve()));
    await expect(watcher.cancel('w_refused')).rejects.toMatchObject({ code: 'bad_request', httpStatus: 400 });
    await watcher.close();
    expect(events.find((e) => e.type === 'run.action_failed')).toMatchObject({ reason: 'cancel', error: { code: 'bad_request', http_status: 400 } });
  });

  it('runwatch cancel and cancel-response print the new snapshot; a finished run is exit 2 with the server message', async () => {
    const ids = addRun([{ status: 'in_progress' }]);
    const env = { OPENAI_API_KEY: KEY };
    const flags = ['--provider', 'openai', '--base-url', sim.baseUrl];
    const ok = await runCli(['cancel', ids.threadId, ids.runId, ...flags], env);
    expect(ok.code, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout.trim())).toMatchObject({ id: ids.runId, status: 'cancelling' });
    const done = addRun([{ status: 'completed' }]);
    const refused = await runCli(['cancel', done.threadId, done.runId, ...flags], env);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/^runwatch: .*Cannot cancel run with status 'completed'/m);
    sim.addResponse({ responseId: 'resp_cancel_me', timeline: [{ status: 'in_progress' }] });
    const response = await runCli(['cancel-response', 'resp_cancel_me', ...flags], env);
    expect(response.code, response.stderr).toBe(0);
    expect(JSON.parse(response.stdout.trim())).toMatchObject({ id: 'resp_cancel_me', object: 'response', status: 'cancelled' });
    expect(ok.stderr + refused.stderr + response.stderr).not.toContain(KEY);
  });
});

describe('thread guard', () => {
  it('waits until the latest run of a thread is no longer active', async () => {
    const threadId = `thread_guard${counter++}`;
    addRun([{ status: 'completed' }], threadId);
    await new Promise((resolve) => setTimeout(resolve, 5));
    const busy = addRun([{ status: 'in_progress', durationMs: 300 }, { status: 'requires_action', durationMs: 200 }, { status: 'completed' }], threadId);
    const events: WatchEvent[] = [];
    const thread = await waitForIdleThread({ ...client(), threadId, onEvent: (e) => events.push(e) });
    expect(thread).toMatchObject({ status: 'idle', latest_run: { id: busy.runId, status: 'completed' } });
    expect(events.map((e) => e.type)).toEqual(['thread.busy', 'thread.idle']);
    expect(events[0]).toMatchObject({ thread_id: threadId, thread: { status: 'busy' } });
    expect(sim.requests(busy.runId).length).toBe(0);
  });

  it('resolves at once for a thread without runs, and runwatch wait-thread exits 0', async () => {
    expect(await waitForIdleThread({ ...client(), threadId: 'thread_empty' })).toMatchObject({ status: 'idle', latest_run: null });
    const threadId = `thread_guard${counter++}`;
    addRun([{ status: 'queued', durationMs: 200 }, { status: 'failed' }], threadId);
    const result = await runCli(['wait-thread', threadId, '--provider', 'openai', '--base-url', sim.baseUrl, '--policy', JSON.stringify(FAST)], { OPENAI_API_KEY: KEY });
    expect(result.code, result.stderr).toBe(0);
    expect(result.events.map((e) => e.type)).toEqual(['thread.busy', 'thread.idle']);
  });
});
