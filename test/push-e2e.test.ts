import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import type { RunningSimulator, SimulatedResponse } from '../src/simulator.js';
import { RunWatcher } from '../src/watcher.js';
import type { RunWatcherOptions } from '../src/watcher.js';
import { requireRedis } from './redis.js';
import { readSseEvents } from './sse.js';
import { useSimulator } from './sim.js';
import { storeKinds, useDaemon } from './daemons.js';

const KEY = 'sk-push-e2e';
const SECRET = `whsec_${randomBytes(32).toString('base64')}`;
const redisAvailable = await requireRedis();

let sim!: RunningSimulator;
useSimulator({ apiKey: KEY, streamDeltaIntervalMs: 50 }, (running) => (sim = running));

const watchers: RunWatcher[] = [];
afterEach(async () => {
  await Promise.all(watchers.splice(0).map((w) => w.close()));
  sim.setStreamFaults({ streamCutAfterEvents: undefined, streamBuffering: undefined, refuseStreams: undefined });
});

function watcher(options: Partial<RunWatcherOptions> = {}): RunWatcher {
  const created = new RunWatcher({ provider: 'openai', baseUrl: sim.baseUrl, credentials: { apiKey: KEY }, ...options });
  watchers.push(created);
  return created;
}

/** A background response that ends after about a second, past a few stream events. */
function response(responseId: string, extra: Partial<SimulatedResponse> = {}): SimulatedResponse {
  const spec = { responseId, stream: true, timeline: [{ status: 'queued', durationMs: 150 }, { status: 'in_progress', durationMs: 700 }, { status: 'completed' }], start: 'first_request', ...extra } as const;
  sim.addResponse(spec);
  return spec;
}

const gets = (responseId: string): number => sim.retrieveCount(responseId);
const streamQueries = (responseId: string): Array<number | undefined> => sim.requests(responseId).filter((r) => r.stream).map((r) => r.startingAfter);

describe('stream mode against the simulator', () => {
  it('ends on the terminal stream event confirmed by one GET: two GETs and one stream per job', async () => {
    response('resp_e2e_stream');
    const done = await watcher().watchResponse({ responseId: 'resp_e2e_stream', push: 'stream' }).promise;
    expect(done.status).toBe('completed');
    expect(gets('resp_e2e_stream')).toBe(2);
    expect(streamQueries('resp_e2e_stream')).toEqual([undefined]);
  });

  it('resumes a stream cut every two events with starting_after, nothing lost or repeated', async () => {
    sim.setStreamFaults({ streamCutAfterEvents: 2 });
    response('resp_e2e_cut');
    const done = await watcher().watchResponse({ responseId: 'resp_e2e_cut', push: 'stream' }).promise;
    expect(done.status).toBe('completed');
    const queries = streamQueries('resp_e2e_cut');
    expect(queries.length).toBeGreaterThan(3);
    // each connection delivered two events (seq k+1, k+2) and the next asked for what follows
    expect(queries[0]).toBeUndefined();
    expect(queries.slice(1)).toEqual(queries.slice(1).map((_, i) => 1 + 2 * i));
    expect(gets('resp_e2e_cut')).toBe(2);
  });

  it('polls as usual when the response was not created with stream: true (the server refuses)', async () => {
    response('resp_e2e_nostream', { stream: false });
    const w = watcher({ policy: { jitter: 0, intervals: { queued: { baseMs: 100, capMs: 100 }, in_progress: { baseMs: 100, capMs: 100 } } } });
    const done = await w.watchResponse({ responseId: 'resp_e2e_nostream', push: 'stream' }).promise;
    expect(done.status).toBe('completed');
    expect(streamQueries('resp_e2e_nostream')).toEqual([undefined]);
    expect(gets('resp_e2e_nostream')).toBeGreaterThan(4);
    expect(w.openStreams).toBe(0);
  });

  it('gives up a stream a proxy buffers (no event within firstEventTimeoutMs) and polls', async () => {
    sim.setStreamFaults({ streamBuffering: true });
    response('resp_e2e_buffered', { timeline: [{ status: 'in_progress', durationMs: 1_000 }, { status: 'completed' }] });
    const w = watcher({ streams: { firstEventTimeoutMs: 200 }, policy: { jitter: 0, intervals: { in_progress: { baseMs: 100, capMs: 100 } } } });
    const done = await w.watchResponse({ responseId: 'resp_e2e_buffered', push: 'stream' }).promise;
    expect(done.status).toBe('completed');
    expect(streamQueries('resp_e2e_buffered')).toEqual([undefined]);
    expect(gets('resp_e2e_buffered')).toBeGreaterThan(4);
  });
});

