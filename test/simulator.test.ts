import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningSimulator } from '../src/simulator.js';
import { parseSimulatedRun, startSimulator } from '../src/simulator.js';
import { useSimulator } from './sim.js';

let sim: RunningSimulator;
useSimulator({ apiKey: 'sk-sim-key' }, (started) => (sim = started));

const auth = { authorization: 'Bearer sk-sim-key', 'content-type': 'application/json' };
const get = async (path: string): Promise<{ status: number; body: Record<string, unknown> }> => {
  const res = await fetch(`${sim.baseUrl}${path}`, { headers: auth });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
};
const post = async (path: string, body: unknown = {}): Promise<{ status: number; body: Record<string, unknown> }> => {
  const res = await fetch(`${sim.baseUrl}${path}`, { method: 'POST', headers: auth, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
};

describe('simulator', () => {
  it('serves a run object shaped like the API', async () => {
    sim.addRun({ threadId: 'thread_s1', runId: 'run_s1', timeline: [{ status: 'in_progress' }], pollAfterMs: 1500 });
    const res = await fetch(`${sim.baseUrl}/threads/thread_s1/runs/run_s1`, { headers: auth });
    expect(res.headers.get('openai-poll-after-ms')).toBe('1500');
    expect(await res.json()).toMatchObject({ id: 'run_s1', object: 'thread.run', thread_id: 'thread_s1', status: 'in_progress', required_action: null });
  });

  it('waits at requires_action for tool outputs, then goes on', async () => {
    sim.addRun({ threadId: 'thread_s2', runId: 'run_s2', timeline: [{ status: 'requires_action' }, { status: 'in_progress', durationMs: 60_000 }, { status: 'completed' }] });
    const first = await get('/threads/thread_s2/runs/run_s2');
    expect(first.body).toMatchObject({ status: 'requires_action', required_action: { type: 'submit_tool_outputs' } });
    // an output is needed for every tool call, as the API demands
    const missing = await post('/threads/thread_s2/runs/run_s2/submit_tool_outputs', { tool_outputs: [] });
    expect(missing.status).toBe(400);
    expect(missing.body).toMatchObject({ error: { message: "Expected tool outputs for call_ids ['call_0'], got 0 output(s)." } });
    const submitted = await post('/threads/thread_s2/runs/run_s2/submit_tool_outputs', { tool_outputs: [{ tool_call_id: 'call_0', output: '{"temp":21}' }] });
    expect(submitted.body.status).toBe('in_progress');
    expect(sim.requests('run_s2').at(-1)).toMatchObject({ method: 'POST', body: JSON.stringify({ tool_outputs: [{ tool_call_id: 'call_0', output: '{"temp":21}' }] }) });
    expect((await post('/threads/thread_s2/runs/run_s2/submit_tool_outputs')).status).toBe(400);
    expect(sim.transitions('run_s2').map((t) => t.status)).toEqual(['requires_action', 'in_progress']);
  });

  it('cancels through cancelling to cancelled', async () => {
    sim.addRun({ threadId: 'thread_s3', runId: 'run_s3', timeline: [{ status: 'in_progress' }] });
    expect((await post('/threads/thread_s3/runs/run_s3/cancel')).body.status).toBe('cancelling');
    expect((await post('/threads/thread_s3/runs/run_s3/cancel')).status).toBe(400);
  });

  it('answers 401 without the key and 404 for unknown runs and paths', async () => {
    const res = await fetch(`${sim.baseUrl}/threads/thread_s1/runs/run_s1`, { headers: { authorization: 'Bearer sk-nope-0000' } });
    expect(res.status).toBe(401);
    expect((await get('/threads/thread_s1/runs/run_missing')).status).toBe(404);
    expect((await get('/threads/thread_other/runs/run_s1')).status).toBe(404);
    expect((await get('/assistants')).status).toBe(404);
  });

  it('adds runs over HTTP and rejects bad ones naming the field', async () => {
    const ok = await fetch(`${sim.baseUrl.replace(/\/v1$/, '')}/_sim/runs`, { method: 'POST', body: JSON.stringify({ threadId: 'thread_s4', runId: 'run_s4', timeline: [{ status: 'queued' }] }) });
    expect(ok.status).toBe(201);
    expect((await get('/threads/thread_s4/runs/run_s4')).body.status).toBe('queued');
    const bad = await fetch(`${sim.baseUrl.replace(/\/v1$/, '')}/_sim/runs`, { method: 'POST', body: JSON.stringify({ threadId: 'thread_s5', runId: 'run_s5', timeline: [] }) });
    expect(bad.status).toBe(400);
    expect(JSON.stringify(await bad.json())).toContain('timeline');
  });

  it('validates scenarios', () => {
    expect(() => parseSimulatedRun({ threadId: '../x', runId: 'r', timeline: [{ status: 'queued' }] })).toThrow('threadId');
    expect(() => parseSimulatedRun({ threadId: 't', runId: 'r', timeline: [{ status: 'queued' }], faults: [{ type: 'explode', from: 1 }] })).toThrow('faults');
    expect(parseSimulatedRun({ threadId: 't', runId: 'r', timeline: [{ status: 'queued', durationMs: 5 }] }).timeline).toHaveLength(1);
  });
});

describe('simulator rate limit', () => {
  it('answers 429 with retry-after beyond its rate, counts per second, and can skip recording requests', async () => {
    const limited = await startSimulator({ rateLimit: { requestsPerSecond: 0.01, burst: 5 }, recordRequests: false, runs: [{ threadId: 'thread_r', runId: 'run_r', timeline: [{ status: 'in_progress' }] }] });
    try {
      const answers = [];
      for (let i = 0; i < 8; i++) answers.push(await fetch(`${limited.baseUrl}/threads/thread_r/runs/run_r`));
      expect(answers.map((a) => a.status)).toEqual([200, 200, 200, 200, 200, 429, 429, 429]);
      const last = answers.at(-1)!;
      // one token per 100 s (so the test does not depend on how fast it runs)
      const waitMs = Number(last.headers.get('retry-after-ms'));
      expect(waitMs).toBeGreaterThan(90_000);
      expect(waitMs).toBeLessThanOrEqual(100_000);
      expect(last.headers.get('retry-after')).toBe(String(Math.ceil(waitMs / 1000)));
      expect(await last.json()).toMatchObject({ error: { code: 'rate_limit_exceeded' } });
      const stats = limited.stats();
      expect(stats).toMatchObject({ requests: 8, rateLimited: 3 });
      expect([...stats.perSecond.values()].reduce((sum, b) => sum + b.rateLimited, 0)).toBe(3);
      expect(limited.retrieveCount('run_r')).toBe(8);
      expect(limited.requests('run_r')).toEqual([]);
      expect(limited.transitions('run_r')).toMatchObject([{ status: 'in_progress' }]);
    } finally {
      await limited.close();
    }
  });
});

describe('simulator, azure style: the Foundry Agent Service shapes (stable/2025-05-01 and preview/2025-05-15-preview azure-ai-agents.json)', () => {
  let az: RunningSimulator;
  const TOKEN = 'eyJ.sim-azure-token-0000';
  beforeAll(async () => (az = await startSimulator({ errorStyle: 'azure', apiKey: TOKEN })));
  afterAll(async () => az.close());
  const call = async (method: 'GET' | 'POST', path: string, body?: unknown): Promise<{ status: number; body: Record<string, unknown> }> => {
    const res = await fetch(`${az.baseUrl}${path}${path.includes('?') ? '&' : '?'}api-version=2025-05-01`, { method, headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  };

  it("lists a thread's runs as Runs_ListRuns does: { data, last_id, has_more }, no object and no first_id", async () => {
    az.addRun({ threadId: 'thread_azl', runId: 'run_azl', timeline: [{ status: 'in_progress' }] });
    const list = await call('GET', '/threads/thread_azl/runs?limit=1&order=desc');
    expect(list.status).toBe(200);
    expect(Object.keys(list.body).sort()).toEqual(['data', 'has_more', 'last_id']);
    expect(list.body).toMatchObject({ data: [{ id: 'run_azl', object: 'thread.run', status: 'in_progress' }], last_id: 'run_azl', has_more: false });
    expect((await call('GET', '/threads/thread_none/runs?limit=1')).body).toEqual({ data: [], has_more: false });
  });

  it('asks for tool approvals (SubmitToolApprovalAction with an MCP call) and moves on only with tool_approvals', async () => {
    az.addRun({ threadId: 'thread_aza', runId: 'run_aza', timeline: [{ status: 'requires_action', requiredAction: 'submit_tool_approval' }, { status: 'in_progress', durationMs: 60_000 }, { status: 'completed' }] });
    const path = '/threads/thread_aza/runs/run_aza';
    expect((await call('GET', path)).body).toMatchObject({
      status: 'requires_action',
      required_action: { type: 'submit_tool_approval', submit_tool_approval: { tool_calls: [{ id: 'call_0', type: 'mcp', name: 'fetch_docs', arguments: '{"path":"README.md"}', server_label: 'docs' }] } },
    });
    const outputs = await call('POST', `${path}/submit_tool_outputs`, { tool_outputs: [{ tool_call_id: 'call_0', output: 'x' }] });
    expect(outputs.status).toBe(400);
    expect(outputs.body).toMatchObject({ error: { code: 'BadRequest', message: "Run 'run_aza' requires tool approvals (submit_tool_approval), not tool outputs." } });
    expect((await call('POST', `${path}/submit_tool_outputs`, { tool_approvals: [{ tool_call_id: 'call_0', approve: 'yes' }] })).status).toBe(400);
    expect((await call('POST', `${path}/submit_tool_outputs`, { tool_approvals: [{ tool_call_id: 'call_9', approve: true }] })).status).toBe(400);
    const approved = await call('POST', `${path}/submit_tool_outputs`, { tool_approvals: [{ tool_call_id: 'call_0', approve: true, headers: { 'x-api-key': 'k' } }] });
    expect(approved.status).toBe(200);
    expect(approved.body).toMatchObject({ status: 'in_progress', required_action: null });
  });

  it('refuses tool_approvals for a run that asks for tool outputs', async () => {
    az.addRun({ threadId: 'thread_azo', runId: 'run_azo', timeline: [{ status: 'requires_action' }, { status: 'completed' }] });
    const wrong = await call('POST', '/threads/thread_azo/runs/run_azo/submit_tool_outputs', { tool_approvals: [{ tool_call_id: 'call_0', approve: true }] });
    expect(wrong.status).toBe(400);
    expect(wrong.body).toMatchObject({ error: { message: "Run 'run_azo' requires tool outputs (submit_tool_outputs), not tool approvals." } });
    expect((await call('POST', '/threads/thread_azo/runs/run_azo/submit_tool_outputs', { tool_outputs: [{ tool_call_id: 'call_0', output: 'ok' }] })).body).toMatchObject({ status: 'completed' });
  });

  it('serves tool approvals in the azure style only, and keeps OpenAI lists as they are', async () => {
    expect(() => sim.addRun({ threadId: 'thread_x', runId: 'run_x', timeline: [{ status: 'requires_action', requiredAction: 'submit_tool_approval' }] })).toThrow('needs errorStyle azure');
    sim.addRun({ threadId: 'thread_oal', runId: 'run_oal', timeline: [{ status: 'queued' }] });
    expect((await get('/threads/thread_oal/runs?limit=1')).body).toMatchObject({ object: 'list', data: [{ id: 'run_oal' }], first_id: 'run_oal', last_id: 'run_oal', has_more: false });
  });
});
