import { mkdtempSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { callbackAllowed } from '../src/daemon/api.js';
import { loadConfig } from '../src/daemon/config.js';
import { Daemon } from '../src/daemon/daemon.js';
import type { WatchEvent } from '../src/events.js';
import type { RunningSimulator } from '../src/simulator.js';
import { startSimulator } from '../src/simulator.js';
import type { Frame } from './sse.js';
import { readFrames as readSseFrames, readSseEvents } from './sse.js';

const TOKEN = 'control-token-for-tests';
let sim: RunningSimulator;
let daemon: Daemon;
let base: string;

async function api(method: string, route: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: Record<string, unknown>; headers: Headers }> {
  const init: RequestInit = { method, headers: { authorization: `Bearer ${TOKEN}`, ...headers } };
  if (body !== undefined) {
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
    (init.headers as Record<string, string>)['content-type'] ??= 'application/json';
  }
  const res = await fetch(`${base}${route}`, init);
  const text = await res.text();
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    json = { text };
  }
  return { status: res.status, json, headers: res.headers };
}

beforeAll(async () => {
  sim = await startSimulator({ apiKey: 'sk-daemon-test' });
  const dataDir = mkdtempSync(path.join(tmpdir(), 'runwatch-api-'));
  const config = loadConfig({
    overrides: [
      ['daemon.port', '0'],
      ['daemon.dataDir', JSON.stringify(dataDir)],
      ['daemon.maxBodyBytes', '2048'],
      ['daemon.callbackHosts', '["hooks.example.com","*.internal.example"]'],
      ['daemon.stallThresholdMs', '300'],
      ['sinks.stdout.enabled', 'false'],
      ['watch.provider', '"openai"'],
      ['watch.baseUrl', JSON.stringify(sim.baseUrl)],
      ['watch.policy', '{"jitter":0,"intervals":{"queued":{"baseMs":100,"capMs":100},"in_progress":{"baseMs":100,"capMs":100}}}'],
    ],
  });
  daemon = await Daemon.start(config, { credentials: { apiKey: 'sk-daemon-test' }, controlToken: TOKEN }, pino({ level: 'silent' }));
  base = `http://127.0.0.1:${daemon.address.port}`;
});
afterAll(async () => {
  await daemon.shutdown();
  await sim.close();
});

describe('control API: auth and routes', () => {
  it('leaves health checks open and guards everything else', async () => {
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    expect((await fetch(`${base}/readyz`)).status).toBe(200);
    for (const route of ['/v1/watches', '/metrics', '/v1/events']) {
      const none = await fetch(`${base}${route}`);
      expect(none.status).toBe(401);
      expect(none.headers.get('www-authenticate')).toBe('Bearer');
      expect((await fetch(`${base}${route}`, { headers: { authorization: `Bearer ${TOKEN}x` } })).status).toBe(401);
    }
    const body = (await (await fetch(`${base}/v1/watches`)).json()) as { error: { code: string } };
    expect(body.error.code).toBe('unauthorized');
  });

  it('answers unknown routes with 404 and wrong methods with 405 and Allow', async () => {
    expect((await api('GET', '/v2/nothing')).json).toMatchObject({ error: { code: 'not_found' } });
    const wrong = await api('PUT', '/v1/watches', {});
    expect(wrong.status).toBe(405);
    expect(wrong.headers.get('allow')).toBe('GET, POST');
    expect((await api('POST', '/v1/watches/w_1', {})).status).toBe(405);
    expect((await api('GET', '/v1/watches/%E0%A4%A')).status).toBe(400);
  });
});

