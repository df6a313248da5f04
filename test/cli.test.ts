import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { WatchEvent } from '../src/events.js';
import type { RunningSimulator, SimulatedRun } from '../src/simulator.js';
import { startSimulator } from '../src/simulator.js';
import { TERMINAL_RUN_STATUSES } from '../src/status.js';
import { startReceiver } from './receiver.js';
import { runCli, startCli } from './spawn.js';
import type { CliResult } from './spawn.js';
import { useSimulator } from './sim.js';

const KEY = 'sk-test-SECRET-4242424242';
const TERMINAL = new Set<string>(TERMINAL_RUN_STATUSES);
const POLICY = JSON.stringify({ jitter: 0, errorBackoff: { baseMs: 100, capMs: 200 } });
let sim: RunningSimulator;
let counter = 0;

useSimulator({ apiKey: KEY }, (started) => (sim = started));

/** Adds a run with a fresh id and returns its ids. */
function addRun(timeline: SimulatedRun['timeline'], extra: Partial<SimulatedRun> = {}): { threadId: string; runId: string } {
  counter += 1;
  const ids = { threadId: `thread_cli${counter}`, runId: `run_cli${counter}` };
  sim.addRun({ ...ids, timeline, start: 'first_request', ...extra });
  return ids;
}

function watch(ids: { threadId: string; runId: string }, flags: string[] = [], env: Record<string, string> = {}): Promise<CliResult> {
  // no jitter, so which steps a poll lands in is deterministic
  return runCli(['watch', ids.threadId, ids.runId, '--provider', 'openai', '--base-url', sim.baseUrl, '--policy', POLICY, ...flags], { OPENAI_API_KEY: KEY, ...env });
}

/** The checks every successful watch must pass: gapless seq, unique ids, a from/to chain. */
function expectWellFormed(events: WatchEvent[]): void {
  expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => i + 1));
  expect(new Set(events.map((e) => e.id)).size).toBe(events.length);
  events.forEach((event, i) => {
    expect(event.from).toBe(i === 0 ? null : events[i - 1]!.to);
    expect(event.observed_at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  });
}

/** No request after the one that saw the terminal status. */
function expectNoRequestAfterTerminal(runId: string): void {
  const gets = sim.requests(runId).filter((r) => r.method === 'GET');
  const firstTerminal = gets.findIndex((r) => r.status !== null && TERMINAL.has(r.status));
  expect(firstTerminal).toBe(gets.length - 1);
}

describe('runwatch watch: endings', () => {
  it.each([
    ['completed', 0],
    ['failed', 20],
    ['cancelled', 21],
    ['expired', 22],
    ['incomplete', 23],
  ])('exits on %s with code %i and the exact event sequence', async (terminal, code) => {
    // polls at 0 (queued), 1000 (in_progress), 2750 (terminal): each margin is 250 ms or more
    const ids = addRun([{ status: 'queued', durationMs: 250 }, { status: 'in_progress', durationMs: 1000 }, { status: terminal }]);
    const result = await watch(ids);
    expect(result.code, result.stderr).toBe(code);
    expect(result.events.map((e) => e.type)).toEqual(['run.queued', 'run.in_progress', `run.${terminal}`]);
    expectWellFormed(result.events);
    expect(result.events.at(-1)).toMatchObject({ thread_id: ids.threadId, run_id: ids.runId, to: terminal, run: { id: ids.runId, status: terminal } });
    expectNoRequestAfterTerminal(ids.runId);
  });

  it('stops at requires_action with --until requires_action (exit 10), carrying the tool calls', async () => {
    const ids = addRun([{ status: 'in_progress', durationMs: 500 }, { status: 'requires_action' }]);
    const result = await watch(ids, ['--until', 'requires_action']);
    expect(result.code, result.stderr).toBe(10);
    expect(result.events.map((e) => e.type)).toEqual(['run.in_progress', 'run.requires_action']);
    const last = result.events.at(-1);
    const asked = last?.type === 'run.requires_action' ? last.run.required_action : undefined;
    expect(asked?.type === 'submit_tool_outputs' && asked.submit_tool_outputs.tool_calls).toHaveLength(1);
  });

  it('ends with a watch.error at the deadline (exit 2)', async () => {
    const ids = addRun([{ status: 'queued' }]);
    const result = await watch(ids, ['--timeout', '1500ms']);
    expect(result.code).toBe(2);
    expect(result.events.map((e) => e.type)).toEqual(['run.queued', 'watch.error']);
    expect(result.events.at(-1)).toMatchObject({ error: { code: 'deadline_exceeded' }, from: 'queued', to: null });
    expect(result.stderr).toMatch(/^runwatch: deadline exceeded .*raise --timeout/m);
  });
});

