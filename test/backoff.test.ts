import { getEventListeners } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Clock } from '@sinonjs/fake-timers';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { MockInstance } from 'vitest';
import { actWithRetries } from '../src/actions.js';
import { MAX_TIMER_MS, backoffDelayMs, sleep } from '../src/backoff.js';
import type { PollOutcome } from '../src/client.js';
import { settleFailure } from '../src/daemon/outbox.js';
import type { DeliveryPolicy } from '../src/daemon/outbox.js';
import { DeliveryError } from '../src/errors.js';
import type { WatchEvent } from '../src/events.js';
import type { Snapshot } from '../src/resource.js';
import { WebhookSink } from '../src/sinks/webhook.js';
import { T0, failure, installClock, ok } from './helpers.js';

const noJitter = (): number => 0;
const maxJitter = (): number => 0.999999;
const errorBackoff = { baseMs: 500, capMs: 30_000, growth: 2, jitter: 1 };

describe('backoffDelayMs', () => {
  it('grows by `growth` per attempt from `baseMs`, up to `capMs`', () => {
    const delays = [1, 2, 3, 4, 5, 6, 7, 8, 50, 1e9].map((attempt) => backoffDelayMs(errorBackoff, { attempt }, noJitter));
    expect(delays).toEqual([500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
    expect([1, 2, 3].map((attempt) => backoffDelayMs({ ...errorBackoff, growth: 1.5 }, { attempt }, noJitter))).toEqual([500, 750, 1125]);
  });

  it('keeps full jitter within [0, nominal] and half jitter within [nominal / 2, nominal], over the whole range', () => {
    let seed = 7;
    const random = (): number => ((seed = (seed * 16807) % 2147483647) - 1) / 2147483646;
    const full = Array.from({ length: 2000 }, () => backoffDelayMs(errorBackoff, { attempt: 4 }, random));
    expect(Math.min(...full)).toBeGreaterThanOrEqual(0);
    expect(Math.min(...full)).toBeLessThan(200);
    expect(Math.max(...full)).toBeLessThanOrEqual(4000);
    expect(Math.max(...full)).toBeGreaterThan(3800);
    const half = Array.from({ length: 2000 }, () => backoffDelayMs({ ...errorBackoff, jitter: 0.5 }, { attempt: 4 }, random));
    expect(Math.min(...half)).toBeGreaterThanOrEqual(2000);
    expect(Math.min(...half)).toBeLessThan(2100);
    expect(Math.max(...half)).toBeLessThanOrEqual(4000);
    expect(backoffDelayMs({ ...errorBackoff, jitter: 0.5 }, { attempt: 4 }, maxJitter)).toBe(2001);
    expect(backoffDelayMs({ ...errorBackoff, jitter: 0 }, { attempt: 4 }, maxJitter)).toBe(4000);
  });

  it('draws randomness exactly once, even without jitter', () => {
    let draws = 0;
    backoffDelayMs({ ...errorBackoff, jitter: 0 }, { attempt: 3, floorMs: 10 }, () => (draws += 1) && 0.5);
    expect(draws).toBe(1);
  });

  it('never waits less than the server floor, up to `maxFloorMs`; ignores absurd floors', () => {
    expect(backoffDelayMs(errorBackoff, { attempt: 1, floorMs: 1234 }, maxJitter)).toBe(1234);
    expect(backoffDelayMs(errorBackoff, { attempt: 1, floorMs: 1234.2 }, maxJitter)).toBe(1235);
    expect(backoffDelayMs(errorBackoff, { attempt: 3, floorMs: 100 }, noJitter)).toBe(2000);
    expect(backoffDelayMs({ ...errorBackoff, maxFloorMs: 5_000 }, { attempt: 1, floorMs: 9_000 }, noJitter)).toBe(5000);
    // without maxFloorMs the floor may exceed the cap: a receiver's retry-after is obeyed as given
    expect(backoffDelayMs(errorBackoff, { attempt: 1, floorMs: 3_600_000 }, noJitter)).toBe(3_600_000);
    for (const floorMs of [Number.NaN, -5, 0, Number.POSITIVE_INFINITY, undefined]) {
      expect(backoffDelayMs(errorBackoff, { attempt: 1, floorMs }, noJitter)).toBe(500);
    }
  });

  it('never exceeds the largest timer Node can arm, and never returns NaN', () => {
    const huge = { baseMs: MAX_TIMER_MS, capMs: MAX_TIMER_MS, growth: 100, jitter: 0 };
    expect(backoffDelayMs(huge, { attempt: 5 }, noJitter)).toBe(MAX_TIMER_MS);
    expect(backoffDelayMs({ ...errorBackoff, capMs: 1e15 }, { attempt: 200 }, noJitter)).toBe(MAX_TIMER_MS);
    expect(backoffDelayMs(errorBackoff, { attempt: 1, floorMs: 1e15 }, noJitter)).toBe(MAX_TIMER_MS);
    expect(backoffDelayMs({ baseMs: 0, capMs: 1000, growth: 100, jitter: 1 }, { attempt: 5000 }, noJitter)).toBe(0);
  });
});

/** The abort listeners still registered on `signal`. */
function abortListeners(signal: AbortSignal): number {
  return getEventListeners(signal, 'abort').length;
}

describe('sleep', () => {
  let clock: Clock;
  beforeEach(() => (clock = installClock()));
  afterEach(() => clock.uninstall());

  it('resolves after the delay, not before, and leaves no listener', async () => {
    const controller = new AbortController();
    let done = false;
    const waiting = sleep(1000, controller.signal).then(() => (done = true));
    await clock.tickAsync(999);
    expect(done).toBe(false);
    await clock.tickAsync(1);
    await waiting;
    expect(done).toBe(true);
    expect(clock.countTimers()).toBe(0);
    expect(abortListeners(controller.signal)).toBe(0);
  });

  it('rejects with the signal reason at once on abort, leaving no timer and no listener', async () => {
    const controller = new AbortController();
    const waiting = sleep(60_000, controller.signal);
    expect(clock.countTimers()).toBe(1);
    expect(abortListeners(controller.signal)).toBe(1);
    const reason = new Error('shutting down');
    controller.abort(reason);
    await expect(waiting).rejects.toBe(reason);
    expect(Date.now()).toBe(T0);
    expect(clock.countTimers()).toBe(0);
    expect(abortListeners(controller.signal)).toBe(0);
  });

  it('rejects without arming a timer when the signal has already aborted', async () => {
    const reason = new Error('gone');
    await expect(sleep(1000, AbortSignal.abort(reason))).rejects.toBe(reason);
    expect(clock.countTimers()).toBe(0);
  });

  it('clamps a delay Node cannot arm instead of firing it at once', async () => {
    let done = false;
    void sleep(1e15).then(() => (done = true));
    await clock.tickAsync(1000);
    expect(done).toBe(false);
    await clock.tickAsync(MAX_TIMER_MS - 1000);
    expect(done).toBe(true);
  });
});

describe('actWithRetries', () => {
  let clock: Clock;
  beforeEach(() => (clock = installClock()));
  afterEach(() => clock.uninstall());

  /** A `send` that answers from a script and records when (ms after T0) it was called. */
  function scripted(script: readonly PollOutcome<Snapshot>[]): { send: () => Promise<PollOutcome<Snapshot>>; sentAtMs: number[] } {
    const sentAtMs: number[] = [];
    const send = (): Promise<PollOutcome<Snapshot>> => {
      sentAtMs.push(Date.now() - T0);
      return Promise.resolve(script[Math.min(sentAtMs.length - 1, script.length - 1)]!);
    };
    return { send, sentAtMs };
  }

  it('tries three times on transient failures, 0.5 s then 1 s apart, and returns the last outcome', async () => {
    const last = failure(503, 'transient');
    const { send, sentAtMs } = scripted([failure(500, 'transient'), failure(502, 'transient'), last]);
    const result = actWithRetries(send, new AbortController().signal);
    await clock.tickAsync(1500);
    // no wait after the last try: the result is there without the clock moving on
    expect(await result).toBe(last);
    expect(sentAtMs).toEqual([0, 500, 1500]);
    expect(clock.countTimers()).toBe(0);
  });

  it('stops at the first success or permanent failure', async () => {
    const answer = ok('cancelling');
    const first = scripted([failure(429, 'transient'), answer]);
    const result = actWithRetries(first.send, new AbortController().signal);
    await clock.runAllAsync();
    expect(await result).toBe(answer);
    expect(first.sentAtMs).toEqual([0, 500]);
    const denied = failure(400, 'bad_request');
    const second = scripted([denied]);
    await expect(actWithRetries(second.send, new AbortController().signal)).resolves.toBe(denied);
    expect(second.sentAtMs).toEqual([500]);
  });

  it("waits the server's retry-after instead, clamped to 5 s", async () => {
    const { send, sentAtMs } = scripted([failure(429, 'transient', { retryAfterMs: 3000 }), failure(429, 'transient', { retryAfterMs: 60_000 }), ok('cancelling')]);
    const result = actWithRetries(send, new AbortController().signal);
    await clock.runAllAsync();
    expect((await result).ok).toBe(true);
    expect(sentAtMs).toEqual([0, 3000, 8000]);
  });

  it('returns the last outcome at once when the signal aborts during a wait, leaving no timer and no listener', async () => {
    const controller = new AbortController();
    const first = failure(429, 'transient', { retryAfterMs: 4000 });
    const { send, sentAtMs } = scripted([first, ok('cancelling')]);
    const result = actWithRetries(send, controller.signal);
    await clock.tickAsync(1000);
    expect(clock.countTimers()).toBe(1);
    controller.abort(new Error('shutting down'));
    expect(await result).toBe(first);
    expect(Date.now() - T0).toBe(1000);
    expect(sentAtMs).toEqual([0]);
    expect(clock.countTimers()).toBe(0);
    expect(abortListeners(controller.signal)).toBe(0);
  });

  it('sends nothing when the signal has already aborted', async () => {
    const { send, sentAtMs } = scripted([ok('cancelling')]);
    const result = await actWithRetries(send, AbortSignal.abort());
    expect(result).toMatchObject({ ok: false, code: 'aborted', aborted: true });
    expect(sentAtMs).toEqual([]);
  });
});

describe('settleFailure (both outboxes)', () => {
  const policy = (random: () => number): DeliveryPolicy => ({ retryForMs: 86_400_000, backoff: { baseMs: 1000, capMs: 300_000 }, logger: pino({ level: 'silent' }), random });
  const settle = (random: () => number, priorFailures: number, error: unknown = new DeliveryError('receiver answered HTTP 503')): number => {
    const decision = settleFailure(policy(random), { sink: 'webhook', eventId: 'w_1.1', error, priorFailures, firstFailureMs: T0 }, T0);
    if (decision.dead) throw new Error('unexpectedly dead');
    return decision.delayMs;
  };

  it('doubles from backoffBaseMs to backoffCapMs with half jitter', () => {
    expect([0, 1, 2, 8, 9, 40].map((n) => settle(noJitter, n))).toEqual([1000, 2000, 4000, 256_000, 300_000, 300_000]);
    expect([0, 1, 9].map((n) => settle(maxJitter, n))).toEqual([501, 1001, 150_001]);
  });

  it("never retries sooner than the receiver's retry-after, even past the cap", () => {
    expect(settle(maxJitter, 0, new DeliveryError('receiver answered HTTP 429', { retryAfterMs: 7000 }))).toBe(7000);
    expect(settle(noJitter, 0, new DeliveryError('receiver answered HTTP 429', { retryAfterMs: 3_600_000 }))).toBe(3_600_000);
  });

  it('names the sink once per log line: the logger the outboxes get is already bound to it', () => {
    const lines: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (line: string) => lines.push(line) }).child({ component: 'outbox' }).child({ sink: 'webhook' });
    const failure = { sink: 'webhook', eventId: 'w_1.1', priorFailures: 0, firstFailureMs: T0 };
    settleFailure({ ...policy(noJitter), logger }, { ...failure, error: new DeliveryError('receiver answered HTTP 503') }, T0);
    settleFailure({ ...policy(noJitter), logger }, { ...failure, error: new DeliveryError('receiver answered HTTP 410', { permanent: true }) }, T0);
    expect(lines).toHaveLength(2);
    // a key twice is JSON that log pipelines read differently (first or last wins)
    for (const line of lines) expect(line.match(/"sink":/g)).toEqual(['"sink":']);
    expect(lines.map((line) => (JSON.parse(line) as { sink: string; eventId: string }).sink)).toEqual(['webhook', 'webhook']);
  });
});