describe('control API: POST /v1/watches', () => {
  it.each([
    ['invalid JSON', '{"thread_id":', 400, 'invalid_json'],
    ['an array', '[]', 400, 'invalid_request'],
    ['a missing run_id', { thread_id: 'thread_1' }, 400, 'invalid_request'],
    ['a number for thread_id', { thread_id: 5, run_id: 'run_1' }, 400, 'invalid_request'],
    ['a run and a response at once', { thread_id: 'thread_1', run_id: 'run_1', response_id: 'resp_1' }, 400, 'invalid_request'],
    ['a path in a response_id', { response_id: '../responses' }, 400, 'invalid_id'],
    ['no target at all', { metadata: { a: 'b' } }, 400, 'invalid_request'],
    ['an unknown field', { thread_id: 'thread_1', run_id: 'run_1', extra: true }, 400, 'invalid_request'],
    ['a path in an id', { thread_id: '../assistants', run_id: 'run_1' }, 400, 'invalid_id'],
    ['metadata that is not strings', { thread_id: 'thread_1', run_id: 'run_1', metadata: { a: 1 } }, 400, 'invalid_request'],
    ['a callback to an unlisted host', { thread_id: 'thread_1', run_id: 'run_1', callback_url: 'http://169.254.169.254/latest' }, 400, 'callback_not_allowed'],
    ['a body over the limit', { thread_id: 'thread_1', run_id: 'run_1', metadata: { big: 'x'.repeat(500), b2: 'x'.repeat(500), b3: 'x'.repeat(500), b4: 'x'.repeat(500), b5: 'x'.repeat(500) } }, 413, 'body_too_large'],
  ])('rejects %s', async (_, body, status, code) => {
    const res = await api('POST', '/v1/watches', body);
    expect(res.status).toBe(status);
    expect(res.json).toMatchObject({ error: { code } });
    expect(typeof (res.json.error as { message: string }).message).toBe('string');
  });

  it('rejects a body without a JSON content type', async () => {
    const res = await api('POST', '/v1/watches', '{"thread_id":"t","run_id":"r"}', { 'content-type': 'text/plain' });
    expect(res.status).toBe(415);
  });

  it('creates a watch once and returns the same one for the same run', async () => {
    sim.addRun({ threadId: 'thread_api1', runId: 'run_api1', timeline: [{ status: 'queued', durationMs: 150 }, { status: 'in_progress', durationMs: 300 }, { status: 'completed' }], start: 'first_request' });
    const first = await api('POST', '/v1/watches', { thread_id: 'thread_api1', run_id: 'run_api1', metadata: { team: 'search' }, callback_url: 'https://hooks.example.com/runwatch' });
    expect(first.status).toBe(201);
    expect(first.headers.get('location')).toBe(`/v1/watches/${String(first.json.id)}`);
    expect(first.json).toMatchObject({ thread_id: 'thread_api1', run_id: 'run_api1', state: 'active', metadata: { team: 'search' } });
    const again = await api('POST', '/v1/watches', { thread_id: 'thread_api1', run_id: 'run_api1' });
    expect(again.status).toBe(200);
    expect(again.json.id).toBe(first.json.id);
  });

  it('checks callback hosts against the allow-list', () => {
    expect(callbackAllowed('https://hooks.example.com/x', ['hooks.example.com'])).toBe(true);
    expect(callbackAllowed('https://a.internal.example/x', ['*.internal.example'])).toBe(true);
    expect(callbackAllowed('https://internal.example.evil.com/x', ['*.internal.example'])).toBe(false);
    expect(callbackAllowed('http://127.0.0.1:9000/x', ['127.0.0.1:9000'])).toBe(true);
    expect(callbackAllowed('http://127.0.0.1:9001/x', ['127.0.0.1:9000'])).toBe(false);
    expect(callbackAllowed('file:///etc/passwd', ['hooks.example.com'])).toBe(false);
    expect(callbackAllowed('https://user:pw@hooks.example.com/', ['hooks.example.com'])).toBe(false);
  });
});

