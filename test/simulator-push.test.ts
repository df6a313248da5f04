import http from 'node:http';
import { createParser } from 'eventsource-parser';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { RunningSimulator, SimulatedResponse, SimulatedWebhooks } from '../src/simulator.js';
import { startSimulator } from '../src/simulator.js';
import { checkWebhook, webhookKey } from '../src/standard-webhooks.js';
import type { Receiver, Received } from './receiver.js';
import { startReceiver } from './receiver.js';
import { useSimulator } from './sim.js';

const SECRET = `whsec_${Buffer.from('simulator-push-secret-32-bytes!!').toString('base64')}`;
const OTHER_SECRET = `whsec_${Buffer.from('another-secret-of-32-bytes-long!').toString('base64')}`;
const KEY = 'sk-sim-push-key';
const AUTH = { authorization: `Bearer ${KEY}` };
// queued 100 ms, in_progress 300 ms (a delta each 50 ms: 6), completed
const TIMELINE: SimulatedResponse['timeline'] = [{ status: 'queued', durationMs: 100 }, { status: 'in_progress', durationMs: 300 }, { status: 'completed' }];
let counter = 0;

function nextId(): string {
  counter += 1;
  return `resp_push${counter}`;
}

/** The webhooks the receiver got for one response. */
function webhooksOf(receiver: Receiver, responseId: string): Received[] {
  return receiver.received.filter((r) => (JSON.parse(r.body) as { data: { id: string } }).data.id === responseId);
}

