import { mkdtempSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ApiClient, DEFAULT_AZURE_API_VERSION } from '../src/client.js';
import { ConfigError } from '../src/errors.js';
import type { WatchEvent } from '../src/events.js';
import { RUN_KIND, THREAD_KIND } from '../src/resource.js';
import type { RunningSimulator } from '../src/simulator.js';
import { waitForIdleThread, watchRun } from '../src/watch-run.js';
import type { ToolApprovalHandler, ToolHandler } from '../src/watcher.js';
import { RunWatcher } from '../src/watcher.js';
import { runCli } from './spawn.js';
import { useSimulator } from './sim.js';

const TOKEN_A = 'eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.token-A-1111111111';
const TOKEN_B = 'eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.token-B-2222222222';
const FAST = { jitter: 0, intervals: { queued: { baseMs: 100, capMs: 100 }, in_progress: { baseMs: 100, capMs: 100 } }, errorBackoff: { baseMs: 100, capMs: 100 } };
let sim: RunningSimulator;
let counter = 0;

useSimulator({ errorStyle: 'azure', apiKey: TOKEN_A }, (started) => (sim = started));

function addRun(timeline: { status: string; durationMs?: number }[]): { threadId: string; runId: string } {
  counter += 1;
  const ids = { threadId: `thread_az${counter}`, runId: `run_az${counter}` };
  sim.addRun({ ...ids, timeline, start: 'first_request' });
  return ids;
}