describe('control API: reading and deleting', () => {
  it('shows a watch reaching its terminal status, lists and pages', async () => {
    sim.addRun({ threadId: 'thread_api2', runId: 'run_api2', timeline: [{ status: 'in_progress', durationMs: 200 }, { status: 'failed' }], start: 'first_request' });
    const created = await api('POST', '/v1/watches', { thread_id: 'thread_api2', run_id: 'run_api2' });
    const id = String(created.json.id);
    await waitForState(id, 'finished');
    const watch = await api('GET', `/v1/watches/${id}`);
    expect(watch.json).toMatchObject({ state: 'finished', status: 'failed', seq: 2, next_poll_at: null, last_snapshot: { status: 'failed' } });
    const page = await api('GET', '/v1/watches?limit=1');
    expect((page.json.data as unknown[]).length).toBe(1);
    expect(typeof page.json.next_after).toBe('string');
    const next = await api('GET', `/v1/watches?limit=1&after=${String(page.json.next_after)}`);
    expect((next.json.data as Array<{ id: string }>)[0]?.id).not.toBe((page.json.data as Array<{ id: string }>)[0]?.id);
    const finished = await api('GET', '/v1/watches?state=finished');
    expect((finished.json.data as Array<{ id: string }>).map((w) => w.id)).toContain(id);
    expect((await api('GET', '/v1/watches?state=bogus')).status).toBe(400);
    expect((await api('GET', '/v1/watches?limit=0')).status).toBe(400);
    expect((await api('GET', '/v1/watches/w_doesnotexist')).status).toBe(404);
  });

  it('stops a watch on DELETE and records why', async () => {
    sim.addRun({ threadId: 'thread_api3', runId: 'run_api3', timeline: [{ status: 'in_progress' }] });
    const id = String((await api('POST', '/v1/watches', { thread_id: 'thread_api3', run_id: 'run_api3' })).json.id);
    const deleted = await api('DELETE', `/v1/watches/${id}`);
    expect(deleted.json).toMatchObject({ state: 'deleted', error: { code: 'aborted' } });
    const requests = sim.requests('run_api3').length;
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(sim.requests('run_api3')).toHaveLength(requests);
  });

  it('emits run.stalled once for a run stuck in one status', async () => {
    sim.addRun({ threadId: 'thread_api4', runId: 'run_api4', timeline: [{ status: 'queued' }] });
    const id = String((await api('POST', '/v1/watches', { thread_id: 'thread_api4', run_id: 'run_api4' })).json.id);
    const events = await readEvents('?run_id=run_api4', (list) => list.some((e) => e.type === 'run.stalled'));
    const stalled = events.filter((e) => e.type === 'run.stalled');
    expect(stalled).toHaveLength(1);
    expect(stalled[0]).toMatchObject({ from: 'queued', to: 'queued', seq: 2 });
    await api('DELETE', `/v1/watches/${id}`);
  });
});

describe('control API: cancel', () => {
  it('cancels the run of an active watch: 202, run.cancel_requested recorded, then cancelled; 409 once it ended', async () => {
    sim.addRun({ threadId: 'thread_api5', runId: 'run_api5', timeline: [{ status: 'in_progress' }] });
    const id = String((await api('POST', '/v1/watches', { thread_id: 'thread_api5', run_id: 'run_api5' })).json.id);
    await readEvents('?run_id=run_api5', (list) => list.some((e) => e.type === 'run.in_progress'));
    const accepted = await api('POST', `/v1/watches/${id}/cancel`);
    expect(accepted.status).toBe(202);
    expect(accepted.json).toMatchObject({ id, state: 'active' });
    await waitForState(id, 'finished');
    const events = await readEvents('?run_id=run_api5', (list) => list.some((e) => e.type === 'run.cancelled'));
    expect(events.map((e) => e.type)).toEqual(['run.in_progress', 'run.cancel_requested', 'run.cancelling', 'run.cancelled']);
    expect(sim.requests('run_api5').filter((r) => r.method === 'POST')).toHaveLength(1);
    const again = await api('POST', `/v1/watches/${id}/cancel`);
    expect(again.status).toBe(409);
    expect(again.json).toMatchObject({ error: { code: 'conflict' } });
    expect((await api('POST', '/v1/watches/w_nope/cancel')).status).toBe(404);
    expect((await api('GET', `/v1/watches/${id}/cancel`)).status).toBe(405);
  });

  it('answers 502 cancel_refused with the provider message when the provider refuses', async () => {
    sim.addRun({ threadId: 'thread_api6', runId: 'run_api6', timeline: [{ status: 'cancelling' }] });
    const id = String((await api('POST', '/v1/watches', { thread_id: 'thread_api6', run_id: 'run_api6' })).json.id);
    await readEvents('?run_id=run_api6', (list) => list.some((e) => e.type === 'run.cancelling'));
    const refused = await api('POST', `/v1/watches/${id}/cancel`);
    expect(refused.status).toBe(502);
    expect(refused.json).toMatchObject({ error: { code: 'cancel_refused', message: expect.stringContaining("Cannot cancel run with status 'cancelling'") as unknown } });
    const events = await readEvents('?run_id=run_api6', (list) => list.some((e) => e.type === 'run.action_failed'));
    expect(events.at(-1)).toMatchObject({ type: 'run.action_failed', reason: 'cancel', error: { code: 'bad_request', http_status: 400 } });
    await api('DELETE', `/v1/watches/${id}`);
  });
});

