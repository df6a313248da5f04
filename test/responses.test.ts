import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/daemon/config.js';
import { Daemon } from '../src/daemon/daemon.js';
import { WatchError } from '../src/errors.js';
import type { ResponseEvent, WatchEvent } from '../src/events.js';
import { isRunEvent } from '../src/events.js';
import { RESPONSE_KIND } from '../src/resource.js';
import type { RunningSimulator, SimulatedResponse } from '../src/simulator.js';
import { StatusMachine } from '../src/status.js';
import { watchResponse } from '../src/watch-run.js';
import { RunWatcher } from '../src/watcher.js';
import { runCli } from './spawn.js';
import { useSimulator } from './sim.js';

const KEY = 'sk-test-RESPONSES-777777';
// fast and deterministic: every status polled each 150 ms
const FAST = { jitter: 0, intervals: { queued: { baseMs: 150, capMs: 150 }, in_progress: { baseMs: 150, capMs: 150 } } };
let sim: RunningSimulator;
let counter = 0;

useSimulator({ apiKey: KEY }, (started) => (sim = started));

function addResponse(timeline: SimulatedResponse['timeline'], stream = false): string {
  counter += 1;
  const responseId = `resp_t${counter}`;
  sim.addResponse({ responseId, timeline, start: 'first_request', stream });
  return responseId;
}

describe('RESPONSE_KIND', () => {
  it('ends on completed, failed, cancelled and incomplete, and ignores a stale queued after in_progress', () => {
    expect([...RESPONSE_KIND.rules.terminal].sort()).toEqual(['cancelled', 'completed', 'failed', 'incomplete']);
    const machine = new StatusMachine(RESPONSE_KIND.rules);
    expect(machine.observe('in_progress')).toMatchObject({ kind: 'transition' });
    expect(machine.observe('queued')).toMatchObject({ kind: 'stale' });
    expect(RESPONSE_KIND.path({ response_id: 'resp_1' })).toBe('responses/resp_1');
    expect(() => RESPONSE_KIND.validate({ response_id: '../runs' })).toThrow('invalid response_id');
    expect(RESPONSE_KIND.parseSnapshot({ id: 'resp_1', object: 'thread.run', status: 'completed' })).toBeUndefined();
  });
});

describe('watching a background response', () => {
  it('emits response.<status> events with the response id and snapshot, without the Assistants beta header', async () => {
    const responseId = addResponse([{ status: 'queued', durationMs: 200 }, { status: 'in_progress', durationMs: 400 }, { status: 'completed' }]);
    const watcher = new RunWatcher({ provider: 'openai', baseUrl: sim.baseUrl, credentials: { apiKey: KEY }, policy: FAST });
    const events: WatchEvent[] = [];
    watcher.on('event', (event) => events.push(event));
    const response = await watcher.watchResponse({ responseId, watchId: 'w_resp' }).promise;
    await watcher.close();
    expect(response).toMatchObject({ id: responseId, object: 'response', status: 'completed', output: [{ type: 'message' }] });
    expect(events.map((e) => e.type)).toEqual(['response.queued', 'response.in_progress', 'response.completed']);
    expect(events.some(isRunEvent)).toBe(false);
    const last = events.at(-1) as ResponseEvent;
    expect(last).toMatchObject({ id: 'w_resp.3', seq: 3, watch_id: 'w_resp', response_id: responseId, from: 'in_progress', to: 'completed', response: { status: 'completed' } });
    expect(Object.keys(last).slice(0, 5)).toEqual(['id', 'type', 'seq', 'watch_id', 'response_id']);
    const gets = sim.requests(responseId);
    expect(gets.length).toBeGreaterThanOrEqual(3);
    expect(gets.every((r) => r.path === `/v1/responses/${responseId}` && r.headers['openai-beta'] === undefined && r.headers.authorization === `Bearer ${KEY}`)).toBe(true);
  });

  it('resolves watchResponse() with a failed response, and rejects with response_not_found on 404', async () => {
    const responseId = addResponse([{ status: 'in_progress', durationMs: 200 }, { status: 'failed' }]);
    const options = { provider: 'openai' as const, baseUrl: sim.baseUrl, credentials: { apiKey: KEY }, policy: FAST };
    const failed = await watchResponse({ ...options, responseId });
    expect(failed).toMatchObject({ status: 'failed', error: { code: 'server_error' } });
    const missing = await watchResponse({ ...options, responseId: 'resp_nope' }).catch((error: unknown) => error);
    expect(missing).toBeInstanceOf(WatchError);
    expect(missing).toMatchObject({ code: 'response_not_found', httpStatus: 404 });
    expect((missing as Error).message).toContain('responses/resp_nope');
  });

  it('does not confuse a run id with a response id', async () => {
    sim.addRun({ threadId: 'thread_x', runId: 'run_as_resp', timeline: [{ status: 'completed' }] });
    const error = await watchResponse({ provider: 'openai', baseUrl: sim.baseUrl, credentials: { apiKey: KEY }, responseId: 'run_as_resp' }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'response_not_found' });
  });
});

