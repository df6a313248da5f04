import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { loadToolHandlers } from '../src/actions.js';
import { loadConfig } from '../src/daemon/config.js';
import { Daemon } from '../src/daemon/daemon.js';
import { ConfigError } from '../src/errors.js';
import type { WatchEvent } from '../src/events.js';
import { requireRedis } from './redis.js';
import { readSseEvents } from './sse.js';
import { storeKinds, useDaemon } from './daemons.js';

const KEY = 'sk-daemon-actions';
const redisAvailable = await requireRedis();

/** The daemon's tool handler module: answers get_weather, fails for the runs listed in its options, counts its calls. */
const HANDLER = `
export function createToolHandler(options) {
  const calls = (globalThis.__runwatchToolCalls ??= []);
  return async ({ toolCalls, run }) => {
    calls.push(run.id + ':' + toolCalls.map((c) => c.id).join(','));
    if (options.failRuns.includes(run.id)) throw new Error('weather service down for ' + run.id);
    return toolCalls.map((c) => ({ tool_call_id: c.id, output: JSON.stringify({ city: 'Paris', temp: 21 }) }));
  };
}
`;

function handlerCalls(): string[] {
  return ((globalThis as { __runwatchToolCalls?: string[] }).__runwatchToolCalls ??= []);
}

/** Reads SSE from the daemon until `done` holds for the events seen. */
function readEvents(base: string, query: string, done: (events: WatchEvent[]) => boolean): Promise<WatchEvent[]> {
  return readSseEvents(`${base}/v1/events${query}`, done);
}