describe('simulator webhooks', () => {
  let receiver: Receiver;
  beforeAll(async () => {
    receiver = await startReceiver(SECRET);
  });
  afterAll(async () => {
    await receiver.close();
  });

  /** A simulator POSTing to the receiver, closed after `body`. */
  async function withSim(webhooks: Partial<SimulatedWebhooks>, body: (sim: RunningSimulator) => Promise<void>): Promise<void> {
    const sim = await startSimulator({ apiKey: KEY, webhooks: { url: receiver.url, secret: SECRET, ...webhooks } });
    try {
      await body(sim);
    } finally {
      await sim.close();
    }
  }

  it('POSTs one signed response.<status> event when the response ends, without any request', async () => {
    await withSim({}, async (sim) => {
      const responseId = nextId();
      // a run ends first: runs send no webhooks
      sim.addRun({ threadId: 'thread_push', runId: 'run_push', timeline: [{ status: 'in_progress', durationMs: 20 }, { status: 'completed' }] });
      sim.addResponse({ responseId, timeline: [{ status: 'queued', durationMs: 50 }, { status: 'in_progress', durationMs: 100 }, { status: 'incomplete' }] });
      await receiver.waitFor(() => webhooksOf(receiver, responseId).length > 0, 2_000);
      const [hook] = webhooksOf(receiver, responseId);
      const ended = sim.transitions(responseId).at(-1)!;
      expect(ended.status).toBe('incomplete');
      expect(sim.requests(responseId)).toEqual([]);
      expect(hook!.atMs).toBeGreaterThanOrEqual(ended.atMs);
      const event = JSON.parse(hook!.body) as { id: string };
      expect(event.id).toMatch(/^evt_[0-9a-f]{32}$/);
      // the exact body, key order included: the signature covers its bytes
      expect(hook!.body).toBe(JSON.stringify({ id: event.id, object: 'event', type: 'response.incomplete', created_at: Math.floor(ended.atMs / 1000), data: { id: responseId } }));
      expect(hook!.headers).toMatchObject({ 'content-type': 'application/json', 'webhook-id': event.id });
      expect(Number(hook!.headers['webhook-timestamp'])).toBeCloseTo(Date.now() / 1000, -1);
      expect(hook!.headers['webhook-signature']).toMatch(/^v1,[A-Za-z0-9+/]+={0,2}$/);
      expect(hook!.signatureValid).toBe(true);
      expect(checkWebhook([webhookKey(SECRET)], hook!.headers, hook!.body, Date.now())).toBe('ok');
      expect(checkWebhook([webhookKey(OTHER_SECRET)], hook!.headers, hook!.body, Date.now())).toBe('bad_signature');
      expect(checkWebhook([webhookKey(SECRET)], hook!.headers, hook!.body.replace('incomplete', 'completed'), Date.now())).toBe('bad_signature');
      expect(receiver.received.filter((r) => r.body.includes('run_push'))).toEqual([]);
      // the receiver logs a POST before its answer is back at the simulator
      await vi.waitFor(() => expect(sim.stats().webhooks).toEqual({ attempts: 1, sent: 1, dropped: 0, duplicated: 0, reordered: 0, failed: 0 }), { timeout: 1_000, interval: 10 });
    });
  });

  it('starts a first_request response at its first request, and sends response.cancelled on a cancel', async () => {
    await withSim({}, async (sim) => {
      const responseId = nextId();
      sim.addResponse({ responseId, timeline: [{ status: 'in_progress' }], start: 'first_request' });
      const cancel = await fetch(`${sim.baseUrl}/responses/${responseId}/cancel`, { method: 'POST', headers: AUTH });
      expect(cancel.status).toBe(200);
      await receiver.waitFor(() => webhooksOf(receiver, responseId).length > 0, 2_000);
      expect(JSON.parse(webhooksOf(receiver, responseId)[0]!.body)).toMatchObject({ type: 'response.cancelled', data: { id: responseId } });
    });
  });

  it('sends none with dropRate 1', async () => {
    await withSim({ dropRate: 1 }, async (sim) => {
      const ids = [nextId(), nextId()];
      for (const responseId of ids) sim.addResponse({ responseId, timeline: [{ status: 'in_progress', durationMs: 20 }, { status: 'failed' }] });
      // the drop is decided before any POST, so once counted nothing can follow
      await vi.waitFor(() => expect(sim.stats().webhooks.dropped).toBe(2), { timeout: 2_000, interval: 10 });
      expect(sim.stats().webhooks).toMatchObject({ attempts: 0, sent: 0 });
      expect(ids.flatMap((id) => webhooksOf(receiver, id))).toEqual([]);
    });
  });

  it('sends each event twice with the same webhook-id with duplicateRate 1', async () => {
    await withSim({ duplicateRate: 1 }, async (sim) => {
      const responseId = nextId();
      sim.addResponse({ responseId, timeline: [{ status: 'queued', durationMs: 20 }, { status: 'completed' }] });
      await receiver.waitFor(() => webhooksOf(receiver, responseId).length === 2, 2_000);
      const [first, second] = webhooksOf(receiver, responseId);
      expect(second!.id).toBe(first!.id);
      expect(second!.body).toBe(first!.body);
      await vi.waitFor(() => expect(sim.stats().webhooks).toMatchObject({ attempts: 2, sent: 2, duplicated: 1 }), { timeout: 1_000, interval: 10 });
    });
  });

  it('retries a refused POST twice, then counts it failed', async () => {
    receiver.answer = 500;
    const attemptsBefore = receiver.attempts;
    try {
      await withSim({}, async (sim) => {
        sim.addResponse({ responseId: nextId(), timeline: [{ status: 'completed' }] });
        await vi.waitFor(() => expect(sim.stats().webhooks.failed).toBe(1), { timeout: 1_900, interval: 20 });
        expect(sim.stats().webhooks).toMatchObject({ attempts: 3, sent: 0 });
        expect(receiver.attempts - attemptsBefore).toBe(3);
      });
    } finally {
      receiver.answer = 200;
    }
  });

  it('holds a reordered event back, and close() clears pending sends', async () => {
    await withSim({ reorderRate: 1, reorderDelayMs: 60_000, delayMs: 60_000 }, async (sim) => {
      sim.addResponse({ responseId: nextId(), timeline: [{ status: 'completed' }] });
      await vi.waitFor(() => expect(sim.stats().webhooks.reordered).toBe(1), { timeout: 1_000, interval: 10 });
      expect(sim.stats().webhooks.attempts).toBe(0);
    });
  });

  it('rejects bad webhook options with a ConfigError naming the field', async () => {
    await expect(startSimulator({ webhooks: { url: 'ftp://x', secret: SECRET } })).rejects.toThrow('url');
    await expect(startSimulator({ webhooks: { url: receiver.url, secret: SECRET, dropRate: 1.5 } })).rejects.toThrow('dropRate');
    await expect(startSimulator({ webhooks: { url: receiver.url, secret: 'whsec_short' } })).rejects.toThrow('invalid webhook secret');
    await expect(startSimulator({ streamCutAfterEvents: 0 })).rejects.toThrow('streamCutAfterEvents');
    await expect(startSimulator({ streamDeltaIntervalMs: 0 })).rejects.toThrow('streamDeltaIntervalMs');
  });
});