describe('runwatch watch: failures', () => {
  it('exits 2 on a 404 with the server message and a hint', async () => {
    const result = await runCli(['watch', 'thread_nope', 'run_nope', '--provider', 'openai', '--base-url', sim.baseUrl], { OPENAI_API_KEY: KEY });
    expect(result.code).toBe(2);
    expect(result.events).toHaveLength(1);
    expect(result.events[0]).toMatchObject({ type: 'watch.error', seq: 1, from: null, error: { code: 'run_not_found', http_status: 404 }, run: null });
    expect(result.stderr).toContain("No run found with id 'run_nope'");
    expect(result.stderr).toMatch(/\(run_not_found\); check the thread and run ids/);
  });

  it('exits 2 on a wrong key and never prints the key, even at trace level', async () => {
    const ids = addRun([{ status: 'completed' }]);
    const wrong = 'sk-wrong-SECRET-9999999999';
    const result = await watch(ids, ['--log-level', 'trace'], { OPENAI_API_KEY: wrong });
    expect(result.code).toBe(2);
    expect(result.events[0]).toMatchObject({ type: 'watch.error', error: { code: 'unauthorized', http_status: 401 } });
    const output = result.stdout + result.stderr;
    for (const fragment of [wrong, 'SECRET', '9999', KEY]) expect(output).not.toContain(fragment);
    expect(result.stderr).toContain('check the API key');
  });

  it('never prints the key on a successful watch at trace level', async () => {
    const ids = addRun([{ status: 'in_progress', durationMs: 200 }, { status: 'completed' }]);
    const result = await watch(ids, ['--log-level', 'trace']);
    expect(result.code).toBe(0);
    expect(result.stderr.length).toBeGreaterThan(0);
    expect(result.stdout + result.stderr).not.toContain('SECRET');
  });

  it('rejects an invalid id with exit 2 and sends nothing', async () => {
    const before = sim.totalRequests();
    const result = await runCli(['watch', '../assistants', 'run_1', '--provider', 'openai', '--base-url', sim.baseUrl], { OPENAI_API_KEY: KEY });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^runwatch: invalid thread_id "\.\.\/assistants".*\(invalid_id\)/m);
    expect(result.events).toEqual([]);
    expect(sim.totalRequests()).toBe(before);
  });

  it('rides out a 429 storm, waiting at least retry-after every time', async () => {
    const ids = addRun([{ status: 'in_progress', durationMs: 300 }, { status: 'completed' }], {
      faults: [
        { type: 'status', status: 429, headers: { 'retry-after-ms': '300' }, from: 1, to: 4 },
        { type: 'status', status: 429, headers: { 'retry-after': '1' }, from: 5 },
      ],
    });
    const result = await watch(ids);
    expect(result.code, result.stderr).toBe(0);
    expect(result.events.map((e) => e.type)).toEqual(['run.completed']);
    const times = sim.requests(ids.runId).map((r) => r.atMs);
    for (let i = 1; i <= 4; i++) expect(times[i]! - times[i - 1]!).toBeGreaterThanOrEqual(300);
    expect(times[5]! - times[4]!).toBeGreaterThanOrEqual(1000);
    expectNoRequestAfterTerminal(ids.runId);
  });

  it('recovers from 5xx, a reset, a malformed body and a hung request', async () => {
    // requests at ~0, 100, 300, 500 (hangs to 800), 1000 fail; 1200 sees in_progress, 2200 completed
    const ids = addRun([{ status: 'in_progress', durationMs: 1700 }, { status: 'completed' }], {
      faults: [
        { type: 'status', status: 500, from: 1 },
        { type: 'reset', from: 2 },
        { type: 'malformed', from: 3 },
        { type: 'hang', from: 4 },
        { type: 'status', status: 502, body: '<html>bad gateway</html>', from: 5 },
      ],
    });
    const result = await watch(ids, ['--request-timeout', '300ms', '--log-level', 'debug']);
    expect(result.code, result.stderr).toBe(0);
    expect(result.events.map((e) => e.type)).toEqual(['run.in_progress', 'run.completed']);
    expectWellFormed(result.events);
    const logs = result.stderr.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { msg: string });
    expect(logs.some((l) => l.msg.includes('request timed out after 300 ms'))).toBe(true);
  });
});