describe.each(storeKinds(redisAvailable, ['sqlite', 'redis']))('daemon actions with the $kind store', ({ kind, skip }) => {
  const tag = kind;
  const t = useDaemon(kind, {
    skip,
    key: KEY,
    settings: (d) => {
      writeFileSync(path.join(d.dir, 'tools.mjs'), HANDLER);
      return [
        ['daemon.cancelAfterStallMs', '1500'],
        ['daemon.toolHandler', JSON.stringify({ path: path.join(d.dir, 'tools.mjs'), options: { failRuns: [`run_${tag}_fails`, `run_${tag}_restart`] } })],
      ];
    },
  });

  const post = async (route: string, body?: unknown): Promise<{ status: number; json: Record<string, unknown> }> => {
    const res = await fetch(`${t.base}${route}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
    return { status: res.status, json: (await res.json()) as Record<string, unknown> };
  };

  it.skipIf(skip)('answers two rounds of requires_action with the configured tool handler and follows the run to completed', async () => {
    const runId = `run_${tag}_tools`;
    t.sim.addRun({ threadId: 'thread_tools', runId, timeline: [{ status: 'in_progress', durationMs: 150 }, { status: 'requires_action' }, { status: 'in_progress', durationMs: 150 }, { status: 'requires_action' }, { status: 'completed' }], start: 'first_request' });
    expect((await post('/v1/watches', { thread_id: 'thread_tools', run_id: runId })).status).toBe(201);
    const events = await readEvents(t.base, `?run_id=${runId}`, (list) => list.some((e) => e.type === 'run.completed'));
    expect(events.map((e) => e.type)).toEqual(['run.in_progress', 'run.requires_action', 'run.tool_outputs_submitted', 'run.in_progress', 'run.requires_action', 'run.tool_outputs_submitted', 'run.completed']);
    expect(events.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(events[2]).toMatchObject({ tool_call_ids: ['call_1'] });
    expect(handlerCalls().filter((c) => c.startsWith(runId))).toEqual([`${runId}:call_1`, `${runId}:call_3`]);
    const posts = t.sim.requests(runId).filter((r) => r.method === 'POST');
    expect(posts).toHaveLength(2);
    expect(JSON.parse(posts[0]!.body!)).toEqual({ tool_outputs: [{ tool_call_id: 'call_1', output: '{"city":"Paris","temp":21}' }] });
  });

  it.skipIf(skip)('reports a failing handler once, then cancels the run left stalled past cancelAfterStallMs', async () => {
    const runId = `run_${tag}_fails`;
    t.sim.addRun({ threadId: 'thread_tools', runId, timeline: [{ status: 'requires_action' }], start: 'first_request' });
    await post('/v1/watches', { thread_id: 'thread_tools', run_id: runId });
    const events = await readEvents(t.base, `?run_id=${runId}`, (list) => list.some((e) => e.type === 'run.cancelled'));
    expect(events.map((e) => e.type)).toEqual(['run.requires_action', 'run.action_failed', 'run.cancel_requested', 'run.cancelling', 'run.cancelled']);
    expect(events[1]).toMatchObject({ reason: 'submit_tool_outputs', tool_call_ids: ['call_0'], error: { code: 'tool_handler_failed', message: `weather service down for ${runId}` } });
    expect(events[2]).toMatchObject({ reason: 'stalled' });
    expect((events[2] as { stalled_for_ms: number }).stalled_for_ms).toBeGreaterThanOrEqual(1500);
    // many polls in requires_action, one handler call: no retry storm
    expect(handlerCalls().filter((c) => c.startsWith(runId))).toHaveLength(1);
    expect(t.sim.requests(runId).filter((r) => r.method === 'POST').map((r) => r.path)).toEqual([`/v1/threads/thread_tools/runs/${runId}/cancel`]);
  });

  it.skipIf(skip)('cancels a background response over the API: 202, then response.cancel_requested and response.cancelled; 502 when refused', async () => {
    const responseId = `resp_${tag}_cancel`;
    t.sim.addResponse({ responseId, timeline: [{ status: 'in_progress' }] });
    const created = await post('/v1/watches', { response_id: responseId });
    const id = String(created.json.id);
    await readEvents(t.base, `?response_id=${responseId}`, (list) => list.length > 0);
    const accepted = await post(`/v1/watches/${id}/cancel`);
    expect(accepted.status).toBe(202);
    expect(accepted.json).toMatchObject({ id, kind: 'response' });
    const events = await readEvents(t.base, `?response_id=${responseId}`, (list) => list.some((e) => e.type === 'response.cancelled'));
    expect(events.map((e) => e.type)).toEqual(['response.in_progress', 'response.cancel_requested', 'response.cancelled']);
    expect(events[1]).toMatchObject({ reason: 'requested', seq: 2 });

    const runId = `run_${tag}_cancelling`;
    t.sim.addRun({ threadId: 'thread_tools', runId, timeline: [{ status: 'cancelling' }] });
    const watch = String((await post('/v1/watches', { thread_id: 'thread_tools', run_id: runId })).json.id);
    await readEvents(t.base, `?run_id=${runId}`, (list) => list.length > 0);
    const refused = await post(`/v1/watches/${watch}/cancel`);
    expect(refused.status).toBe(502);
    expect(refused.json).toMatchObject({ error: { code: 'cancel_refused' } });
    const after = await readEvents(t.base, `?run_id=${runId}`, (list) => list.some((e) => e.type === 'run.action_failed'));
    expect(after.at(-1)).toMatchObject({ reason: 'cancel', error: { code: 'bad_request', http_status: 400 } });
  });

  // last in this block: it restarts the daemon
  it.skipIf(skip)('does not call the handler again after a restart for tool calls it failed on; the stall cancel still comes, once', async () => {
    const runId = `run_${tag}_restart`;
    t.sim.addRun({ threadId: 'thread_tools', runId, timeline: [{ status: 'requires_action' }], start: 'first_request' });
    await post('/v1/watches', { thread_id: 'thread_tools', run_id: runId });
    await readEvents(t.base, `?run_id=${runId}`, (list) => list.some((e) => e.type === 'run.action_failed'));
    await t.restart();
    const events = await readEvents(t.base, `?run_id=${runId}`, (list) => list.some((e) => e.type === 'run.cancelled'));
    expect(events.map((e) => e.type)).toEqual(['run.requires_action', 'run.action_failed', 'run.cancel_requested', 'run.cancelling', 'run.cancelled']);
    expect(handlerCalls().filter((c) => c.startsWith(runId))).toHaveLength(1);
  });
});

/** A module with both handlers, the approval one as a named export beside the default tool handler. */
const APPROVALS = `
export default async ({ toolCalls }) => toolCalls.map((c) => ({ tool_call_id: c.id, output: 'ok' }));
export async function onToolApproval({ toolCalls, run }) {
  (globalThis.__runwatchApprovals ??= []).push(run.id + ':' + toolCalls.map((c) => c.server_label + '/' + c.name).join(','));
  return toolCalls.map((c) => ({ tool_call_id: c.id, approve: c.server_label === 'docs' }));
}
`;

describe.each(storeKinds(redisAvailable, ['sqlite']))('daemon tool approvals (Azure) with the $kind store', ({ kind, skip }) => {
  const t = useDaemon(kind, {
    skip,
    key: KEY,
    sim: { errorStyle: 'azure' },
    settings: (d) => {
      writeFileSync(path.join(d.dir, 'approvals.mjs'), APPROVALS);
      return [['daemon.toolHandler', JSON.stringify({ path: path.join(d.dir, 'approvals.mjs') })]];
    },
  });

  it.skipIf(skip)("answers tool approvals with the module's onToolApproval export, and tool calls with its default export", async () => {
    const runId = `run_${kind}_approvals`;
    t.sim.addRun({ threadId: 'thread_mcp', runId, timeline: [{ status: 'requires_action', requiredAction: 'submit_tool_approval' }, { status: 'in_progress', durationMs: 150 }, { status: 'requires_action' }, { status: 'completed' }], start: 'first_request' });
    const created = await fetch(`${t.base}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: 'thread_mcp', run_id: runId }) });
    expect(created.status).toBe(201);
    const events = await readEvents(t.base, `?run_id=${runId}`, (list) => list.some((e) => e.type === 'run.completed'));
    expect(events.map((e) => e.type)).toEqual(['run.requires_action', 'run.tool_approvals_submitted', 'run.in_progress', 'run.requires_action', 'run.tool_outputs_submitted', 'run.completed']);
    expect(events[1]).toMatchObject({ tool_call_ids: ['call_0'], approvals: [{ tool_call_id: 'call_0', approve: true }] });
    expect((globalThis as { __runwatchApprovals?: string[] }).__runwatchApprovals).toEqual([`${runId}:docs/fetch_docs`]);
    const posts = t.sim.requests(runId).filter((r) => r.method === 'POST');
    expect(posts.map((r) => Object.keys(JSON.parse(r.body!) as object))).toEqual([['tool_approvals'], ['tool_outputs']]);
  });
});

