import type { Clock } from '@sinonjs/fake-timers';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { PollOutcome, RequestContext, StreamOpening } from '../src/client.js';
import { ConfigError } from '../src/errors.js';
import { OpenAIHookReceiver } from '../src/hooks.js';
import { signWebhook, webhookKey } from '../src/standard-webhooks.js';
import type { Snapshot } from '../src/resource.js';
import { safetyNetPolicy, DEFAULT_POLL_POLICY, nextDelayMs } from '../src/schedule.js';
import { RunWatcher } from '../src/watcher.js';
import { installClock, offsets, ok, scriptedClient } from './helpers.js';
import type { ScriptStep } from './helpers.js';

let clock: Clock;
beforeEach(() => {
  clock = installClock();
});
afterEach(() => {
  clock.uninstall();
});

const response = (status: string): PollOutcome<Snapshot> => ok(status, { id: 'resp_1', object: 'response' });

function setup(script: readonly ScriptStep[]) {
  const client = scriptedClient(script);
  const watcher = new RunWatcher({ client, random: () => 0, safetyNet: { baseMs: 30_000, capMs: 120_000 } });
  return { client, watcher };
}

describe('the safety-net policy', () => {
  it('starts every status at baseMs and doubles up to capMs; errors back off as before', () => {
    const net = safetyNetPolicy(DEFAULT_POLL_POLICY, { baseMs: 30_000, capMs: 100_000 });
    const delays = [0, 1, 2, 3].map((unchangedPolls) => nextDelayMs(net, { status: 'in_progress', unchangedPolls, consecutiveErrors: 0 }, () => 0));
    expect(delays).toEqual([30_000, 60_000, 100_000, 100_000]);
    expect(nextDelayMs(net, { status: 'thinking', unchangedPolls: 0, consecutiveErrors: 0 }, () => 0)).toBe(30_000);
    expect(net.errorBackoff).toBe(DEFAULT_POLL_POLICY.errorBackoff);
  });

  it('refuses a cap below its base, naming the field', () => {
    expect(() => safetyNetPolicy(DEFAULT_POLL_POLICY, { baseMs: 60_000, capMs: 1_000 })).toThrow(/safetyNet\.capMs/);
    expect(() => new RunWatcher({ client: scriptedClient([]), safetyNet: { baseMs: -1 } })).toThrow(ConfigError);
  });
});

describe("push: 'webhook'", () => {
  it('polls on the safety net and at once when woken; the poll decides, so a wake before the end costs one request', async () => {
    const { client, watcher } = setup([response('in_progress'), response('in_progress'), response('completed')]);
    const handle = watcher.watchResponse({ responseId: 'resp_1', push: 'webhook' });
    await clock.tickAsync(5_000);
    expect(offsets(client.calls)).toEqual([0]);
    expect(watcher.wakeResponse('resp_1')).toBe(1);
    await clock.tickAsync(0);
    expect(offsets(client.calls)).toEqual([0, 5_000]);
    // still in progress: the next poll is the safety net's, after 30 s unchanged -> 60 s
    await clock.tickAsync(40_000);
    expect(offsets(client.calls)).toEqual([0, 5_000]);
    expect(watcher.wakeResponse('resp_1')).toBe(1);
    await clock.tickAsync(0);
    await expect(handle.promise).resolves.toMatchObject({ status: 'completed' });
    expect(offsets(client.calls)).toEqual([0, 5_000, 45_000]);
    expect(watcher.wakeResponse('resp_1')).toBe(0);
    await watcher.close();
  });

  it('a wake during a poll in flight polls again right after it', async () => {
    const client = scriptedClient([]);
    let answer!: (outcome: PollOutcome<Snapshot>) => void;
    const answers = [response('in_progress'), undefined, response('completed')];
    client.retrieve = <T extends Snapshot>(_kind: unknown, _ref: object, context: RequestContext): Promise<PollOutcome<T>> => {
      client.calls.push({ atMs: Date.now(), context });
      const scripted = answers[client.calls.length - 1];
      return scripted ? Promise.resolve(scripted as PollOutcome<T>) : new Promise((resolve) => (answer = resolve as typeof answer));
    };
    const watcher = new RunWatcher({ client, random: () => 0 });
    const handle = watcher.watchResponse({ responseId: 'resp_1', push: 'webhook' });
    await clock.tickAsync(0);
    watcher.wakeResponse('resp_1');
    await clock.tickAsync(0);
    expect(client.calls).toHaveLength(2);
    // the webhook comes while that poll is out; it answers what it saw before
    watcher.wakeResponse('resp_1');
    answer(response('in_progress'));
    await clock.tickAsync(0);
    await expect(handle.promise).resolves.toMatchObject({ status: 'completed' });
    expect(offsets(client.calls)).toEqual([0, 0, 0]);
    await watcher.close();
  });

  it("a watch without a push signal polls as its policy says, and a wake still polls it at once", async () => {
    const { client, watcher } = setup([response('in_progress'), response('in_progress'), response('completed')]);
    const handle = watcher.watchResponse({ responseId: 'resp_1' });
    await clock.tickAsync(1_000);
    expect(offsets(client.calls)).toEqual([0]);
    watcher.wakeResponse('resp_1');
    await clock.tickAsync(0);
    expect(offsets(client.calls)).toEqual([0, 1_000]);
    // unchanged once: 1.75 s x 1.05
    await clock.tickAsync(1_838);
    await expect(handle.promise).resolves.toMatchObject({ status: 'completed' });
    expect(offsets(client.calls)).toEqual([0, 1_000, 2_838]);
    await watcher.close();
  });

  it('refuses an unknown push mode', () => {
    const { watcher } = setup([]);
    expect(() => watcher.watchResponse({ responseId: 'resp_1', push: 'carrier-pigeon' as 'none' })).toThrow(/unknown push "carrier-pigeon"/);
  });
});