describe('provider azure', () => {
  it('sends the api-version query parameter and the bearer token to the project endpoint', async () => {
    const ids = addRun([{ status: 'in_progress', durationMs: 150 }, { status: 'completed' }]);
    expect(sim.baseUrl).toMatch(/\/api\/projects\/sim$/);
    const run = await watchRun({ provider: 'azure', baseUrl: sim.baseUrl, credentials: { apiKey: TOKEN_A }, policy: FAST, ...ids });
    expect(run.status).toBe('completed');
    const gets = sim.requests(ids.runId);
    expect(gets.length).toBeGreaterThanOrEqual(2);
    for (const request of gets) {
      expect(request.path).toBe(`/api/projects/sim/threads/${ids.threadId}/runs/${ids.runId}`);
      expect(request.headers.authorization).toBe(`Bearer ${TOKEN_A}`);
      // OpenAI's beta header is not part of Azure's API (the spec's Runs_GetRun takes none, nor does @azure/ai-agents send it)
      expect(request.headers['openai-beta']).toBeUndefined();
    }
  });

  it("reads Azure's error shape: a wrong api-version is a bad request, a 404 is run_not_found, with the server's message", async () => {
    const ids = addRun([{ status: 'completed' }]);
    const client = new ApiClient({ provider: 'azure', baseUrl: sim.baseUrl, credentials: { apiKey: TOKEN_A }, apiVersion: '2024-01-01-preview' });
    const wrong = await client.retrieve(RUN_KIND, { thread_id: ids.threadId, run_id: ids.runId }, { watchId: 'w' });
    expect(wrong).toMatchObject({ ok: false, retryable: false, code: 'bad_request', httpStatus: 400, requestId: expect.stringMatching(/^sim-/) as unknown });
    expect(!wrong.ok && wrong.message).toContain("Unsupported api-version '2024-01-01-preview'. The supported version is 2025-05-01. (BadRequest)");
    client.close();
    const right = new ApiClient({ provider: 'azure', baseUrl: sim.baseUrl, credentials: { apiKey: TOKEN_A } });
    expect(await right.retrieve(RUN_KIND, { thread_id: ids.threadId, run_id: 'run_missing' }, { watchId: 'w' })).toMatchObject({ ok: false, code: 'run_not_found', message: expect.stringContaining('(NotFound)') as unknown });
    const denied = new ApiClient({ provider: 'azure', baseUrl: sim.baseUrl, credentials: { apiKey: 'not-the-token-0000' } });
    expect(await denied.retrieve(RUN_KIND, { thread_id: ids.threadId, run_id: ids.runId }, { watchId: 'w' })).toMatchObject({ ok: false, code: 'unauthorized', message: expect.stringContaining('audience is incorrect') as unknown });
    right.close();
    denied.close();
    expect(DEFAULT_AZURE_API_VERSION).toBe('2025-05-01');
  });

  it('refuses to start without a project endpoint', () => {
    expect(() => new ApiClient({ provider: 'azure', credentials: { apiKey: TOKEN_A } })).toThrow(ConfigError);
    expect(() => new ApiClient({ provider: 'azure', baseUrl: sim.baseUrl, apiVersion: 'x&y=1' })).toThrow('invalid apiVersion');
  });

  it('re-reads a rotated token file after a 401 and goes on without an error event', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'rw-azure-'));
    const tokenFile = path.join(dir, 'token');
    writeFileSync(tokenFile, `${TOKEN_A}\n`);
    const ids = addRun([{ status: 'in_progress', durationMs: 1500 }, { status: 'completed' }]);
    const watcher = new RunWatcher({ provider: 'azure', baseUrl: sim.baseUrl, credentials: { tokenFile }, policy: FAST });
    const events: WatchEvent[] = [];
    watcher.on('event', (event) => events.push(event));
    const handle = watcher.watchRun(ids);
    await new Promise<void>((resolve) => watcher.once('event', () => resolve()));
    // the identity provider rotates: the server accepts only the new token, and the file gets it
    sim.setApiKey(TOKEN_B);
    writeFileSync(`${tokenFile}.tmp`, TOKEN_B);
    renameSync(`${tokenFile}.tmp`, tokenFile);
    try {
      expect((await handle.promise).status).toBe('completed');
    } finally {
      await watcher.close();
      sim.setApiKey(TOKEN_A);
    }
    expect(events.map((e) => e.type)).toEqual(['run.in_progress', 'run.completed']);
    const gets = sim.requests(ids.runId);
    expect(gets.at(-1)?.headers.authorization).toBe(`Bearer ${TOKEN_B}`);
    expect(gets.filter((r) => r.headers.authorization === `Bearer ${TOKEN_B}`).length).toBeGreaterThan(0);
  });

  it('answers a 401 by reading the token file again (even within the second it is cached) and retrying once', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'rw-azure-'));
    const tokenFile = path.join(dir, 'token');
    writeFileSync(tokenFile, TOKEN_A);
    const ids = addRun([{ status: 'in_progress' }]);
    const ref = { thread_id: ids.threadId, run_id: ids.runId };
    const client = new ApiClient({ provider: 'azure', baseUrl: sim.baseUrl, credentials: { tokenFile } });
    try {
      expect(await client.retrieve(RUN_KIND, ref, { watchId: 'w' })).toMatchObject({ ok: true });
      sim.setApiKey(TOKEN_B);
      writeFileSync(tokenFile, TOKEN_B);
      // right away: the cached TOKEN_A gets a 401, the file is read again, the retry carries TOKEN_B
      expect(await client.retrieve(RUN_KIND, ref, { watchId: 'w' })).toMatchObject({ ok: true });
      // a token that is wrong in the file too stays a 401 (one retry, no loop)
      sim.setApiKey('yet-another-token-3333');
      expect(await client.retrieve(RUN_KIND, ref, { watchId: 'w' })).toMatchObject({ ok: false, code: 'unauthorized' });
    } finally {
      client.close();
      sim.setApiKey(TOKEN_A);
    }
  });

  it('runwatch watch --provider azure: token from AZURE_AI_TOKEN_FILE, never printed', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'rw-azure-cli-'));
    const tokenFile = path.join(dir, 'token');
    writeFileSync(tokenFile, TOKEN_A);
    const ids = addRun([{ status: 'queued', durationMs: 100 }, { status: 'completed' }]);
    const args = ['watch', ids.threadId, ids.runId, '--provider', 'azure', '--base-url', sim.baseUrl, '--policy', JSON.stringify(FAST), '--log-level', 'debug'];
    const ok = await runCli(args, { AZURE_AI_TOKEN_FILE: tokenFile });
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.events.map((e) => e.type)).toEqual(['run.queued', 'run.completed']);
    expect(ok.stdout + ok.stderr).not.toContain('token-A');
    const noEndpoint = await runCli(['watch', ids.threadId, ids.runId, '--provider', 'azure'], { AZURE_AI_TOKEN: TOKEN_A });
    expect(noEndpoint.code).toBe(64);
    expect(noEndpoint.stderr).toMatch(/^runwatch: provider azure needs a base URL: the project endpoint/m);
    const noToken = await runCli(args, {});
    expect(noToken.code).toBe(64);
    expect(noToken.stderr).toMatch(/missing token: set AZURE_AI_TOKEN or AZURE_AI_TOKEN_FILE/);
    const wrongVersion = await runCli([...args, '--api-version', '2024-01-01'], { AZURE_AI_TOKEN: TOKEN_A });
    expect(wrongVersion.code).toBe(2);
    expect(wrongVersion.stderr).toMatch(/HTTP 400: Unsupported api-version/);
    expect(wrongVersion.stderr).not.toContain('token-A');
  });

  it("waits for an idle thread over Azure's list shape (Runs_ListRuns: { data, last_id, has_more }, no object), library and CLI", async () => {
    const ids = addRun([{ status: 'in_progress', durationMs: 300 }, { status: 'completed' }]);
    const events: WatchEvent[] = [];
    const thread = await waitForIdleThread({ provider: 'azure', baseUrl: sim.baseUrl, credentials: { apiKey: TOKEN_A }, policy: FAST, threadId: ids.threadId, timeoutMs: 5_000, onEvent: (e) => events.push(e) });
    expect(thread).toMatchObject({ status: 'idle', latest_run: { id: ids.runId, status: 'completed' } });
    expect(events.map((e) => e.type)).toEqual(['thread.busy', 'thread.idle']);
    const busy = addRun([{ status: 'queued', durationMs: 200 }, { status: 'failed' }]);
    const cli = await runCli(['wait-thread', busy.threadId, '--provider', 'azure', '--base-url', sim.baseUrl, '--policy', JSON.stringify(FAST), '--timeout', '5s'], { AZURE_AI_TOKEN: TOKEN_A });
    expect(cli.code, cli.stderr).toBe(0);
    expect(cli.events.map((e) => e.type)).toEqual(['thread.busy', 'thread.idle']);
  });
});