describe('control API: background responses', () => {
  it('watches a response to its terminal status: 201 once, its events filtered by response_id, cancel over the API', async () => {
    sim.addResponse({ responseId: 'resp_api1', timeline: [{ status: 'queued', durationMs: 150 }, { status: 'in_progress', durationMs: 250 }, { status: 'completed' }], start: 'first_request' });
    const first = await api('POST', '/v1/watches', { response_id: 'resp_api1', metadata: { job: 'report' } });
    expect(first.status).toBe(201);
    expect(first.json).toMatchObject({ kind: 'response', response_id: 'resp_api1', state: 'active', metadata: { job: 'report' } });
    expect(first.json).not.toHaveProperty('run_id');
    expect((await api('POST', '/v1/watches', { response_id: 'resp_api1' })).json).toMatchObject({ id: first.json.id });
    const id = String(first.json.id);
    await waitForState(id, 'finished');
    expect((await api('GET', `/v1/watches/${id}`)).json).toMatchObject({ kind: 'response', status: 'completed', last_snapshot: { object: 'response', status: 'completed' } });
    const events = await readEvents('?response_id=resp_api1', (list) => list.some((e) => e.type === 'response.completed'));
    expect(events.map((e) => e.type)).toEqual(['response.queued', 'response.in_progress', 'response.completed']);
    expect(events[2]).toMatchObject({ response_id: 'resp_api1', from: 'in_progress', to: 'completed', seq: 3, watch_id: id });

    sim.addResponse({ responseId: 'resp_api2', timeline: [{ status: 'in_progress' }] });
    const second = String((await api('POST', '/v1/watches', { response_id: 'resp_api2' })).json.id);
    await readEvents('?response_id=resp_api2', (list) => list.some((e) => e.type === 'response.in_progress'));
    expect((await api('POST', `/v1/watches/${second}/cancel`)).status).toBe(202);
    await waitForState(second, 'finished');
    const cancelled = await readEvents('?response_id=resp_api2', (list) => list.some((e) => e.type === 'response.cancelled'));
    expect(cancelled.map((e) => e.type)).toEqual(['response.in_progress', 'response.cancel_requested', 'response.cancelled']);
    expect((await api('GET', '/v1/events?response_id=../x')).status).toBe(400);
  });
});

describe('control API: SSE', () => {
  it('resumes with Last-Event-ID and misses nothing', async () => {
    // each step shorter than the 300 ms stall threshold, so no run.stalled in between
    sim.addRun({ threadId: 'thread_sse', runId: 'run_sse', timeline: [{ status: 'queued', durationMs: 150 }, { status: 'in_progress', durationMs: 250 }, { status: 'completed' }], start: 'first_request' });
    await api('POST', '/v1/watches', { thread_id: 'thread_sse', run_id: 'run_sse' });
    // read the first event only, then drop the connection
    const first = await readFrames('?run_id=run_sse', (frames) => frames.length >= 1);
    const lastId = first[0]!.id;
    const rest = await readFrames('?run_id=run_sse', (frames) => frames.some((f) => f.event === 'run.completed'), { 'last-event-id': lastId });
    const all = await readFrames('?run_id=run_sse', (frames) => frames.some((f) => f.event === 'run.completed'));
    expect([first[0]!, ...rest].map((f) => f.event)).toEqual(all.map((f) => f.event));
    expect(all.map((f) => f.event)).toEqual(['run.queued', 'run.in_progress', 'run.completed']);
    expect(Number(rest[0]!.id)).toBeGreaterThan(Number(lastId));
    expect((await api('GET', '/v1/events?last_event_id=abc')).status).toBe(400);
    expect((await api('GET', '/v1/events?run_id=../x')).status).toBe(400);
  });
});

describe('control API: metrics', () => {
  it('exposes the documented metrics', async () => {
    const res = await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
    const text = await res.text();
    for (const name of [
      'runwatch_active_watches',
      'runwatch_polls_total',
      'runwatch_poll_latency_seconds',
      'runwatch_poll_lateness_seconds',
      'runwatch_transitions_total',
      'runwatch_sink_deliveries_total',
      'runwatch_outbox_backlog',
      'runwatch_dead_letters',
      'runwatch_budget_requests_per_second',
      'runwatch_budget_in_flight',
    ]) {
      expect(text).toContain(`# TYPE ${name}`);
    }
    expect(text).toMatch(/runwatch_polls_total\{outcome="ok"\} \d+/);
  });
});