describe.each(storeKinds(redisAvailable))('webhooks from the simulator to a daemon on the $kind store', ({ kind, skip }) => {
  const t = useDaemon(kind, {
    skip,
    key: KEY,
    secrets: { openaiWebhookSecrets: [SECRET] },
    settings: () => [
      ['push.mode', '"webhook"'],
      // far enough that a delivered webhook comes first even on a loaded machine
      ['push.safetyNetBaseMs', '1500'],
      ['push.safetyNetCapMs', '1500'],
    ],
  });
  const hookUrl = (): string => `${t.base}/v1/hooks/openai`;

  const watchToEnd = async (responseId: string): Promise<void> => {
    const created = await fetch(`${t.base}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ response_id: responseId }) });
    expect(created.status).toBe(201);
    const events = await readSseEvents(`${t.base}/v1/events?response_id=${responseId}`, (list) => list.some((e) => e.type === 'response.completed'));
    expect(events.at(-1)?.type).toBe('response.completed');
  };

  it.skipIf(skip)('a delivered webhook ends the job with two GETs; a dropped one is caught by the safety net', async () => {
    t.sim.setWebhooks({ url: hookUrl(), secret: SECRET });
    const delivered = `resp_e2e_hook_${kind}`;
    t.sim.addResponse({ responseId: delivered, timeline: [{ status: 'in_progress', durationMs: 300 }, { status: 'completed' }], start: 'first_request' });
    await watchToEnd(delivered);
    expect(t.sim.retrieveCount(delivered)).toBe(2);
    await expect.poll(() => t.sim.stats().webhooks.sent).toBe(1);
    expect(await (await fetch(`${t.base}/metrics`)).text()).toMatch(/runwatch_webhooks_total\{outcome="matched"\} 1/);

    t.sim.setWebhooks({ url: hookUrl(), secret: SECRET, dropRate: 1 });
    const dropped = `resp_e2e_drop_${kind}`;
    t.sim.addResponse({ responseId: dropped, timeline: [{ status: 'in_progress', durationMs: 300 }, { status: 'completed' }], start: 'first_request' });
    await watchToEnd(dropped);
    expect(t.sim.droppedWebhooks()).toEqual([dropped]);
    expect(t.sim.stats().webhooks.dropped).toBe(1);
    t.sim.setWebhooks(null);
    // the first poll, then the safety net's (1.5 s) saw it completed
    expect(t.sim.retrieveCount(dropped)).toBe(2);
  });
});

describe('stream mode in the SQLite daemon', () => {
  // polls 2 s apart: a stream slow to deliver its first event on a loaded machine still beats the second poll
  const slow = JSON.stringify({ jitter: 0, intervals: { queued: { baseMs: 2_000, capMs: 2_000 }, in_progress: { baseMs: 2_000, capMs: 2_000 } } });
  const t = useDaemon('sqlite', { skip: false, key: KEY, settings: () => [['push.mode', '"stream"'], ['watch.policy', slow]] });

  it('ends a streamed response with two GETs and one stream, and reports the open streams', async () => {
    t.sim.addResponse({ responseId: 'resp_e2e_daemon_stream', stream: true, timeline: [{ status: 'in_progress', durationMs: 800 }, { status: 'completed' }], start: 'first_request' });
    const created = await fetch(`${t.base}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ response_id: 'resp_e2e_daemon_stream' }) });
    expect(created.status).toBe(201);
    await readSseEvents(`${t.base}/v1/events?response_id=resp_e2e_daemon_stream`, (list) => list.some((e) => e.type === 'response.in_progress'));
    const during = await (await fetch(`${t.base}/metrics`)).text();
    expect(during).toMatch(/runwatch_open_streams 1/);
    const events = await readSseEvents(`${t.base}/v1/events?response_id=resp_e2e_daemon_stream`, (list) => list.some((e) => e.type === 'response.completed'));
    expect(events.map((e) => e.type)).toEqual(['response.in_progress', 'response.completed']);
    expect(t.sim.retrieveCount('resp_e2e_daemon_stream')).toBe(2);
    expect(t.sim.streamCount('resp_e2e_daemon_stream')).toBe(1);
  });
});