describe('runwatch watch-response', () => {
  const policy = JSON.stringify(FAST);
  const run = (args: string[]) => runCli(['watch-response', ...args, '--provider', 'openai', '--base-url', sim.baseUrl, '--policy', policy], { OPENAI_API_KEY: KEY });

  it.each([
    ['completed', 0],
    ['failed', 20],
    ['cancelled', 21],
    ['incomplete', 23],
  ])('exits on %s with code %i and NDJSON response events', async (terminal, code) => {
    const responseId = addResponse([{ status: 'queued', durationMs: 200 }, { status: terminal }]);
    const result = await run([responseId]);
    expect(result.code, result.stderr).toBe(code);
    expect(result.events.map((e) => e.type)).toEqual(['response.queued', `response.${terminal}`]);
    expect(result.events.at(-1)).toMatchObject({ response_id: responseId, to: terminal });
    expect(result.stderr).not.toContain(KEY);
  });

  it('refuses bad arguments with exit 64 and a one-line error', async () => {
    const twoIds = await run(['resp_a', 'resp_b']);
    expect(twoIds.code).toBe(64);
    expect(twoIds.stderr).toMatch(/^runwatch: expected <response_id>, got 2 argument\(s\)$/m);
    const until = await run(['resp_a', '--until', 'requires_action']);
    expect(until.code).toBe(64);
    expect(until.stderr).toMatch(/--until applies to runs only/);
    const missing = await run(['resp_missing']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/\(response_not_found\); check the response id/);
    const stream = await runCli(['watch', 'thread_a', 'run_a', '--stream', '--provider', 'openai', '--base-url', sim.baseUrl], { OPENAI_API_KEY: KEY });
    expect(stream.code).toBe(64);
    expect(stream.stderr).toMatch(/^runwatch: --stream applies to background responses only/m);
  });

  it('--stream follows the resume stream: the same events, two GETs', async () => {
    const responseId = addResponse([{ status: 'queued', durationMs: 100 }, { status: 'in_progress', durationMs: 600 }, { status: 'completed' }], true);
    // polls 1 s apart: a stream that takes a while to deliver its first event still beats the second poll
    const slow = JSON.stringify({ jitter: 0, intervals: { queued: { baseMs: 1_000, capMs: 1_000 } } });
    const result = await runCli(['watch-response', responseId, '--stream', '--provider', 'openai', '--base-url', sim.baseUrl, '--policy', slow], { OPENAI_API_KEY: KEY });
    expect(result.code, result.stderr).toBe(0);
    expect(result.events.map((e) => e.type)).toEqual(['response.queued', 'response.completed']);
    expect(sim.retrieveCount(responseId)).toBe(2);
    expect(sim.streamCount(responseId)).toBe(1);
  });
});

describe('the daemon and background responses', () => {
  it('resumes a response watch after a restart from its stored status and seq', async () => {
    const responseId = addResponse([{ status: 'in_progress', durationMs: 1_200 }, { status: 'completed' }]);
    const dataDir = mkdtempSync(path.join(tmpdir(), 'runwatch-resp-daemon-'));
    const config = loadConfig({
      overrides: [
        ['daemon.port', '0'],
        ['daemon.dataDir', JSON.stringify(dataDir)],
        ['sinks.stdout.enabled', 'false'],
        ['watch.provider', '"openai"'],
        ['watch.baseUrl', JSON.stringify(sim.baseUrl)],
        ['watch.policy', JSON.stringify(FAST)],
      ],
    });
    const start = (): Promise<Daemon> => Daemon.start(config, { credentials: { apiKey: KEY } }, pino({ level: 'silent' }));
    const first = await start();
    const created = await fetch(`http://127.0.0.1:${first.address.port}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ response_id: responseId }) });
    const { id } = (await created.json()) as { id: string };
    const watchAt = async (daemon: Daemon): Promise<{ state: string; status: string | null; seq: number }> =>
      (await (await fetch(`http://127.0.0.1:${daemon.address.port}/v1/watches/${id}`)).json()) as { state: string; status: string | null; seq: number };
    while ((await watchAt(first)).seq < 1) await new Promise((resolve) => setTimeout(resolve, 50));
    await first.shutdown();
    const second = await start();
    try {
      let watch = await watchAt(second);
      while (watch.state === 'active') {
        await new Promise((resolve) => setTimeout(resolve, 50));
        watch = await watchAt(second);
      }
      // one transition after the restart, numbered on from the stored seq: nothing repeated
      expect(watch).toMatchObject({ state: 'finished', status: 'completed', seq: 2 });
    } finally {
      await second.shutdown();
    }
  });
});
