// The daemon's OTLP export, as OpenTelemetry's environment variables ask for it: spans reach a
// collector (a local HTTP server here) over http/protobuf, at the latest when the daemon stops.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { telemetrySettings } from '../src/daemon/telemetry.js';
import { ConfigError } from '../src/errors.js';
import { useDaemon } from './daemons.js';
import { readSseEvents } from './sse.js';

const KEY = 'sk-otel-daemon-secret-0002';

interface Received {
  readonly method: string;
  readonly path: string;
  readonly contentType: string;
  readonly body: Buffer;
}

/** An OTLP/HTTP collector that keeps what it is sent and answers 200. */
function startCollector(): Promise<{ server: http.Server; port: number; received: Received[] }> {
  const received: Received[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const raw = Buffer.concat(chunks);
      received.push({ method: req.method ?? '', path: req.url ?? '', contentType: req.headers['content-type'] ?? '', body: req.headers['content-encoding'] === 'gzip' ? gunzipSync(raw) : raw });
      res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end();
    });
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve({ server, port: (server.address() as AddressInfo).port, received })),
  );
}

describe('telemetrySettings: what OpenTelemetry’s environment variables ask', () => {
  it('exports only when an OTLP endpoint is set, and not when the SDK or the exporter is turned off', () => {
    expect(telemetrySettings({})).toBeUndefined();
    expect(telemetrySettings({ OTEL_EXPORTER_OTLP_ENDPOINT: ' ' })).toBeUndefined();
    expect(telemetrySettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_SDK_DISABLED: 'true' })).toBeUndefined();
    expect(telemetrySettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_TRACES_EXPORTER: 'none' })).toBeUndefined();
    expect(telemetrySettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318/' })).toEqual({ url: 'http://c:4318/v1/traces', sampler: { name: 'parentbased_always_on', ratio: 1 }, propagators: ['tracecontext', 'baggage'], batch: {} });
    expect(telemetrySettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'https://t.example/traces' })?.url).toBe('https://t.example/traces');
    expect(telemetrySettings({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://c:4318/v1/traces', OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.25', OTEL_PROPAGATORS: 'tracecontext', OTEL_BSP_SCHEDULE_DELAY: '200' })).toMatchObject({
      sampler: { name: 'parentbased_traceidratio', ratio: 0.25 },
      propagators: ['tracecontext'],
      batch: { scheduledDelayMillis: 200 },
    });
  });

  it('refuses what runwatch cannot do, naming the variable', () => {
    const endpoint = { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' };
    for (const [env, message] of [
      [{ ...endpoint, OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }, /OTEL_EXPORTER_OTLP_PROTOCOL "grpc" is not supported/],
      [{ ...endpoint, OTEL_TRACES_EXPORTER: 'zipkin' }, /OTEL_TRACES_EXPORTER "zipkin"/],
      [{ ...endpoint, OTEL_TRACES_SAMPLER: 'sometimes' }, /OTEL_TRACES_SAMPLER "sometimes"/],
      [{ ...endpoint, OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '2' }, /OTEL_TRACES_SAMPLER_ARG "2"/],
      [{ ...endpoint, OTEL_PROPAGATORS: 'b3' }, /OTEL_PROPAGATORS "b3"/],
      [{ ...endpoint, OTEL_BSP_MAX_QUEUE_SIZE: '-1' }, /OTEL_BSP_MAX_QUEUE_SIZE "-1"/],
      [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318' }, /invalid OTEL_EXPORTER_OTLP_ENDPOINT/],
    ] as const) {
      expect(() => telemetrySettings(env), JSON.stringify(env)).toThrow(ConfigError);
      expect(() => telemetrySettings(env)).toThrow(message);
    }
  });
});

describe('a daemon with OTEL_EXPORTER_OTLP_ENDPOINT set', () => {
  let collector: Awaited<ReturnType<typeof startCollector>>;
  const saved = { ...process.env };
  // before the daemon starts (useDaemon's own beforeAll comes after this one)
  beforeAll(async () => {
    collector = await startCollector();
    process.env.OTEL_EXPORTER_OTLP_ENDPOINT = `http://127.0.0.1:${collector.port}`;
    process.env.OTEL_RESOURCE_ATTRIBUTES = 'deployment.environment.name=otel-test';
  });
  const t = useDaemon('memory', { skip: false, key: KEY });
  afterAll(async () => {
    for (const name of ['OTEL_EXPORTER_OTLP_ENDPOINT', 'OTEL_RESOURCE_ATTRIBUTES']) {
      if (saved[name] === undefined) delete process.env[name];
      else process.env[name] = saved[name];
    }
    collector.server.closeAllConnections();
    await new Promise((resolve) => collector.server.close(resolve));
  });

  it('sends its spans to the collector over OTLP http/protobuf, flushed when it stops; no secret in them', async () => {
    t.sim.addRun({ threadId: 'thread_otlp', runId: 'run_otlp', timeline: [{ status: 'queued', durationMs: 100 }, { status: 'completed' }], start: 'first_request' });
    const created = (await (await fetch(`${t.base}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: 'thread_otlp', run_id: 'run_otlp' }) })).json()) as { id: string };
    await readSseEvents(`${t.base}/v1/events?run_id=run_otlp`, (events) => events.some((e) => e.type === 'run.completed'));
    // the batch waits 5 s by default: what is there once the shutdown is over was flushed by it
    await t.stop();
    const exports = collector.received.filter((r) => r.method === 'POST' && r.path === '/v1/traces');
    expect(exports.length).toBeGreaterThan(0);
    expect(exports.every((r) => r.contentType === 'application/x-protobuf')).toBe(true);
    // protobuf keeps strings as they are and ids as raw bytes
    const body = Buffer.concat(exports.map((r) => r.body));
    for (const text of ['runwatch.watch', created.id, 'run.completed', 'run_otlp', 'service.name', 'runwatch', 'deployment.environment.name', 'otel-test']) expect(body.includes(text), text).toBe(true);
    const traceparent = t.sim.requests('run_otlp')[0]?.headers.traceparent as string;
    expect(traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    expect(body.includes(Buffer.from(traceparent.split('-')[1]!, 'hex'))).toBe(true);
    expect(body.includes(KEY)).toBe(false);
  });
});