describe('control API: the web view and the fleet', () => {
  it('serves the page and its files without a token, with a strict CSP and nosniff; nothing else under /ui', async () => {
    const redirect = await fetch(`${base}/ui`, { redirect: 'manual' });
    expect(redirect.status).toBe(308);
    expect(redirect.headers.get('location')).toBe('/ui/');
    for (const [route, type] of [['/ui/', 'text/html'], ['/ui/ui.js', 'text/javascript'], ['/ui/ui.css', 'text/css']] as const) {
      const res = await fetch(`${base}${route}`);
      expect(res.status, route).toBe(200);
      expect(res.headers.get('content-type')).toContain(type);
      expect(res.headers.get('x-content-type-options')).toBe('nosniff');
      const csp = res.headers.get('content-security-policy') ?? '';
      expect(csp).toContain("default-src 'none'");
      expect(csp).toContain("script-src 'self'");
      expect(csp).not.toContain('unsafe');
    }
    const html = await (await fetch(`${base}/ui/`)).text();
    // no inline script or style: every <script> has a src, no style attribute or element
    expect(html.match(/<script\b[^>]*>/g)).toEqual(['<script type="module" src="ui.js">']);
    expect(html).not.toMatch(/\sstyle=|<style|\son[a-z]+=/i);
    expect((await fetch(`${base}/ui/ui.js`, { method: 'HEAD' })).status).toBe(200);
    for (const route of ['/ui/nothing.js', '/ui/index.html/x', '/ui/constructor', '/ui/__proto__']) {
      expect((await fetch(`${base}${route}`)).status, route).toBe(404);
    }
    // a path that climbs out of /ui is another route (the URL is normalised first): guarded, never a file
    for (const route of ['/ui/../package.json', '/ui/%2e%2e/package.json', '/ui/..%2fpackage.json']) expect(await rawRequest('GET', route, undefined, 'text/plain'), route).not.toBe(200);
    expect((await fetch(`${base}/ui/`, { method: 'POST' })).status).toBe(405);
  });

  it('answers GET /v1/fleet with the token only: status counts, polls/s, 429 share, budget, outboxes, the log position', async () => {
    expect((await fetch(`${base}/v1/fleet`)).status).toBe(401);
    sim.addRun({ threadId: 'thread_fleet', runId: 'run_fleet', timeline: [{ status: 'in_progress' }] });
    const id = String((await api('POST', '/v1/watches', { thread_id: 'thread_fleet', run_id: 'run_fleet' })).json.id);
    await readEvents('?run_id=run_fleet', (list) => list.some((e) => e.type === 'run.in_progress'));
    const fleet = await api('GET', '/v1/fleet');
    expect(fleet.status).toBe(200);
    expect(fleet.json).toMatchObject({ throttled_share: 0, budget: { rate_per_second: expect.any(Number) as unknown, in_flight: expect.any(Number) as unknown, queued: expect.any(Number) as unknown } });
    expect(fleet.json.outbox).toEqual([{ sink: 'callback', pending: expect.any(Number) as unknown, dead: expect.any(Number) as unknown }]);
    expect((fleet.json.active_by_status as Record<string, number>).in_progress).toBeGreaterThanOrEqual(1);
    expect(fleet.json.polls_per_second).toBeGreaterThanOrEqual(0);
    // one process owns every watch: no replica panel
    expect(fleet.json).not.toHaveProperty('replicas');
    // the position is the log's last: a stream resumed from it gets only later events
    const frames = await readSseFrames(`${base}/v1/events`, (list) => list.length > 0, { authorization: `Bearer ${TOKEN}` });
    expect(Number(frames.at(-1)!.id)).toBeGreaterThanOrEqual(Number(fleet.json.last_event_pos));
    expect(Number(fleet.json.last_event_pos)).toBeGreaterThan(0);
    await api('DELETE', `/v1/watches/${id}`);
  });

  it('lists by status, by id and needing attention first, with what the table shows per watch', async () => {
    sim.addRun({ threadId: 'thread_tbl', runId: 'run_tbl_wait', timeline: [{ status: 'requires_action' }] });
    sim.addRun({ threadId: 'thread_tbl', runId: 'run_tbl_busy', timeline: [{ status: 'in_progress' }] });
    const busy = String((await api('POST', '/v1/watches', { thread_id: 'thread_tbl', run_id: 'run_tbl_busy' })).json.id);
    const waiting = String((await api('POST', '/v1/watches', { thread_id: 'thread_tbl', run_id: 'run_tbl_wait' })).json.id);
    await readEvents('?run_id=run_tbl_wait', (list) => list.some((e) => e.type === 'run.requires_action'));
    await readEvents('?run_id=run_tbl_busy', (list) => list.some((e) => e.type === 'run.in_progress'));
    const listed = await api('GET', '/v1/watches?q=run_tbl&order=attention&state=active');
    const data = listed.json.data as Array<Record<string, unknown>>;
    expect(data.map((w) => w.id)).toEqual([waiting, busy]);
    expect(data[0]).toMatchObject({ status: 'requires_action', stalled: false, last_error: null, sink_backlog: 0, status_since: expect.stringMatching(/^\d{4}-/) as unknown });
    expect(data[0]!.polls).toBeGreaterThanOrEqual(1);
    const byStatus = await api('GET', '/v1/watches?q=thread_tbl&status=in_progress');
    expect((byStatus.json.data as Array<{ id: string }>).map((w) => w.id)).toEqual([busy]);
    for (const bad of ['order=newest', 'status=In%20Progress', 'q=%3Cscript%3E']) expect((await api('GET', `/v1/watches?${bad}`)).status, bad).toBe(400);
    await api('DELETE', `/v1/watches/${busy}`);
    await api('DELETE', `/v1/watches/${waiting}`);
  });
});