describe('daemon tool handler config', () => {
  it('refuses to start with a tool handler module that is missing or exports no function', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'runwatch-actions-'));
    writeFileSync(path.join(dir, 'empty.mjs'), 'export const x = 1;\n');
    for (const [file, message] of [
      ['missing.mjs', /cannot load tool handler module .*missing\.mjs/],
      ['empty.mjs', /must export default a function/],
    ] as const) {
      const config = loadConfig({ overrides: [['daemon.port', '0'], ['daemon.dataDir', JSON.stringify(dir)], ['daemon.toolHandler', JSON.stringify({ path: path.join(dir, file) })], ['watch.provider', '"openai"']] });
      const started = Daemon.start(config, { credentials: { apiKey: KEY } }, pino({ level: 'silent' }));
      await expect(started).rejects.toBeInstanceOf(ConfigError);
      await expect(started).rejects.toThrow(message);
    }
  });

  it('loads the tool approval handler from a named export, or from an object with both handlers', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'runwatch-approvals-'));
    const write = (name: string, code: string): string => {
      writeFileSync(path.join(dir, name), code);
      return path.join(dir, name);
    };
    const outputs = write('outputs.mjs', 'export default () => [];\n');
    expect(Object.keys(await loadToolHandlers(outputs))).toEqual(['onRequiresAction']);
    const named = write('named.mjs', 'export const onToolApproval = () => [];\n');
    expect(Object.keys(await loadToolHandlers(named))).toEqual(['onToolApproval']);
    const both = write('both.mjs', 'export function createToolHandler(o) { return { onRequiresAction: () => [], onToolApproval: () => [{ tool_call_id: o.id, approve: true }] }; }\n');
    const handlers = await loadToolHandlers(both, { id: 'call_1' });
    expect(typeof handlers.onRequiresAction).toBe('function');
    expect(await handlers.onToolApproval!({ toolCalls: [], run: { id: 'run_1', status: 'requires_action' }, signal: new AbortController().signal })).toEqual([{ tool_call_id: 'call_1', approve: true }]);
    const object = write('object.mjs', 'export default { onToolApproval: () => [] };\n');
    expect(Object.keys(await loadToolHandlers(object))).toEqual(['onToolApproval']);
    for (const [name, code, message] of [
      ['neither.mjs', 'export default { onToolApproval: 1 };\n', /onToolApproval must be a function/],
      ['twice.mjs', 'export default { onToolApproval: () => [] };\nexport const onToolApproval = () => [];\n', /two tool approval handlers/],
      ['empty.mjs', 'export const x = 1;\n', /must export default a function/],
    ] as const) {
      await expect(loadToolHandlers(write(name, code))).rejects.toThrow(message);
    }
  });
});