/** A client whose streams the test feeds by hand. */
function streamingClient(script: readonly ScriptStep[]) {
  const client = scriptedClient(script);
  const streams: Array<{ query: string; push(text: string): void; end(): void; cut(): void; closed: boolean }> = [];
  let answer: (query: string) => StreamOpening | undefined = () => undefined;
  const openStream = (_kind: unknown, _ref: object, query: string): Promise<StreamOpening> => {
    const given = answer(query);
    if (given) return Promise.resolve(given);
    const queue: Array<string | null> = [];
    let wake: (() => void) | undefined;
    let completed = false;
    const entry = {
      query,
      closed: false,
      push(text: string) {
        queue.push(text);
        wake?.();
      },
      /** The server ends the response. */
      end() {
        completed = true;
        queue.push(null);
        wake?.();
      },
      /** The connection breaks. */
      cut() {
        queue.push(null);
        wake?.();
      },
    };
    streams.push(entry);
    async function* body(): AsyncGenerator<string> {
      for (;;) {
        const next = queue.shift();
        if (next === null || entry.closed) return;
        if (next !== undefined) yield next;
        else await new Promise<void>((resolve) => (wake = resolve));
      }
    }
    return Promise.resolve({
      ok: true,
      body: body(),
      close() {
        entry.closed = true;
        wake?.();
      },
      complete: () => completed,
    });
  };
  return { client: Object.assign(client, { openStream }), streams, refuseWith: (fn: typeof answer) => (answer = fn) };
}

const sse = (type: string, seq: number): string => `event: ${type}\ndata: {"type":"${type}","sequence_number":${seq}}\n\n`;

