import { describe, expect, it } from 'vitest';
import type { RunningSimulator } from '../src/simulator.js';
import { startSimulator } from '../src/simulator.js';
import { watchResponse } from '../src/watch-run.js';
import { useSimulator } from './sim.js';
import { runCli } from './spawn.js';

const KEY = 'sk-upstreams-1234';
let sim!: RunningSimulator;
useSimulator({ apiKey: KEY }, (running) => (sim = running));

const FAST = JSON.stringify({ jitter: 0, intervals: { queued: { baseMs: 100, capMs: 100 }, in_progress: { baseMs: 100, capMs: 100 }, unknown: { baseMs: 100, capMs: 100 } } });
const openai = (args: string[]) => runCli([...args, '--provider', 'openai', '--base-url', sim.baseUrl, '--policy', FAST], { OPENAI_API_KEY: KEY });

describe('background responses as OpenAI documents them', () => {
  it('ends on a status that is neither queued nor in_progress, with its own event and exit 24', async () => {
    sim.addResponse({ responseId: 'resp_up_other', timeline: [{ status: 'in_progress', durationMs: 150 }, { status: 'paused_by_policy' }], start: 'first_request' });
    const result = await openai(['watch-response', 'resp_up_other']);
    expect(result.code, result.stderr).toBe(24);
    expect(result.events.map((e) => e.type)).toEqual(['response.in_progress', 'response.paused_by_policy']);
    // ended at once: no polling of the unknown status until the deadline
    expect(sim.retrieveCount('resp_up_other')).toBeLessThanOrEqual(4);
  });

  it('reads an answer over 8 MiB (an image in base64), and fails for good past the cap instead of fetching it again and again', async () => {
    sim.addResponse({ responseId: 'resp_up_big', timeline: [{ status: 'completed' }], outputImageBytes: 9 * 1024 * 1024 });
    const done = await watchResponse({ provider: 'openai', baseUrl: sim.baseUrl, credentials: { apiKey: KEY }, responseId: 'resp_up_big' });
    expect(done.output).toHaveLength(2);
    const capped = await openai(['watch-response', 'resp_up_big', '--max-response-bytes', '1048576']);
    expect(capped.code).toBe(2);
    expect(capped.events.at(-1)).toMatchObject({ type: 'watch.error', error: { code: 'response_too_large' } });
    expect(capped.stderr).toMatch(/larger than 1048576 bytes: raise maxResponseBytes .*\(response_too_large\); raise --max-response-bytes/);
    // one GET for the library's watch, one for the CLI's: no retry of a body that cannot shrink
    expect(sim.retrieveCount('resp_up_big')).toBe(2);
    const bad = await openai(['watch-response', 'resp_up_big', '--max-response-bytes', 'lots']);
    expect(bad.code).toBe(64);
  });

  it('cancels a response with no body', async () => {
    sim.addResponse({ responseId: 'resp_up_cancel', timeline: [{ status: 'in_progress' }] });
    const result = await runCli(['cancel-response', 'resp_up_cancel', '--provider', 'openai', '--base-url', sim.baseUrl], { OPENAI_API_KEY: KEY });
    expect(result.code, result.stderr).toBe(0);
    const post = sim.requests('resp_up_cancel').find((r) => r.method === 'POST');
    expect(post).toBeDefined();
    expect(post!.body).toBeUndefined();
    expect(post!.headers['content-length']).toBe('0');
  });
});

describe('Portkey with Model Catalog providers', () => {
  it('sends the provider slug as x-portkey-provider (flag or PORTKEY_PROVIDER); the gateway refuses a GET without a provider', async () => {
    const gateway = await startSimulator({ apiKey: KEY, errorStyle: 'portkey', runs: [{ threadId: 'thread_pk', runId: 'run_pk', timeline: [{ status: 'completed' }] }] });
    try {
      const base = ['watch', 'thread_pk', 'run_pk', '--base-url', gateway.baseUrl];
      const bare = await runCli(base, { PORTKEY_API_KEY: KEY });
      expect(bare.code).toBe(2);
      expect(bare.stderr).toMatch(/Either x-portkey-config or x-portkey-provider header is required/);
      const flag = await runCli([...base, '--portkey-provider', '@openai-prod'], { PORTKEY_API_KEY: KEY });
      expect(flag.code, flag.stderr).toBe(0);
      const env = await runCli(base, { PORTKEY_API_KEY: KEY, PORTKEY_PROVIDER: '@openai-prod' });
      expect(env.code, env.stderr).toBe(0);
      const sent = gateway.requests('run_pk').filter((r) => r.status === 'completed');
      expect(sent).toHaveLength(2);
      for (const request of sent) expect(request.headers).toMatchObject({ 'x-portkey-provider': '@openai-prod', 'x-portkey-api-key': KEY });
      const wrong = await runCli([...base, '--portkey-provider', 'not a slug'], { PORTKEY_API_KEY: KEY });
      expect(wrong.code).toBe(64);
      expect(wrong.stderr).toMatch(/invalid Portkey provider "not a slug"/);
      const other = await runCli([...base, '--provider', 'openai', '--portkey-provider', '@x'], { OPENAI_API_KEY: KEY });
      expect(other.code).toBe(64);
    } finally {
      await gateway.close();
    }
  });
});