/** What one stream request got. */
interface StreamRead {
  readonly status: number;
  readonly contentType: string | undefined;
  /** When the headers arrived (epoch ms). */
  readonly headersAtMs: number;
  readonly events: Array<{ readonly event: string | undefined; readonly data: { type: string; sequence_number: number; [key: string]: unknown }; readonly raw: string; readonly atMs: number }>;
  /** The response ended normally (false: the connection was cut). */
  readonly complete: boolean;
  readonly body: string;
}

/** Reads a response stream until the server ends or cuts it; rejects after `timeoutMs`. */
function readStream(url: string, headers: Record<string, string> = AUTH, onEvent: (read: StreamRead) => void = () => undefined, timeoutMs = 3_000): Promise<StreamRead> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      req.destroy();
      reject(new Error(`stream not ended after ${timeoutMs} ms: ${url}`));
    }, timeoutMs);
    const req = http.get(url, { headers }, (res) => {
      const read = { status: res.statusCode ?? 0, contentType: res.headers['content-type'], headersAtMs: Date.now(), events: [] as StreamRead['events'], complete: false, body: '' };
      const parser = createParser({
        onEvent: (message) => {
          read.events.push({ event: message.event, data: JSON.parse(message.data) as StreamRead['events'][number]['data'], raw: message.data, atMs: Date.now() });
          onEvent(read);
        },
      });
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        read.body += chunk;
        parser.feed(chunk);
      });
      res.on('error', () => undefined);
      res.on('close', () => {
        clearTimeout(timer);
        resolve({ ...read, complete: res.complete });
      });
    });
    req.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}

const TYPES = ['response.created', 'response.queued', 'response.in_progress', ...Array<string>(6).fill('response.output_text.delta'), 'response.completed'];