describe('the thread guard reads both list shapes', () => {
  const run = { id: 'run_1', object: 'thread.run', thread_id: 'thread_1', status: 'in_progress' };
  it("takes Azure's { data, last_id, has_more } and OpenAI's { object: 'list', ... }", () => {
    expect(THREAD_KIND.parseSnapshot({ data: [run], last_id: 'run_1', has_more: false })).toMatchObject({ id: 'thread_1', status: 'busy', latest_run: { id: 'run_1' } });
    expect(THREAD_KIND.parseSnapshot({ data: [], has_more: false })).toMatchObject({ status: 'idle', latest_run: null });
    expect(THREAD_KIND.parseSnapshot({ object: 'list', data: [{ ...run, status: 'completed' }], first_id: 'run_1', last_id: 'run_1', has_more: false })).toMatchObject({ status: 'idle' });
  });

  it('still refuses what is not a list of runs', () => {
    for (const body of [run, { object: 'thread.run', data: [] }, { object: 'list' }, { data: 'nope' }, { data: [{ id: 'x' }] }, null, [], 'list']) {
      expect(THREAD_KIND.parseSnapshot(body)).toBeUndefined();
    }
  });
});

describe('tool approvals (MCP tools: required_action.type submit_tool_approval, preview/2025-05-15-preview)', () => {
  const azure = () => ({ provider: 'azure' as const, baseUrl: sim.baseUrl, credentials: { apiKey: TOKEN_A }, policy: { ...FAST, intervals: { ...FAST.intervals, requires_action: { baseMs: 100, capMs: 100 } } } });
  const APPROVAL = { status: 'requires_action', requiredAction: 'submit_tool_approval' } as const;

  it('answers approvals with onToolApproval and tool calls with onRequiresAction, each once, and follows the run to completed', async () => {
    const ids = addRun([APPROVAL, { status: 'in_progress', durationMs: 150 }, { status: 'requires_action' }, { status: 'in_progress', durationMs: 150 }, { status: 'completed' }]);
    const asked: string[] = [];
    const onToolApproval: ToolApprovalHandler = ({ toolCalls, run, signal }) => {
      expect(run.required_action?.type).toBe('submit_tool_approval');
      expect(signal.aborted).toBe(false);
      asked.push(...toolCalls.map((c) => `${c.id}:${c.server_label ?? ''}/${c.name ?? ''}`));
      return toolCalls.map((c) => ({ tool_call_id: c.id, approve: true, headers: { 'x-mcp-key': 'mcp-secret-1234' } }));
    };
    const answered: string[] = [];
    const onRequiresAction: ToolHandler = ({ toolCalls }) => {
      answered.push(...toolCalls.map((c) => c.id));
      return toolCalls.map((c) => ({ tool_call_id: c.id, output: 'ok' }));
    };
    const events: WatchEvent[] = [];
    const run = await watchRun({ ...azure(), ...ids, onToolApproval, onRequiresAction, onEvent: (e) => events.push(e) });
    expect(run.status).toBe('completed');
    expect(events.map((e) => e.type)).toEqual(['run.requires_action', 'run.tool_approvals_submitted', 'run.in_progress', 'run.requires_action', 'run.tool_outputs_submitted', 'run.in_progress', 'run.completed']);
    expect(events[1]).toMatchObject({ seq: 2, from: 'requires_action', to: 'requires_action', tool_call_ids: ['call_0'], approvals: [{ tool_call_id: 'call_0', approve: true }] });
    // an approval's headers (often an MCP server's key) go to the server only, never into an event
    expect(JSON.stringify(events)).not.toContain('mcp-secret');
    expect(asked).toEqual(['call_0:docs/fetch_docs']);
    expect(answered).toEqual(['call_2']);
    const posts = sim.requests(ids.runId).filter((r) => r.method === 'POST');
    expect(posts.map((p) => JSON.parse(p.body!) as unknown)).toEqual([{ tool_approvals: [{ tool_call_id: 'call_0', approve: true, headers: { 'x-mcp-key': 'mcp-secret-1234' } }] }, { tool_outputs: [{ tool_call_id: 'call_2', output: 'ok' }] }]);
    expect(posts.every((p) => p.path === `/api/projects/sim/threads/${ids.threadId}/runs/${ids.runId}/submit_tool_outputs` && p.headers['openai-beta'] === undefined)).toBe(true);
  });

  it('without onToolApproval, says once that the run waits for a person (run.approval_required, with what is asked), posts nothing and keeps polling', async () => {
    const ids = addRun([APPROVAL]);
    let outputCalls = 0;
    const events: WatchEvent[] = [];
    const error = await watchRun({
      ...azure(),
      ...ids,
      timeoutMs: 1_000,
      onEvent: (e) => events.push(e),
      onRequiresAction: () => {
        outputCalls += 1;
        return [];
      },
    }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'deadline_exceeded' });
    expect(events.map((e) => e.type)).toEqual(['run.requires_action', 'run.approval_required', 'watch.error']);
    expect(events[1]).toMatchObject({
      seq: 2,
      from: 'requires_action',
      to: 'requires_action',
      tool_call_ids: ['call_0'],
      required_action: { type: 'submit_tool_approval', submit_tool_approval: { tool_calls: [{ id: 'call_0', type: 'mcp', name: 'fetch_docs', server_label: 'docs' }] } },
    });
    expect(outputCalls).toBe(0);
    expect(sim.requests(ids.runId).filter((r) => r.method === 'POST')).toHaveLength(0);
    expect(sim.requests(ids.runId).length).toBeGreaterThan(5);
  });

  it('reports a throwing approval handler once as run.action_failed (reason submit_tool_approval) and leaves the run for a person', async () => {
    const ids = addRun([APPROVAL]);
    let calls = 0;
    const events: WatchEvent[] = [];
    const onToolApproval: ToolApprovalHandler = () => {
      calls += 1;
      throw new Error('approver offline');
    };
    await watchRun({ ...azure(), ...ids, timeoutMs: 1_000, onEvent: (e) => events.push(e), onToolApproval }).catch(() => undefined);
    expect(events.map((e) => e.type)).toEqual(['run.requires_action', 'run.action_failed', 'watch.error']);
    expect(events[1]).toMatchObject({ reason: 'submit_tool_approval', tool_call_ids: ['call_0'], error: { code: 'tool_handler_failed', message: 'approver offline' } });
    expect(calls).toBe(1);
    expect(sim.requests(ids.runId).filter((r) => r.method === 'POST')).toHaveLength(0);
  });

  it('reports an approval missing for a tool call as run.action_failed, before any POST', async () => {
    const ids = addRun([APPROVAL]);
    const events: WatchEvent[] = [];
    await watchRun({ ...azure(), ...ids, timeoutMs: 600, onEvent: (e) => events.push(e), onToolApproval: () => [{ tool_call_id: 'call_x', approve: true }] }).catch(() => undefined);
    expect(events[1]).toMatchObject({ type: 'run.action_failed', reason: 'submit_tool_approval', error: { code: 'tool_handler_failed', message: 'no approval for tool call(s) call_0' } });
    expect(sim.requests(ids.runId).filter((r) => r.method === 'POST')).toHaveLength(0);
  });

  it('refuses an onToolApproval that is not a function, or with resolveOn requires_action', async () => {
    const watcher = new RunWatcher(azure());
    expect(() => watcher.watchRun({ threadId: 'thread_a', runId: 'run_a', onToolApproval: 'yes' as unknown as ToolApprovalHandler })).toThrow(ConfigError);
    expect(() => watcher.watchRun({ threadId: 'thread_a', runId: 'run_a', resolveOn: ['requires_action'], onToolApproval: () => [] })).toThrow('exclude each other');
    await watcher.close();
  });
});