describe('runwatch watch: signals', () => {
  it.each([
    ['SIGTERM', 143],
    ['SIGINT', 130],
  ] as const)('stops on %s with exit %i and a watch.error event', async (signal, code) => {
    const ids = addRun([{ status: 'in_progress' }]);
    const cli = startCli(['watch', ids.threadId, ids.runId, '--provider', 'openai', '--base-url', sim.baseUrl], { OPENAI_API_KEY: KEY });
    await cli.waitForLine((line) => line.includes('"run.in_progress"'));
    cli.child.kill(signal);
    const result = await cli.done;
    expect(result.code).toBe(code);
    expect(result.events.map((e) => e.type)).toEqual(['run.in_progress', 'watch.error']);
    expect(result.events[1]).toMatchObject({ error: { code: 'aborted' } });
    const requests = sim.requests(ids.runId).length;
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(sim.requests(ids.runId)).toHaveLength(requests);
  });
});

describe('runwatch watch: Portkey', () => {
  it('sends the Portkey headers, the trace id and extra headers; reads keys from *_FILE', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'runwatch-'));
    const keyFile = path.join(dir, 'key');
    writeFileSync(keyFile, `${KEY}\n`);
    const ids = addRun([{ status: 'completed' }]);
    const result = await runCli(
      ['watch', ids.threadId, ids.runId, '--base-url', sim.baseUrl, '--watch-id', 'w_portkey', '--header', 'x-portkey-provider: openai', '--header', 'X-Portkey-Custom-Host: http://10.0.0.1:8000/v1'],
      { PORTKEY_API_KEY_FILE: keyFile, PORTKEY_VIRTUAL_KEY: 'vk-123456' },
    );
    expect(result.code, result.stderr).toBe(0);
    const headers = sim.requests(ids.runId)[0]!.headers;
    expect(headers).toMatchObject({
      'x-portkey-api-key': KEY,
      'x-portkey-virtual-key': 'vk-123456',
      'x-portkey-trace-id': 'w_portkey',
      'x-portkey-provider': 'openai',
      'x-portkey-custom-host': 'http://10.0.0.1:8000/v1',
      'openai-beta': 'assistants=v2',
    });
    expect(result.events[0]).toMatchObject({ watch_id: 'w_portkey', id: 'w_portkey.1' });
  });

  it('parses the Portkey error shape', async () => {
    const portkey = await startSimulator({ apiKey: KEY, errorStyle: 'portkey' });
    try {
      const result = await runCli(['watch', 'thread_x', 'run_x', '--base-url', portkey.baseUrl], { PORTKEY_API_KEY: 'pk-wrong-000000' });
      expect(result.code).toBe(2);
      expect(result.events[0]).toMatchObject({ error: { code: 'unauthorized' } });
      expect(result.stderr).toContain('Incorrect API key');
      expect(result.stderr).not.toContain('000000');
    } finally {
      await portkey.close();
    }
  });
});

