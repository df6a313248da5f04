// OpenTelemetry: the watch span, its events, per-poll spans, the traceparent sent upstream,
// and no secret in what is exported; against the simulator, with an in-memory exporter.
import { context, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import type { ReadableSpan } from '@opentelemetry/sdk-trace';
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import * as semconv from '@opentelemetry/semantic-conventions';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { WatchEvent } from '../src/events.js';
import type { RunningSimulator } from '../src/simulator.js';
import { HTTP_ATTRIBUTES, otelApi, WATCH_SPAN } from '../src/telemetry.js';
import type { RunWatcherOptions } from '../src/watcher.js';
import { RunWatcher } from '../src/watcher.js';
import { FAST_POLICY, storeKinds, useDaemon } from './daemons.js';
import { requireRedis } from './redis.js';
import { readSseEvents } from './sse.js';
import { useSimulator } from './sim.js';

const KEY = 'sk-otel-secret-0001';
const POLICY = JSON.parse(FAST_POLICY) as RunWatcherOptions['policy'];
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$/;
const redisAvailable = await requireRedis();

let sim: RunningSimulator;
useSimulator({ apiKey: KEY }, (started) => (sim = started));

let runs = 0;
/** A run that goes queued, in_progress, completed within half a second of its first poll. */
function quickRun(extra: { timeline?: { status: string; durationMs?: number }[] } = {}): { threadId: string; runId: string } {
  runs += 1;
  const ids = { threadId: `thread_ot${runs}`, runId: `run_ot${runs}` };
  sim.addRun({ ...ids, timeline: extra.timeline ?? [{ status: 'queued', durationMs: 120 }, { status: 'in_progress', durationMs: 200 }, { status: 'completed' }], start: 'first_request' });
  return ids;
}

function watcher(options: Partial<RunWatcherOptions> = {}): RunWatcher {
  return new RunWatcher({ provider: 'openai', baseUrl: sim.baseUrl, credentials: { apiKey: KEY }, policy: POLICY, ...options });
}

const traceparents = (runId: string): string[] => sim.requests(runId).map((r) => r.headers.traceparent as string);

describe('without OpenTelemetry', () => {
  it('loads no API, sends no trace header, and watches as before', async () => {
    const w = watcher();
    const { threadId, runId } = quickRun();
    const run = await w.watchRun({ threadId, runId }).promise;
    expect(run.status).toBe('completed');
    expect(otelApi()).toBeUndefined();
    expect(sim.requests(runId).length).toBeGreaterThan(0);
    expect(sim.requests(runId).filter((r) => r.headers.traceparent !== undefined || r.headers.tracestate !== undefined)).toEqual([]);
    await w.close();
  });
});

describe('with an SDK registered', () => {
  const exporter = new InMemorySpanExporter();
  const provider = new TracerProvider({ spanProcessors: [new SimpleSpanProcessor({ exporter })] });
  beforeAll(() => {
    trace.setGlobalTracerProvider(provider);
    propagation.setGlobalPropagator(new W3CTraceContextPropagator());
    // as an application's SDK does: the active span follows async work
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  });
  afterAll(async () => {
    await provider.shutdown();
    trace.disable();
    propagation.disable();
    context.disable();
  });
  beforeEach(() => exporter.reset());

  const watchSpans = (watchId: string): ReadableSpan[] => exporter.getFinishedSpans().filter((s) => s.name === WATCH_SPAN && s.attributes['runwatch.watch.id'] === watchId);
  const childrenOf = (parent: ReadableSpan): ReadableSpan[] => exporter.getFinishedSpans().filter((s) => s.parentSpanContext?.spanId === parent.spanContext().spanId);

  it('names the HTTP attributes as the stable semantic conventions do', () => {
    expect(HTTP_ATTRIBUTES).toEqual({
      method: semconv.ATTR_HTTP_REQUEST_METHOD,
      url: semconv.ATTR_URL_FULL,
      status: semconv.ATTR_HTTP_RESPONSE_STATUS_CODE,
      serverAddress: semconv.ATTR_SERVER_ADDRESS,
      serverPort: semconv.ATTR_SERVER_PORT,
      errorType: semconv.ATTR_ERROR_TYPE,
    });
  });

  it('gives a watch one span: its ids, an event per transition, its final status; traceparent upstream carries its trace', async () => {
    const w = watcher();
    const { threadId, runId } = quickRun();
    const handle = w.watchRun({ threadId, runId, watchId: 'w_otel_one' });
    await handle.promise;
    const [span, ...others] = watchSpans('w_otel_one');
    expect(others).toEqual([]);
    expect(span!.attributes).toEqual({
      'runwatch.watch.id': 'w_otel_one',
      'runwatch.watch.kind': 'run',
      'runwatch.thread.id': threadId,
      'runwatch.run.id': runId,
      'runwatch.watch.resumed': false,
      'runwatch.status': 'completed',
      'runwatch.watch.outcome': 'finished',
    });
    expect(span!.kind).toBe(SpanKind.INTERNAL);
    expect(span!.parentSpanContext).toBeUndefined();
    expect(span!.status.code).toBe(SpanStatusCode.UNSET);
    expect(span!.events.map((e) => [e.name, e.attributes])).toEqual([
      ['run.queued', { seq: 1, to: 'queued' }],
      ['run.in_progress', { seq: 2, from: 'queued', to: 'in_progress' }],
      ['run.completed', { seq: 3, from: 'in_progress', to: 'completed' }],
    ]);
    // per-poll spans are opt-in
    expect(childrenOf(span!)).toEqual([]);
    const sent = traceparents(runId);
    expect(sent.length).toBeGreaterThanOrEqual(3);
    for (const header of sent) {
      const [, traceId, parentId] = TRACEPARENT.exec(header) ?? [];
      expect(traceId, header).toBe(span!.spanContext().traceId);
      expect(parentId, header).toBe(span!.spanContext().spanId);
    }
    await w.close();
  });

  it('with tracePolls, gives each poll a client span under the watch span, named and described by the HTTP conventions', async () => {
    const w = watcher({ tracePolls: true });
    const { threadId, runId } = quickRun();
    await w.watchRun({ threadId, runId, watchId: 'w_otel_polls' }).promise;
    const [span] = watchSpans('w_otel_polls');
    const polls = childrenOf(span!);
    expect(polls.length).toBe(sim.retrieveCount(runId));
    const sent = traceparents(runId);
    polls.forEach((poll, i) => {
      expect(poll.name).toBe('GET');
      expect(poll.kind).toBe(SpanKind.CLIENT);
      expect(poll.spanContext().traceId).toBe(span!.spanContext().traceId);
      expect(poll.attributes).toEqual({
        'http.request.method': 'GET',
        'url.full': `${sim.baseUrl}/threads/${threadId}/runs/${runId}`,
        'server.address': '127.0.0.1',
        'server.port': sim.port,
        'http.response.status_code': 200,
        'runwatch.watch.id': 'w_otel_polls',
        'runwatch.poll.outcome': 'ok',
      });
      // each request names its own span as the parent
      expect(TRACEPARENT.exec(sent[i]!)?.[2]).toBe(poll.spanContext().spanId);
    });
    await w.close();
  });

  it('starts the watch span under the caller’s span, runs the tool handler in it, and records the action', async () => {
    const w = watcher({ tracePolls: true });
    const { threadId, runId } = quickRun({ timeline: [{ status: 'in_progress', durationMs: 100 }, { status: 'requires_action' }, { status: 'in_progress', durationMs: 100 }, { status: 'completed' }] });
    let inHandler: string | undefined;
    const caller = trace.getTracer('test').startSpan('caller');
    const handle = context.with(trace.setSpan(ROOT_CONTEXT, caller), () =>
      w.watchRun({
        threadId,
        runId,
        watchId: 'w_otel_tools',
        onRequiresAction: ({ toolCalls }) => {
          inHandler = trace.getActiveSpan()?.spanContext().spanId;
          return toolCalls.map((call) => ({ tool_call_id: call.id, output: 'ok' }));
        },
      }),
    );
    await handle.promise;
    caller.end();
    const [span] = watchSpans('w_otel_tools');
    expect(span!.parentSpanContext?.spanId).toBe(caller.spanContext().spanId);
    expect(inHandler).toBe(span!.spanContext().spanId);
    const submitted = span!.events.find((e) => e.name === 'run.tool_outputs_submitted');
    expect(submitted?.attributes).toMatchObject({ from: 'requires_action', to: 'requires_action' });
    expect((submitted?.attributes?.tool_call_ids as string[]).length).toBe(1);
    const post = childrenOf(span!).find((s) => s.name === 'POST');
    expect(post?.attributes).toMatchObject({ 'http.request.method': 'POST', 'url.full': `${sim.baseUrl}/threads/${threadId}/runs/${runId}/submit_tool_outputs`, 'http.response.status_code': 200 });
    const posted = sim.requests(runId).find((r) => r.method === 'POST');
    expect(TRACEPARENT.exec(posted?.headers.traceparent as string)?.[2]).toBe(post!.spanContext().spanId);
    await w.close();
  });

  it('ends a failed watch with status ERROR and its code; a failed poll span says why', async () => {
    const w = watcher({ tracePolls: true });
    const handle = w.watchRun({ threadId: 'thread_missing', runId: 'run_missing', watchId: 'w_otel_404' });
    await expect(handle.promise).rejects.toMatchObject({ code: 'run_not_found' });
    const [span] = watchSpans('w_otel_404');
    expect(span!.status).toMatchObject({ code: SpanStatusCode.ERROR });
    expect(span!.status.message).toMatch(/HTTP 404/);
    expect(span!.attributes).toMatchObject({ 'runwatch.watch.outcome': 'failed', 'runwatch.error.code': 'run_not_found', 'error.type': 'run_not_found' });
    expect(span!.events.map((e) => [e.name, e.attributes])).toEqual([['watch.error', { seq: 1, 'error.code': 'run_not_found', http_status: 404 }]]);
    const [poll] = childrenOf(span!);
    expect(poll!.status.code).toBe(SpanStatusCode.ERROR);
    expect(poll!.attributes).toMatchObject({ 'http.response.status_code': 404, 'error.type': '404', 'runwatch.poll.outcome': 'run_not_found' });
    await w.close();
  });

  it('ends the span of a watch deleted on purpose without an error status, and of one left by close() as suspended', async () => {
    const w = watcher();
    const long = quickRun({ timeline: [{ status: 'in_progress' }] });
    const aborted = w.watchRun({ ...long, watchId: 'w_otel_abort' });
    const events: WatchEvent[] = [];
    await new Promise<void>((resolve) => w.on('event', (event) => (events.push(event), event.type === 'run.in_progress' && resolve())));
    aborted.abort();
    await aborted.promise.catch(() => undefined);
    const [deleted] = watchSpans('w_otel_abort');
    expect(deleted!.status.code).toBe(SpanStatusCode.UNSET);
    expect(deleted!.attributes).toMatchObject({ 'runwatch.watch.outcome': 'deleted', 'runwatch.error.code': 'aborted' });

    const other = quickRun({ timeline: [{ status: 'in_progress' }] });
    const open = w.watchRun({ ...other, watchId: 'w_otel_open' });
    await new Promise<void>((resolve) => w.on('event', (event) => event.watch_id === 'w_otel_open' && resolve()));
    await w.close();
    await open.promise.catch(() => undefined);
    const [suspended] = watchSpans('w_otel_open');
    expect(suspended!.attributes).toMatchObject({ 'runwatch.watch.outcome': 'suspended', 'runwatch.status': 'in_progress' });
    expect(suspended!.status.code).toBe(SpanStatusCode.UNSET);
  });

  it('exports no secret: API keys, Portkey keys and config, sensitive headers, in attributes, events or statuses', async () => {
    const secrets = { apiKey: 'sk-portkey-secret-1234', virtualKey: 'vk-secret-5678', portkeyConfig: '{"provider":"openai","api_key":"sk-provider-secret-9012"}' };
    const portkey = new RunWatcher({ provider: 'portkey', baseUrl: sim.baseUrl, credentials: secrets, policy: POLICY, tracePolls: true });
    const header = 'tok-header-secret-3456';
    // the simulator's key differs: every poll answers 401, which echoes part of the key
    const refused = portkey.watchRun({ threadId: 'thread_ps', runId: 'run_ps', watchId: 'w_otel_secret', headers: { 'x-custom-token': header } });
    await expect(refused.promise).rejects.toMatchObject({ code: 'unauthorized' });
    const good = quickRun();
    const openai = watcher({ tracePolls: true, headers: { 'x-other-api-key': header } });
    await openai.watchRun({ ...good, watchId: 'w_otel_secret_ok' }).promise;
    const spans = exporter.getFinishedSpans();
    expect(spans.some((s) => s.attributes['runwatch.watch.id'] === 'w_otel_secret' && s.status.code === SpanStatusCode.ERROR)).toBe(true);
    const exported = JSON.stringify(spans.map((s) => ({ name: s.name, attributes: s.attributes, events: s.events, status: s.status, links: s.links, resource: s.resource.attributes })));
    expect(exported).toContain('sk-[REDACTED]');
    for (const secret of [KEY, secrets.apiKey, secrets.virtualKey, secrets.portkeyConfig, 'sk-provider-secret-9012', header, '***1234']) expect(exported).not.toContain(secret);
    await portkey.close();
    await openai.close();
  });
});

// the daemon's engines, with the provider above: the span of a watch spans the process that polls
// it (memory, SQLite; Redis: the replica that owns its partition, one span per owner)
describe.each(storeKinds(redisAvailable, ['memory', 'redis']))('the daemon on the $kind store, with an SDK registered', ({ kind, skip }) => {
  const exporter = new InMemorySpanExporter();
  const provider = new TracerProvider({ spanProcessors: [new SimpleSpanProcessor({ exporter })] });
  beforeAll(() => {
    trace.setGlobalTracerProvider(provider);
    propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  });
  const t = useDaemon(kind, { skip, key: 'sk-otel-daemon-0001' });
  afterAll(async () => {
    await provider.shutdown();
    trace.disable();
    propagation.disable();
  });

  it.skipIf(skip)('records every step of a watch in one span (per process that polls it) with its watch id; the upstream saw its trace', async () => {
    t.sim.addRun({ threadId: 'thread_od', runId: 'run_od', timeline: [{ status: 'queued', durationMs: 150 }, { status: 'in_progress', durationMs: 250 }, { status: 'completed' }], start: 'first_request' });
    const created = (await (await fetch(`${t.base}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: 'thread_od', run_id: 'run_od' }) })).json()) as { id: string };
    await readSseEvents(`${t.base}/v1/events?run_id=run_od`, (events) => events.some((e) => e.type === 'run.completed'));
    const spans = exporter.getFinishedSpans().filter((s) => s.name === WATCH_SPAN && s.attributes['runwatch.watch.id'] === created.id);
    expect(spans.flatMap((s) => s.events.map((e) => e.name))).toEqual(['run.queued', 'run.in_progress', 'run.completed']);
    expect(spans.at(-1)!.attributes).toMatchObject({ 'runwatch.watch.outcome': 'finished', 'runwatch.status': 'completed', 'runwatch.run.id': 'run_od' });
    // one replica owns the watch from start to end: one span, however many steps
    expect(t.sim.retrieveCount('run_od')).toBeGreaterThan(1);
    expect(spans).toHaveLength(1);
    const traceIds = new Set(spans.map((s) => s.spanContext().traceId));
    const sent = t.sim.requests('run_od').map((r) => TRACEPARENT.exec(r.headers.traceparent as string)?.[1]);
    expect(sent.every((id) => id !== undefined && traceIds.has(id))).toBe(true);
  });
});