describe('control API: fuzz', () => {
  it('never answers a random request with a 5xx', async () => {
    let seed = 7;
    const random = (): number => ((seed = (seed * 48271) % 2147483647) - 1) / 2147483646;
    const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
    const junk = (n: number): string => Array.from({ length: n }, () => String.fromCharCode(Math.floor(random() * 0x7e) + 1)).join('');
    const paths = ['/v1/watches', '/v1/watches/', `/v1/watches/${junk(5)}`, '/v1/events', '/metrics', '/healthz', '/', `/${junk(8)}`, '/v1/watches?limit=-1', '/v1/watches?after=%00', '/v1/events?last_event_id=99999999999999999999', '//v1/watches', '/v1/watches/%2e%2e', '/ui', '/ui/', `/ui/${junk(6)}`, '/ui/%2e%2e/package.json', '/v1/fleet', '/v1/watches?order=attention&q=%00', `/v1/watches?status=${junk(4)}&order=${junk(3)}`];
    const bodies = [
      () => junk(Math.floor(random() * 200)),
      () => JSON.stringify({ thread_id: junk(3), run_id: junk(3) }),
      () => JSON.stringify({ thread_id: 'thread_f', run_id: `run_${Math.floor(random() * 5)}`, metadata: { [junk(4)]: junk(4) } }),
      () => JSON.stringify([null, 1, 'x']),
      () => JSON.stringify({ thread_id: null, run_id: {}, callback_url: junk(10) }),
      () => 'null',
      () => '"just a string"',
      () => JSON.stringify({ thread_id: 'thread_f', run_id: 'run_f', callback_url: `http://${junk(6)}` }),
    ];
    let fives = 0;
    for (let i = 0; i < 400; i++) {
      const method = pick(['GET', 'POST', 'DELETE', 'PUT', 'PATCH', 'HEAD', 'OPTIONS']);
      const withBody = method !== 'GET' && method !== 'HEAD';
      const status = await rawRequest(method, pick(paths), withBody ? pick(bodies)() : undefined, pick(['application/json', 'text/plain', 'application/json; charset=utf-8']));
      if (status >= 500) fives += 1;
    }
    expect(fives).toBe(0);
    const clean = await api('DELETE', '/v1/watches?x=1');
    expect(clean.status).toBe(405);
  });
});

async function waitForState(id: string, state: string, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  // the SSE stream tells when something changed; poll the watch after each event
  while (Date.now() < until) {
    if ((await api('GET', `/v1/watches/${id}`)).json.state === state) return;
    await readFrames('', () => true, {}, 500).catch(() => undefined);
  }
  throw new Error(`watch ${id} did not reach ${state}`);
}