describe('runwatch: usage', () => {
  it.each([
    [['watch', 'thread_1', 'run_1'], {}, /missing API key: set PORTKEY_API_KEY/],
    [['watch', 'thread_1', 'run_1', '--provider', 'openai'], {}, /missing API key: set OPENAI_API_KEY/],
    [['watch', 'thread_1'], { PORTKEY_API_KEY: 'x' }, /expected <thread_id> <run_id>/],
    [['watch', 'thread_1', 'run_1', '--timeout', 'soon'], { PORTKEY_API_KEY: 'x' }, /invalid --timeout "soon"/],
    [['watch', 'thread_1', 'run_1', '--provider', 'bedrock'], {}, /invalid --provider "bedrock": use portkey or openai or azure/],
    [['watch', 'thread_1', 'run_1', '--until', 'forever'], {}, /invalid --until/],
    [['watch', 'thread_1', 'run_1', '--header', 'novalue'], { PORTKEY_API_KEY: 'x' }, /invalid --header "novalue"/],
    [['watch', 'thread_1', 'run_1', '--bogus'], {}, /Unknown option '--bogus'/],
    [['watch', 'thread_1', 'run_1', '--base-url', 'ftp://x'], { PORTKEY_API_KEY: 'x' }, /invalid base URL protocol/],
    [['watch', 'thread_1', 'run_1', '--log-level', 'loud'], { PORTKEY_API_KEY: 'x' }, /invalid log level "loud"/],
    [['watch', 'thread_1', 'run_1'], { PORTKEY_API_KEY: 'x', PORTKEY_API_KEY_FILE: '/nonexistent' }, /both PORTKEY_API_KEY and PORTKEY_API_KEY_FILE/],
    [['watch', 'thread_1', 'run_1'], { PORTKEY_API_KEY_FILE: '/nonexistent/key' }, /cannot read PORTKEY_API_KEY_FILE \(\/nonexistent\/key\): ENOENT/],
    [['frobnicate'], {}, /unknown command "frobnicate"/],
    [['watch', 't', 'r', '--policy', '{"jitter":3}'], { PORTKEY_API_KEY: 'x' }, /invalid --policy\.jitter: expected a number from 0 to 1 \(got 3\)/],
    [['watch', 't', 'r', '--policy', '{"intervals":{"queued":{"baseMs":"fast"}}}'], { PORTKEY_API_KEY: 'x' }, /invalid --policy\.intervals\.queued\.baseMs/],
    [['watch', 't', 'r', '--policy', '{"jiter":0}'], { PORTKEY_API_KEY: 'x' }, /invalid --policy\.jiter: unknown setting \(got 0\)/],
  ])('exits 64 with a one-line error for %j', async (args, env, message) => {
    const result = await runCli(args, env);
    expect(result.code).toBe(64);
    expect(result.stderr).toMatch(message);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stdout).toBe('');
  });

  it('prints help and version', async () => {
    const help = await runCli(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('runwatch watch <thread_id> <run_id>');
    const watchHelp = await runCli(['watch', '--help']);
    expect(watchHelp.stdout).toContain('--until terminal|requires_action');
    const version = await runCli(['--version']);
    expect(version.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  });
});

describe('runwatch sim', () => {
  it('serves the demo runs to a watching CLI and stops cleanly on SIGTERM', async () => {
    const server = startCli(['sim', '--demo', '--port', '0', '--api-key', KEY, '--log-level', 'warn']);
    const ready = JSON.parse(await server.waitForLine((line) => line.includes('base_url'))) as { base_url: string; runs: unknown[] };
    expect(ready.runs).toContainEqual({ thread_id: 'thread_demo', run_id: 'run_flaky' });
    const result = await runCli(['watch', 'thread_demo', 'run_flaky', '--provider', 'openai', '--base-url', ready.base_url], { OPENAI_API_KEY: KEY });
    expect(result.code, result.stderr).toBe(0);
    expect(result.events.at(-1)?.type).toBe('run.completed');
    server.child.kill('SIGTERM');
    expect((await server.done).code).toBe(0);
  });

  it('POSTs signed webhooks to --webhook-url with the secret from the environment', async () => {
    const secret = `whsec_${Buffer.from('cli-simulator-webhook-secret-32b').toString('base64')}`;
    const receiver = await startReceiver(secret);
    const server = startCli(['sim', '--demo', '--port', '0', '--webhook-url', receiver.url, '--webhook-drop-rate', '0', '--log-level', 'warn'], { RUNWATCH_SIM_WEBHOOK_SECRET: secret });
    try {
      const ready = JSON.parse(await server.waitForLine((line) => line.includes('base_url'))) as { base_url: string };
      // the demo responses start at their first request; this one ends 800 ms later
      expect((await fetch(`${ready.base_url}/responses/resp_demo_incomplete`)).status).toBe(200);
      await receiver.waitFor((received) => received.length > 0, 5_000);
      expect(receiver.received[0]!.signatureValid).toBe(true);
      expect(JSON.parse(receiver.received[0]!.body)).toMatchObject({ object: 'event', type: 'response.incomplete', data: { id: 'resp_demo_incomplete' } });
    } finally {
      server.child.kill('SIGTERM');
      await server.done;
      await receiver.close();
    }
  });

  it('refuses --webhook-url without RUNWATCH_SIM_WEBHOOK_SECRET, and a bad drop rate, with exit 64', async () => {
    const noSecret = await runCli(['sim', '--port', '0', '--webhook-url', 'http://127.0.0.1:9/hook']);
    expect(noSecret.code).toBe(64);
    expect(noSecret.stderr).toContain('RUNWATCH_SIM_WEBHOOK_SECRET');
    const secret = { RUNWATCH_SIM_WEBHOOK_SECRET: `whsec_${Buffer.from('0123456789abcdef').toString('base64')}` };
    const badRate = await runCli(['sim', '--port', '0', '--webhook-url', 'http://127.0.0.1:9/hook', '--webhook-drop-rate', '2'], secret);
    expect(badRate.code).toBe(64);
    expect(badRate.stderr).toContain('--webhook-drop-rate');
    const help = await runCli(['sim', '--help']);
    expect(help.stdout).toContain('--webhook-url URL');
  });
});