describe('WebhookSink quick retries', () => {
  let clock: Clock;
  let armed: MockInstance<typeof setTimeout>;
  let server: http.Server;
  let url: string;
  /** Resolvers waiting for the receiver's next request. */
  let arrivals: (() => void)[];
  let requestsAtMs: number[];
  let answer: { status: number; headers: Record<string, string> };
  beforeEach(async () => {
    arrivals = [];
    requestsAtMs = [];
    answer = { status: 200, headers: {} };
    server = http.createServer((req, res) => {
      req.resume().on('end', () => {
        requestsAtMs.push(Date.now() - T0);
        res.writeHead(answer.status, answer.headers).end();
        arrivals.splice(0).forEach((resolve) => resolve());
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
    clock = installClock();
    // records the delay of every timer armed, to know when the sink has gone to sleep
    armed = vi.spyOn(globalThis, 'setTimeout');
  });
  afterEach(async () => {
    armed.mockRestore();
    clock.uninstall();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  const event = { id: 'w_1.1', type: 'run.completed', seq: 1, watch_id: 'w_1', thread_id: 'thread_1', run_id: 'run_1', from: 'in_progress', to: 'completed', observed_at: '2026-01-01T00:00:00.000Z', run: { id: 'run_1', status: 'completed' } } as WatchEvent;
  const nextRequest = (): Promise<void> => new Promise((resolve) => arrivals.push(resolve));
  /** Lets real I/O run (the fake clock stands still) until a timer of `delayMs` has been armed. */
  const untilArmed = async (delayMs: number): Promise<void> => {
    const startedAt = performance.now();
    while (!armed.mock.calls.some((call) => call[1] === delayMs)) {
      if (performance.now() - startedAt > 10_000) throw new Error(`no ${delayMs} ms timer armed`);
      await new Promise((resolve) => setImmediate(resolve));
    }
  };

  it('obeys a short retry-after before the next quick retry, else backs off 200 ms, 400 ms', async () => {
    answer = { status: 429, headers: { 'retry-after-ms': '1500' } };
    const sink = new WebhookSink({ url, quickRetries: 2 });
    const delivery = sink.deliver(event, {});
    delivery.catch(() => undefined);
    await untilArmed(1500);
    await clock.tickAsync(1499);
    expect(requestsAtMs).toEqual([0]);
    answer = { status: 503, headers: {} };
    const second = nextRequest();
    await clock.tickAsync(1);
    await second;
    await untilArmed(400);
    await clock.tickAsync(400);
    await expect(delivery).rejects.toThrow('receiver answered HTTP 503');
    expect(requestsAtMs).toEqual([0, 1500, 1900]);
    // no wait after the last try: the outbox takes over at once
    expect(clock.countTimers()).toBe(0);
    sink.close();
  });

  it('leaves a longer retry-after to the outbox: no quick retry, no wait', async () => {
    answer = { status: 429, headers: { 'retry-after-ms': '2001' } };
    const sink = new WebhookSink({ url, quickRetries: 2 });
    const error: unknown = await sink.deliver(event, {}).catch((rejection: unknown) => rejection);
    expect(error).toBeInstanceOf(DeliveryError);
    expect(error).toMatchObject({ permanent: false, retryAfterMs: 2001 });
    expect(requestsAtMs).toEqual([0]);
    expect(clock.countTimers()).toBe(0);
    sink.close();
  });

  it('cuts the retry-after wait short when the signal aborts, leaving no timer and no listener', async () => {
    answer = { status: 429, headers: { 'retry-after-ms': '2000' } };
    const sink = new WebhookSink({ url, quickRetries: 2 });
    const controller = new AbortController();
    const delivery = sink.deliver(event, { signal: controller.signal });
    delivery.catch(() => undefined);
    await untilArmed(2000);
    expect(clock.countTimers()).toBe(1);
    const reason = new Error('shutting down');
    controller.abort(reason);
    await expect(delivery).rejects.toBe(reason);
    expect(Date.now()).toBe(T0);
    expect(requestsAtMs).toEqual([0]);
    expect(clock.countTimers()).toBe(0);
    expect(abortListeners(controller.signal)).toBe(0);
    sink.close();
  });
});