/** Reads SSE frames of this file's daemon until `done` holds. */
function readFrames(query: string, done: (frames: Frame[]) => boolean, headers: Record<string, string> = {}, timeoutMs = 15_000): Promise<Frame[]> {
  return readSseFrames(`${base}/v1/events${query}`, done, { authorization: `Bearer ${TOKEN}`, ...headers }, timeoutMs);
}

function readEvents(query: string, done: (events: WatchEvent[]) => boolean): Promise<WatchEvent[]> {
  return readSseEvents(`${base}/v1/events${query}`, done, { authorization: `Bearer ${TOKEN}` });
}

function rawRequest(method: string, route: string, body: string | undefined, contentType: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${base}${route}`, { method, headers: { authorization: `Bearer ${TOKEN}`, 'content-type': contentType } }, (res) => {
      res.resume();
      // SSE responses stay open: the status is all the fuzz needs
      req.destroy();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** One POST of `body` with a raw http.request, as a client that keeps writing while the server answers: the status, or the socket error. */
function rawPost(route: string, body: Buffer, headers: Record<string, string>, chunked = false): Promise<number | string> {
  return new Promise((resolve) => {
    const url = new URL(route, base);
    const length: Record<string, string> = chunked ? {} : { 'content-length': String(body.length) };
    const req = http.request({ host: url.hostname, port: url.port, path: url.pathname, method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, ...length, ...headers } }, (res) => {
      res.resume();
      res.once('end', () => resolve(res.statusCode ?? 0));
      res.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? 'error'));
    });
    req.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? 'error'));
    if (!chunked) {
      req.end(body);
      return;
    }
    // a slow streaming client: 64 KiB at a time, a millisecond apart
    let offset = 0;
    const next = (): void => {
      if (offset >= body.length) return void req.end();
      const piece = body.subarray(offset, (offset += 65_536));
      if (req.write(piece)) setTimeout(next, 1);
      else req.once('drain', next);
    };
    next();
  });
}

/**
 * A client that sends the whole request, at its own pace, before it reads anything (as many
 * do): a server that closes with the body unread resets the connection and the answer is lost.
 */
function sendAllThenRead(route: string, body: Buffer, contentType: string): Promise<number | string> {
  return new Promise((resolve) => {
    const url = new URL(route, base);
    const socket = net.connect(Number(url.port), url.hostname);
    const chunks: Buffer[] = [];
    socket.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? 'error'));
    // the answer's status line is enough (the connection may stay open for the next request)
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      const status = /^HTTP\/1\.1 (\d{3})/.exec(Buffer.concat(chunks).toString('latin1'));
      if (status) {
        resolve(Number(status[1]));
        socket.destroy();
      }
    });
    socket.once('end', () => resolve('no answer'));
    socket.pause();
    const head = `POST ${url.pathname} HTTP/1.1\r\nhost: ${url.host}\r\nauthorization: Bearer ${TOKEN}\r\ncontent-type: ${contentType}\r\ncontent-length: ${body.length}\r\n\r\n`;
    socket.write(head);
    // 64 KiB a millisecond apart, reading only once everything is sent: a server that closes early is still being written to
    let offset = 0;
    const next = (): void => {
      if (socket.destroyed) return;
      if (offset >= body.length) return void socket.resume();
      const piece = body.subarray(offset, (offset += 65_536));
      if (socket.write(piece)) setTimeout(next, 1);
      else socket.once('drain', next);
    };
    next();
  });
}

describe('control API: oversized bodies', () => {
  it('answers 413 (and 415) to a 10 MB body, 50 times in a row, without resetting the connection', async () => {
    const big = Buffer.alloc(10 * 1024 * 1024, 0x61);
    for (let i = 0; i < 50; i += 1) {
      expect(await rawPost('/v1/watches', big, { 'content-type': 'application/json' }), `try ${i}`).toBe(413);
    }
    for (let i = 0; i < 5; i += 1) {
      expect(await rawPost('/v1/watches', big, { 'content-type': 'text/plain' }), `try ${i}`).toBe(415);
    }
    for (let i = 0; i < 10; i += 1) {
      expect(await sendAllThenRead('/v1/watches', big, 'application/json'), `send-then-read try ${i}`).toBe(413);
    }
    // without a content-length the limit is found while reading
    for (let i = 0; i < 20; i += 1) {
      expect(await rawPost('/v1/watches', big, { 'content-type': 'application/json' }, true), `chunked try ${i}`).toBe(413);
    }
  }, 120_000);
});
