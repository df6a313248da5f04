import http from 'node:http';
import { describe, expect, it } from 'vitest';
import { requireRedis } from './redis.js';
import { readSseEvents } from './sse.js';
import { storeKinds, useDaemon } from './daemons.js';

const KEY = 'sk-daemon-auth';
const TOKEN = 'control-token-auth-tests';
const redisAvailable = await requireRedis();


/** Every method a client may send, listed or not by the API. */
const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;

/** Credentials that must not get in: none, a wrong token, the right token without the Bearer scheme, an empty Bearer. */
const INTRUDERS: ReadonlyArray<readonly [string, Record<string, string>]> = [
  ['no token', {}],
  ['a wrong token', { authorization: `Bearer ${TOKEN}x` }],
  ['a prefix of the token', { authorization: `Bearer ${TOKEN.slice(0, -1)}` }],
  ['the token without Bearer', { authorization: TOKEN }],
  ['an empty Bearer', { authorization: 'Bearer ' }],
];

interface Answer {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: string;
}

/**
 * Sends one request with any method. A body is sent with POST, PUT and PATCH (a valid new
 * watch, so a request that got through would create one). An answer that turns out to be an
 * event stream is cut short (its status is what matters).
 */
function request(base: string, method: string, route: string, headers: Record<string, string>, body?: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${base}${route}`, { method, headers: { ...headers, ...(body === undefined ? {} : { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) }) } }, (res) => {
      if (res.headers['content-type']?.startsWith('text/event-stream')) {
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: '' });
        req.destroy();
        return;
      }
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe.each(storeKinds(redisAvailable, ['memory', 'sqlite', 'redis']))('control API token with the $kind store', ({ kind, skip }) => {
  const tag = kind;
  const t = useDaemon(kind, { skip, key: KEY, secrets: { controlToken: TOKEN }, settings: () => [] });

  const authorized = { authorization: `Bearer ${TOKEN}` };

  it.skipIf(skip)('answers every method on every route 401 without the right token, and nothing changes', async () => {
    const runId = `run_${tag}_guarded`;
    const intruderRunId = `run_${tag}_intruder`;
    t.sim.addRun({ threadId: 'thread_auth', runId, timeline: [{ status: 'in_progress' }] });
    t.sim.addRun({ threadId: 'thread_auth', runId: intruderRunId, timeline: [{ status: 'in_progress' }] });
    const created = await request(t.base, 'POST', '/v1/watches', authorized, JSON.stringify({ thread_id: 'thread_auth', run_id: runId }));
    expect(created.status).toBe(201);
    const id = (JSON.parse(created.body) as { id: string }).id;
    await readSseEvents(`${t.base}/v1/events?run_id=${runId}`, (list) => list.length > 0, authorized);

    const routes = ['/v1/watches', `/v1/watches/${id}`, `/v1/watches/${id}/cancel`, '/v1/events', `/v1/events?run_id=${runId}`, '/metrics', '/v1/no-such-route'];
    const intruderBody = JSON.stringify({ thread_id: 'thread_auth', run_id: intruderRunId });
    const answers: string[] = [];
    const wrong: string[] = [];
    for (const route of routes) {
      for (const method of METHODS) {
        for (const [who, headers] of INTRUDERS) {
          const answer = await request(t.base, method, route, headers, ['POST', 'PUT', 'PATCH'].includes(method) ? intruderBody : undefined);
          const name = `${method} ${route} with ${who}`;
          answers.push(name);
          // HEAD answers carry no body
          const code = method === 'HEAD' ? 'unauthorized' : (JSON.parse(answer.body || '{}') as { error?: { code?: string } }).error?.code;
          if (answer.status !== 401 || code !== 'unauthorized' || answer.headers['www-authenticate'] !== 'Bearer') wrong.push(`${name}: ${answer.status} ${answer.body.slice(0, 100)}`);
        }
      }
    }
    expect(answers).toHaveLength(routes.length * METHODS.length * INTRUDERS.length);
    expect(wrong).toEqual([]);

    // nothing changed: no watch created, the watch still active, no cancel sent to the provider
    const list = await request(t.base, 'GET', '/v1/watches', authorized);
    expect(list.status).toBe(200);
    const watches = (JSON.parse(list.body) as { data: Array<{ id: string; run_id?: string }> }).data;
    expect(watches.map((w) => w.run_id)).toEqual([runId]);
    const watch = await request(t.base, 'GET', `/v1/watches/${id}`, authorized);
    expect(JSON.parse(watch.body)).toMatchObject({ id, state: 'active', status: 'in_progress', seq: 1 });
    expect(t.sim.requests(runId).filter((r) => r.method !== 'GET')).toEqual([]);
    expect(t.sim.requests(intruderRunId)).toEqual([]);
    const events = await readSseEvents(`${t.base}/v1/events?run_id=${runId}`, (all) => all.length > 0, authorized);
    expect(events.map((e) => e.type)).toEqual(['run.in_progress']);
  });

  it.skipIf(skip)('still serves the health checks without a token, and everything with it', async () => {
    expect((await request(t.base, 'GET', '/healthz', {})).status).toBe(200);
    expect((await request(t.base, 'GET', '/readyz', {})).status).toBe(200);
    expect((await request(t.base, 'GET', '/metrics', authorized)).status).toBe(200);
    expect((await request(t.base, 'GET', '/v1/watches', authorized)).status).toBe(200);
  });
});