describe('simulator response streams', () => {
  let sim: RunningSimulator;
  useSimulator({ apiKey: KEY, streamDeltaIntervalMs: 50 }, (started) => (sim = started));

  const add = (extra: Partial<SimulatedResponse> = {}): string => {
    const responseId = nextId();
    sim.addResponse({ responseId, timeline: TIMELINE, start: 'first_request', stream: true, ...extra });
    return responseId;
  };
  const streamUrl = (responseId: string, startingAfter?: number): string => `${sim.baseUrl}/responses/${responseId}?stream=true${startingAfter === undefined ? '' : `&starting_after=${startingAfter}`}`;

  it('sends sequence 0..N with no gap, live, and ends after the terminal event', async () => {
    const responseId = add();
    const read = await readStream(streamUrl(responseId));
    expect(read.status).toBe(200);
    expect(read.contentType).toMatch(/^text\/event-stream/);
    expect(read.complete).toBe(true);
    expect(read.events.map((e) => e.data.type)).toEqual(TYPES);
    expect(read.events.map((e) => e.data.sequence_number)).toEqual(TYPES.map((_, i) => i));
    expect(read.events.every((e) => e.event === e.data.type)).toBe(true);
    expect(read.body).toMatch(/^event: response\.created\ndata: \{"type":"response\.created","sequence_number":0,/);
    expect(read.events[0]!.data.response).toMatchObject({ id: responseId, object: 'response', status: 'queued' });
    expect(read.events[2]!.data.response).toMatchObject({ status: 'in_progress' });
    expect(read.events[3]!.data).toEqual({ type: 'response.output_text.delta', sequence_number: 3, item_id: 'msg_sim', output_index: 0, content_index: 0, delta: 'Simulated' });
    expect(read.events.at(-1)!.data.response).toMatchObject({ id: responseId, status: 'completed', output: [{ type: 'message' }] });
    // live: the first events came before the response ended
    const ended = sim.transitions(responseId).at(-1)!;
    expect(ended.status).toBe('completed');
    expect(read.events[0]!.atMs).toBeLessThan(ended.atMs);
    expect(read.events.at(-1)!.atMs).toBeGreaterThanOrEqual(ended.atMs);
    // a stream is not a plain GET
    expect(sim.streamCount(responseId)).toBe(1);
    expect(sim.retrieveCount(responseId)).toBe(0);
    expect(sim.requests(responseId)).toMatchObject([{ method: 'GET', stream: true, status: 'queued' }]);
  });

  it('sends exactly the events after starting_after, live or replayed', async () => {
    const responseId = add();
    const live = await readStream(streamUrl(responseId, 3));
    const full = await readStream(streamUrl(responseId));
    expect(full.events.map((e) => e.data.sequence_number)).toEqual(TYPES.map((_, i) => i));
    expect(live.complete).toBe(true);
    expect(live.events.map((e) => e.raw)).toEqual(full.events.slice(4).map((e) => e.raw));
    const replayed = await readStream(streamUrl(responseId, 7));
    expect(replayed.events.map((e) => e.data.sequence_number)).toEqual([8, 9]);
    // after the terminal event there is nothing more: an empty stream that ends
    const after = await readStream(streamUrl(responseId, 9));
    expect(after).toMatchObject({ status: 200, complete: true, events: [] });
    expect(sim.requests(responseId).map((r) => r.startingAfter)).toEqual([3, undefined, 7, 9]);
    const bad = await fetch(`${streamUrl(responseId)}&starting_after=x`, { headers: AUTH });
    expect(bad.status).toBe(400);
    expect(await bad.json()).toMatchObject({ error: { param: 'starting_after' } });
  });

  it('cut after 2 events per connection, resumed from the last one, gives one full read: none lost, none repeated', async () => {
    const responseId = add();
    sim.setStreamFaults({ streamCutAfterEvents: 2 });
    const events: StreamRead['events'] = [];
    const reads: StreamRead[] = [];
    try {
      while (events.at(-1)?.data.type !== 'response.completed') {
        const read = await readStream(streamUrl(responseId, events.at(-1)?.data.sequence_number));
        reads.push(read);
        events.push(...read.events);
        if (reads.length > 20) throw new Error('no progress');
      }
    } finally {
      sim.setStreamFaults({ streamCutAfterEvents: undefined });
    }
    // 10 events: four cut connections of 2, then the last 2 with the terminal one end normally
    expect(reads.map((r) => [r.events.length, r.complete])).toEqual([[2, false], [2, false], [2, false], [2, false], [2, true]]);
    const full = await readStream(streamUrl(responseId));
    expect(full.complete).toBe(true);
    expect(events.map((e) => e.raw)).toEqual(full.events.map((e) => e.raw));
    expect(sim.streamCount(responseId)).toBe(6);
  });

  it('answers 400 for a response not created with stream: true, and for every stream with refuseStreams', async () => {
    const plain = add({ stream: false });
    const refused = await fetch(streamUrl(plain), { headers: AUTH });
    expect(refused.status).toBe(400);
    expect(await refused.json()).toEqual({ error: { message: `Response '${plain}' was not created with 'stream: true' and cannot be streamed.`, type: 'api_error', param: 'stream', code: null } });
    // the plain GET still works
    expect((await fetch(`${sim.baseUrl}/responses/${plain}`, { headers: AUTH })).status).toBe(200);
    const streamable = add();
    sim.setStreamFaults({ refuseStreams: true });
    try {
      const answer = await fetch(streamUrl(streamable), { headers: AUTH });
      expect(answer.status).toBe(400);
      expect(await answer.json()).toMatchObject({ error: { param: 'stream' } });
    } finally {
      sim.setStreamFaults({ refuseStreams: undefined });
    }
    expect((await fetch(streamUrl('resp_missing'), { headers: AUTH })).status).toBe(404);
    expect((await fetch(streamUrl(streamable), { headers: { authorization: 'Bearer sk-wrong-0000' } })).status).toBe(401);
  });

  it('with streamBuffering sends the headers at once and holds every event until the end', async () => {
    const responseId = add();
    sim.setStreamFaults({ streamBuffering: true });
    let read: StreamRead;
    try {
      read = await readStream(streamUrl(responseId));
    } finally {
      sim.setStreamFaults({ streamBuffering: undefined });
    }
    const ended = sim.transitions(responseId).at(-1)!;
    expect(ended.status).toBe('completed');
    expect(read.headersAtMs).toBeLessThan(ended.atMs);
    expect(read.events.map((e) => e.data.type)).toEqual(TYPES);
    expect(Math.min(...read.events.map((e) => e.atMs))).toBeGreaterThanOrEqual(ended.atMs);
  });
});

describe('simulator response streams: rate limit and close', () => {
  it('refuses a stream with 429 beyond the fleet rate, counting it apart from GETs', async () => {
    const sim = await startSimulator({ rateLimit: { requestsPerSecond: 0.01, burst: 1 }, responses: [{ responseId: 'resp_rl', timeline: [{ status: 'in_progress' }], stream: true }] });
    try {
      expect((await fetch(`${sim.baseUrl}/responses/resp_rl`)).status).toBe(200);
      const limited = await fetch(`${sim.baseUrl}/responses/resp_rl?stream=true`);
      expect(limited.status).toBe(429);
      expect(limited.headers.get('retry-after-ms')).toMatch(/^\d+$/);
      expect(sim.stats()).toMatchObject({ requests: 2, rateLimited: 1, streams: 1 });
      expect(sim.retrieveCount('resp_rl')).toBe(1);
      expect(sim.streamCount('resp_rl')).toBe(1);
    } finally {
      await sim.close();
    }
  });

  it('close() ends open streams and leaves no timer behind', async () => {
    const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const before = timers();
    const receiver = await startReceiver(SECRET);
    const sim = await startSimulator({
      streamDeltaIntervalMs: 20,
      webhooks: { url: receiver.url, secret: SECRET },
      responses: [
        { responseId: 'resp_open', timeline: [{ status: 'in_progress', durationMs: 60_000 }, { status: 'completed' }], stream: true },
        { responseId: 'resp_done', timeline: [{ status: 'completed' }] },
      ],
    });
    try {
      let started!: () => void;
      const firstDelta = new Promise<void>((resolve) => (started = resolve));
      const reading = readStream(`${sim.baseUrl}/responses/resp_open?stream=true`, {}, (read) => {
        if (read.events.some((e) => e.data.type === 'response.output_text.delta')) started();
      });
      await firstDelta;
      await sim.close();
      const read = await reading;
      expect(read.complete).toBe(false);
      expect(read.events.at(-1)!.data.type).toBe('response.output_text.delta');
      expect(timers()).toBeLessThanOrEqual(before);
    } finally {
      await sim.close();
      await receiver.close();
    }
  });
});