describe("push: 'stream'", () => {
  it('opens the stream after the first poll, polls on the safety net while it delivers, and confirms a terminal event with one poll', async () => {
    const { client, streams } = streamingClient([response('queued'), response('completed')]);
    const watcher = new RunWatcher({ client, random: () => 0 });
    const handle = watcher.watchResponse({ responseId: 'resp_1', push: 'stream' });
    await clock.tickAsync(0);
    expect(streams.map((s) => s.query)).toEqual(['stream=true']);
    expect(watcher.openStreams).toBe(1);
    streams[0]!.push(sse('response.created', 0) + sse('response.in_progress', 1));
    await clock.tickAsync(0);
    // the poll the normal policy planned at 1 s moved to the safety net's 30 s
    await clock.tickAsync(20_000);
    expect(offsets(client.calls)).toEqual([0]);
    streams[0]!.push(sse('response.output_text.delta', 2) + sse('response.completed', 3));
    await clock.tickAsync(0);
    await expect(handle.promise).resolves.toMatchObject({ status: 'completed' });
    expect(offsets(client.calls)).toEqual([0, 20_000]);
    expect(streams[0]!.closed).toBe(true);
    expect(watcher.openStreams).toBe(0);
    await watcher.close();
  });

  it('reopens a cut stream after the last sequence number, skipping anything replayed', async () => {
    const { client, streams } = streamingClient([response('in_progress'), response('completed')]);
    const watcher = new RunWatcher({ client, random: () => 0 });
    const handle = watcher.watchResponse({ responseId: 'resp_1', push: 'stream' });
    await clock.tickAsync(0);
    streams[0]!.push(sse('response.created', 0) + sse('response.in_progress', 1));
    await clock.tickAsync(0);
    streams[0]!.cut();
    await clock.tickAsync(0);
    expect(streams.map((s) => s.query)).toEqual(['stream=true', 'stream=true&starting_after=1']);
    // a server that replays what was skipped must not move the position back
    streams[1]!.push(sse('response.output_text.delta', 2) + sse('response.in_progress', 1));
    await clock.tickAsync(0);
    streams[1]!.cut();
    await clock.tickAsync(0);
    expect(streams.map((s) => s.query)).toEqual(['stream=true', 'stream=true&starting_after=1', 'stream=true&starting_after=2']);
    streams[2]!.push(sse('response.completed', 3));
    await clock.tickAsync(0);
    await expect(handle.promise).resolves.toMatchObject({ status: 'completed' });
    await watcher.close();
  });

  it('a stream the server ends without a terminal event it knows (a newer status) wakes the watch once and stops', async () => {
    const { client, streams } = streamingClient([response('in_progress'), response('paused_by_policy')]);
    const watcher = new RunWatcher({ client, random: () => 0 });
    const handle = watcher.watchResponse({ responseId: 'resp_1', push: 'stream' });
    await clock.tickAsync(0);
    streams[0]!.push(sse('response.created', 0) + sse('response.paused_by_policy', 1));
    streams[0]!.end();
    await clock.tickAsync(0);
    // any status but queued and in_progress ends a background response
    await expect(handle.promise).resolves.toMatchObject({ status: 'paused_by_policy' });
    expect(offsets(client.calls)).toEqual([0, 0]);
    expect(streams).toHaveLength(1);
    await watcher.close();
  });

  it('falls back to polling as usual when the server refuses to stream, and never asks again', async () => {
    const { client, streams, refuseWith } = streamingClient([response('in_progress')]);
    let asked = 0;
    refuseWith(() => {
      asked += 1;
      return { ok: false, refused: true, failure: { ok: false, retryable: false, code: 'bad_request', message: 'HTTP 400: not created with stream', httpStatus: 400, hints: {} } };
    });
    const watcher = new RunWatcher({ client, random: () => 0 });
    watcher.watchResponse({ responseId: 'resp_1', push: 'stream' });
    await clock.tickAsync(10_000);
    expect(asked).toBe(1);
    expect(streams).toHaveLength(0);
    // the normal in_progress policy: 1.75 s growing by 1.05
    expect(client.calls.length).toBeGreaterThanOrEqual(5);
    expect(watcher.openStreams).toBe(0);
    await watcher.close();
  });

  it('drops a stream that delivers nothing (a buffering proxy) and polls as usual again', async () => {
    const { client, streams } = streamingClient([response('in_progress')]);
    const watcher = new RunWatcher({ client, random: () => 0, streams: { firstEventTimeoutMs: 5_000 } });
    watcher.watchResponse({ responseId: 'resp_1', push: 'stream' });
    await clock.tickAsync(0);
    expect(streams).toHaveLength(1);
    await clock.tickAsync(5_000);
    expect(streams[0]!.closed).toBe(true);
    const before = client.calls.length;
    await clock.tickAsync(10_000);
    expect(streams).toHaveLength(1);
    expect(client.calls.length).toBeGreaterThan(before + 3);
    await watcher.close();
  });

  it('holds at most maxStreams; the others poll', async () => {
    const { client, streams } = streamingClient([response('in_progress')]);
    const watcher = new RunWatcher({ client, random: () => 0, streams: { maxStreams: 2 } });
    for (const id of ['resp_a', 'resp_b', 'resp_c']) watcher.watchResponse({ responseId: id, push: 'stream' });
    await clock.tickAsync(0);
    expect(streams).toHaveLength(2);
    expect(watcher.openStreams).toBe(2);
    await watcher.close();
    expect(streams.every((s) => s.closed)).toBe(true);
  });
});

describe('OpenAIHookReceiver in a library user\'s own server', () => {
  it('wakes the watch a verified event names, once per webhook-id, and refuses a bad signature', async () => {
    const { client, watcher } = setup([response('in_progress'), response('completed')]);
    const secret = `whsec_${Buffer.alloc(32, 7).toString('base64')}`;
    const receiver = new OpenAIHookReceiver([secret], { wakeResponse: (id) => watcher.wakeResponse(id) > 0 });
    const handle = watcher.watchResponse({ responseId: 'resp_1', push: 'webhook' });
    await clock.tickAsync(1_000);
    const body = JSON.stringify({ id: 'evt_1', object: 'event', type: 'response.completed', created_at: Math.floor(Date.now() / 1000), data: { id: 'resp_1' } });
    const ts = Math.floor(Date.now() / 1000);
    const headers = { 'webhook-id': 'evt_1', 'webhook-timestamp': String(ts), 'webhook-signature': signWebhook(webhookKey(secret), 'evt_1', ts, body) };
    expect(await receiver.receive({ ...headers, 'webhook-signature': 'v1,AAAA' }, body)).toMatchObject({ status: 401 });
    expect(await receiver.receive(headers, body)).toEqual({ status: 200, body: { status: 'matched' } });
    expect(await receiver.receive(headers, body)).toEqual({ status: 200, body: { status: 'duplicate' } });
    await clock.tickAsync(0);
    await expect(handle.promise).resolves.toMatchObject({ status: 'completed' });
    expect(offsets(client.calls)).toEqual([0, 1_000]);
    expect(() => new OpenAIHookReceiver([], { wakeResponse: () => false })).toThrow(ConfigError);
    await watcher.close();
  });
});
