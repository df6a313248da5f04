import { getEventListeners } from 'node:events';
import http from 'node:http';
import { gzipSync } from 'node:zlib';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiClient, buildHeaders, classifyResponse, normalizeBaseUrl, parseHints, parseServerMessage, redactSecrets } from '../src/client.js';
import { ConfigError } from '../src/errors.js';
import { RESPONSE_KIND, RUN_KIND } from '../src/resource.js';

const NOW = Date.UTC(2026, 0, 1);
const RUN = JSON.stringify({ id: 'run_1', object: 'thread.run', status: 'in_progress' });
const classify = (status: number, headers: Record<string, string> = {}, body = '{}') => classifyResponse(RUN_KIND, status, headers, body, { nowMs: NOW });

describe('classifyResponse', () => {
  it('returns the snapshot of a 200 with a run object', () => {
    expect(classify(200, {}, RUN)).toMatchObject({ ok: true, snapshot: { id: 'run_1', status: 'in_progress' }, httpStatus: 200 });
  });

  it.each([
    ['not JSON', '<html>gateway</html>'],
    ['an array', '[]'],
    ['no status', '{"id":"run_1"}'],
    ['a status that is not a string', '{"id":"run_1","status":3}'],
    ['another object type', '{"id":"asst_1","object":"assistant","status":"completed"}'],
    ['a truncated body', '{"id":"run_1","status":"compl'],
  ])('treats a 200 with %s as transient', (_, body) => {
    expect(classify(200, {}, body)).toMatchObject({ ok: false, retryable: true, code: 'transient', httpStatus: 200 });
  });

  it.each([408, 409, 429, 500, 502, 503, 504, 529])('treats %i as transient', (status) => {
    expect(classify(status)).toMatchObject({ ok: false, retryable: true, code: 'transient', httpStatus: status });
  });

  it.each([
    [400, 'bad_request'],
    [401, 'unauthorized'],
    [403, 'forbidden'],
    [404, 'run_not_found'],
    [405, 'http_error'],
    [410, 'http_error'],
    [422, 'bad_request'],
  ])('treats %i as permanent %s', (status, code) => {
    expect(classify(status)).toMatchObject({ ok: false, retryable: false, code, httpStatus: status });
  });

  it('lets x-should-retry override the status both ways', () => {
    expect(classify(400, { 'x-should-retry': 'true' })).toMatchObject({ retryable: true, code: 'transient' });
    expect(classify(503, { 'x-should-retry': 'false' })).toMatchObject({ retryable: false, code: 'http_error' });
    expect(classify(200, { 'x-should-retry': 'true' }, RUN)).toMatchObject({ ok: true });
  });

  it('parses the OpenAI and the Portkey error shapes into the message', () => {
    const openai = classify(404, {}, JSON.stringify({ error: { message: "No run found with id 'run_x'.", type: 'invalid_request_error', code: null } }));
    expect(openai).toMatchObject({ message: "HTTP 404: No run found with id 'run_x'." });
    const portkey = classify(401, {}, JSON.stringify({ status: 'failure', message: 'Invalid API Key' }));
    expect(portkey).toMatchObject({ message: 'HTTP 401: Invalid API Key' });
    expect(classify(500, { 'x-request-id': 'req_42' }, 'oops')).toMatchObject({ message: 'HTTP 500', requestId: 'req_42' });
  });

  it('never lets an echoed key into the message', () => {
    const body = JSON.stringify({ error: { message: 'Incorrect API key provided: sk-abc***wxyz. Also sk-live-123456789.' } });
    const outcome = classifyResponse(RUN_KIND, 401, {}, body, { nowMs: NOW, secrets: ['sk-live-123456789'] });
    expect(outcome.ok).toBe(false);
    if (!outcome.ok) {
      expect(outcome.message).not.toContain('123456789');
      expect(outcome.message).not.toContain('abc***');
    }
  });
});

describe('parseHints', () => {
  it('reads retry-after-ms first, then retry-after seconds or date, and openai-poll-after-ms', () => {
    expect(parseHints({ 'retry-after-ms': '1500', 'retry-after': '9' }, NOW)).toEqual({ retryAfterMs: 1500, pollAfterMs: undefined });
    expect(parseHints({ 'retry-after': '2' }, NOW)).toEqual({ retryAfterMs: 2000, pollAfterMs: undefined });
    expect(parseHints({ 'retry-after': '1.5' }, NOW).retryAfterMs).toBe(1500);
    expect(parseHints({ 'retry-after': new Date(NOW + 7000).toUTCString() }, NOW).retryAfterMs).toBe(7000);
    expect(parseHints({ 'retry-after': new Date(NOW - 7000).toUTCString() }, NOW).retryAfterMs).toBe(0);
    expect(parseHints({ 'openai-poll-after-ms': '250' }, NOW).pollAfterMs).toBe(250);
  });

  it('ignores garbage', () => {
    expect(parseHints({ 'retry-after-ms': '-1', 'retry-after': 'soon', 'openai-poll-after-ms': '1e9' }, NOW)).toEqual({ retryAfterMs: undefined, pollAfterMs: undefined });
  });
});

describe('headers and secrets', () => {
  it('builds Portkey headers with the trace id set to the watch id', () => {
    const headers = buildHeaders('portkey', { apiKey: 'pk-key', virtualKey: 'vk', portkeyConfig: 'pc-1' }, { 'x-portkey-provider': 'openai' }, 'w_1', true, RUN_KIND.requestHeaders);
    expect(headers).toMatchObject({
      'x-portkey-api-key': 'pk-key',
      'x-portkey-virtual-key': 'vk',
      'x-portkey-config': 'pc-1',
      'x-portkey-trace-id': 'w_1',
      'x-portkey-provider': 'openai',
      'openai-beta': 'assistants=v2',
    });
    expect(headers.authorization).toBeUndefined();
  });

  it('builds OpenAI headers', () => {
    const headers = buildHeaders('openai', { apiKey: 'sk-key' }, {}, 'w_1', true, RUN_KIND.requestHeaders);
    expect(headers).toMatchObject({ authorization: 'Bearer sk-key', 'openai-beta': 'assistants=v2' });
    // the beta header belongs to the runs endpoints, not to every request
    expect(buildHeaders('openai', { apiKey: 'sk-key' }, {}, 'w_1')['openai-beta']).toBeUndefined();
    expect(headers['x-portkey-trace-id']).toBeUndefined();
  });

  it("sends no openai-beta to Azure: its Agent Service spec and SDK take none (the user's own headers still go)", () => {
    const headers = buildHeaders('azure', { apiKey: 'eyJ-token' }, {}, 'w_1', true, RUN_KIND.requestHeaders);
    expect(headers).toMatchObject({ authorization: 'Bearer eyJ-token' });
    expect(headers['openai-beta']).toBeUndefined();
    expect(buildHeaders('azure', {}, { 'OpenAI-Beta': 'assistants=v2' }, 'w_1', true, RUN_KIND.requestHeaders)['openai-beta']).toBe('assistants=v2');
  });

  it('redacts known secrets and key-shaped strings', () => {
    expect(redactSecrets('key=my-secret-value and sk-proj-abcdef123', ['my-secret-value'])).toBe('key=[REDACTED] and sk-[REDACTED]');
  });

  it('extracts server messages defensively', () => {
    expect(parseServerMessage('{"error":{"message":"m","code":"c"}}')).toBe('m (c)');
    expect(parseServerMessage('{"error":"plain"}')).toBe('plain');
    expect(parseServerMessage('null')).toBeUndefined();
    expect(parseServerMessage('<html>')).toBeUndefined();
  });

  it('validates base URLs', () => {
    expect(normalizeBaseUrl('http://127.0.0.1:8080/v1/')).toBe('http://127.0.0.1:8080/v1');
    expect(() => normalizeBaseUrl('ftp://x')).toThrow(ConfigError);
    expect(() => normalizeBaseUrl('not a url')).toThrow(ConfigError);
    expect(() => normalizeBaseUrl('https://user:pass@host/v1')).toThrow('must not carry credentials');
  });
});

describe('ApiClient over real HTTP', () => {
  type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => void;
  let handler: Handler = (_req, res) => res.end(RUN);
  const seen: http.IncomingHttpHeaders[] = [];
  const sockets = new Set<string>();
  let server: http.Server;
  let baseUrl: string;

  beforeAll(async () => {
    server = http.createServer((req, res) => {
      seen.push(req.headers);
      sockets.add(`${req.socket.remotePort}`);
      handler(req, res);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  it('sends per-request headers, so two watches with different keys share one client', async () => {
    handler = (_req, res) => res.end(RUN);
    seen.length = 0;
    const client = new ApiClient({ provider: 'openai', baseUrl, credentials: { apiKey: 'sk-default-key' } });
    const ref = { thread_id: 'thread_1', run_id: 'run_1' };
    const [a, b] = await Promise.all([
      client.retrieve(RUN_KIND, ref, { watchId: 'w_a' }),
      client.retrieve(RUN_KIND, ref, { watchId: 'w_b', credentials: { apiKey: 'sk-other-key' }, headers: { 'x-extra': '1' } }),
    ]);
    expect(a.ok && b.ok).toBe(true);
    const auths = seen.map((h) => h.authorization).sort();
    expect(auths).toEqual(['Bearer sk-default-key', 'Bearer sk-other-key']);
    expect(seen.find((h) => h.authorization === 'Bearer sk-default-key')?.['x-extra']).toBeUndefined();
    client.close();
  });

  it('keeps the connection alive between requests', async () => {
    handler = (_req, res) => res.end(RUN);
    sockets.clear();
    const client = new ApiClient({ provider: 'openai', baseUrl });
    for (let i = 0; i < 5; i++) await client.retrieve(RUN_KIND, { thread_id: 't', run_id: 'r' }, { watchId: 'w' });
    expect(sockets.size).toBe(1);
    client.close();
  });

  it('turns a timeout, a reset and a refused connection into transient failures', async () => {
    const client = new ApiClient({ provider: 'openai', baseUrl, requestTimeoutMs: 200 });
    const ref = { thread_id: 't', run_id: 'r' };
    handler = () => undefined;
    expect(await client.retrieve(RUN_KIND, ref, { watchId: 'w' })).toMatchObject({ ok: false, retryable: true, message: 'request timed out after 200 ms' });
    handler = (req) => req.socket.destroy();
    expect(await client.retrieve(RUN_KIND, ref, { watchId: 'w' })).toMatchObject({ ok: false, retryable: true, code: 'transient' });
    client.close();
    const refused = new ApiClient({ provider: 'openai', baseUrl: 'http://127.0.0.1:9/v1' });
    expect(await refused.retrieve(RUN_KIND, ref, { watchId: 'w' })).toMatchObject({ ok: false, retryable: true, message: 'network error ECONNREFUSED' });
    refused.close();
  });

  it('reports its own abort as aborted, not as an error to retry', async () => {
    handler = () => undefined;
    const client = new ApiClient({ provider: 'openai', baseUrl });
    const controller = new AbortController();
    const pending = client.retrieve(RUN_KIND, { thread_id: 't', run_id: 'r' }, { watchId: 'w', signal: controller.signal });
    setTimeout(() => controller.abort(), 20);
    expect(await pending).toMatchObject({ ok: false, aborted: true, code: 'aborted' });
    client.close();
  });

  it('sends the host header Node would (port included) with the usual headers, and a host the caller set instead of its own', async () => {
    handler = (_req, res) => res.end(RUN);
    seen.length = 0;
    const client = new ApiClient({ provider: 'openai', baseUrl, credentials: { apiKey: 'sk-default-key' } });
    const ref = { thread_id: 't', run_id: 'r' };
    await client.retrieve(RUN_KIND, ref, { watchId: 'w' });
    await client.retrieve(RUN_KIND, ref, { watchId: 'w' });
    await client.retrieve(RUN_KIND, ref, { watchId: 'w', headers: { Host: 'api.example.test' } });
    expect(seen.map((h) => h.host)).toEqual([new URL(baseUrl).host, new URL(baseUrl).host, 'api.example.test']);
    expect(seen[1]).toMatchObject({ authorization: 'Bearer sk-default-key', 'openai-beta': 'assistants=v2', accept: 'application/json', connection: 'keep-alive' });
    client.close();
  });

  it('leaves no listener on the signal after a request, answered, failed or aborted', async () => {
    const ref = { thread_id: 't', run_id: 'r' };
    const client = new ApiClient({ provider: 'openai', baseUrl, requestTimeoutMs: 200 });
    const controller = new AbortController();
    handler = (_req, res) => res.end(RUN);
    for (let i = 0; i < 3; i++) await client.retrieve(RUN_KIND, ref, { watchId: 'w', signal: controller.signal });
    handler = (_req, res) => res.writeHead(500).end('{}');
    await client.retrieve(RUN_KIND, ref, { watchId: 'w', signal: controller.signal });
    handler = () => undefined;
    expect(await client.retrieve(RUN_KIND, ref, { watchId: 'w', signal: controller.signal })).toMatchObject({ ok: false, message: 'request timed out after 200 ms' });
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0);
    const pending = client.retrieve(RUN_KIND, ref, { watchId: 'w', signal: controller.signal });
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(1);
    controller.abort();
    expect(await pending).toMatchObject({ ok: false, aborted: true });
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0);
    // aborted before it starts: nothing is sent
    seen.length = 0;
    expect(await client.retrieve(RUN_KIND, ref, { watchId: 'w', signal: controller.signal })).toMatchObject({ ok: false, aborted: true });
    expect(seen).toHaveLength(0);
    client.close();
  });

  it('gives back the last snapshot for a body it was parsed from, and parses a changed body (an unchanged poll builds no snapshot)', async () => {
    const ref = { thread_id: 't', run_id: 'r' };
    const client = new ApiClient({ provider: 'openai', baseUrl });
    let body = RUN;
    handler = (_req, res) => res.end(body);
    const first = await client.retrieve(RUN_KIND, ref, { watchId: 'w', lastSnapshot: null });
    if (!first.ok) throw new Error('expected a snapshot');
    const same = await client.retrieve(RUN_KIND, ref, { watchId: 'w', lastSnapshot: first.snapshot });
    expect(same).toMatchObject({ ok: true, httpStatus: 200 });
    expect(same.ok && same.snapshot).toBe(first.snapshot);
    // without the last snapshot, or after another body, a new one
    const parsed = await client.retrieve(RUN_KIND, ref, { watchId: 'w' });
    expect(parsed.ok && parsed.snapshot).not.toBe(first.snapshot);
    expect(parsed.ok && parsed.snapshot).toEqual(first.snapshot);
    body = JSON.stringify({ id: 'run_1', object: 'thread.run', status: 'in_progress', usage: null });
    const changed = await client.retrieve(RUN_KIND, ref, { watchId: 'w', lastSnapshot: first.snapshot });
    expect(changed.ok && changed.snapshot).toEqual({ id: 'run_1', object: 'thread.run', status: 'in_progress', usage: null });
    // a snapshot it never parsed (a resumed watch's) is no match, even for the same text
    body = RUN;
    const foreign = JSON.parse(RUN) as typeof first.snapshot;
    const fresh = await client.retrieve(RUN_KIND, ref, { watchId: 'w', lastSnapshot: foreign });
    expect(fresh.ok && fresh.snapshot).not.toBe(foreign);
    // an error answer is classified as ever, whatever the last snapshot
    handler = (_req, res) => res.writeHead(503).end(RUN);
    expect(await client.retrieve(RUN_KIND, ref, { watchId: 'w', lastSnapshot: first.snapshot })).toMatchObject({ ok: false, httpStatus: 503 });
    client.close();
  });

  it('reads a compressed body, and turns a body cut midway or too slow into a transient failure', async () => {
    const ref = { thread_id: 't', run_id: 'r' };
    const client = new ApiClient({ provider: 'openai', baseUrl, requestTimeoutMs: 300 });
    handler = (_req, res) => res.writeHead(200, { 'content-encoding': 'gzip' }).end(gzipSync(RUN));
    expect(await client.retrieve(RUN_KIND, ref, { watchId: 'w' })).toMatchObject({ ok: true, snapshot: { status: 'in_progress' } });
    handler = (req, res) => {
      res.writeHead(200, { 'content-length': '1000' }).write(RUN.slice(0, 10));
      setTimeout(() => req.socket.destroy(), 20);
    };
    expect(await client.retrieve(RUN_KIND, ref, { watchId: 'w' })).toMatchObject({ ok: false, retryable: true, message: 'network error ECONNRESET' });
    // headers come at once, the body never ends: the timeout covers the whole exchange
    handler = (_req, res) => res.writeHead(200, { 'content-length': '1000' }).write(RUN.slice(0, 10));
    expect(await client.retrieve(RUN_KIND, ref, { watchId: 'w' })).toMatchObject({ ok: false, retryable: true, message: 'request timed out after 300 ms' });
    client.close();
  });

  it('fails a body over the cap for good (it would be as large on every retry); a response may be larger than a run', async () => {
    const client = new ApiClient({ provider: 'openai', baseUrl });
    // 9 MiB: over a run's 8 MiB, under a response's 64 MiB
    const big = Buffer.alloc(9 * 1024 * 1024, 0x20);
    handler = (_req, res) => res.end(Buffer.concat([Buffer.from('{"id":"resp_1","object":"response","status":"completed","output":"'), big, Buffer.from('"}')]));
    expect(await client.retrieve(RUN_KIND, { thread_id: 't', run_id: 'r' }, { watchId: 'w' })).toMatchObject({
      ok: false,
      retryable: false,
      code: 'response_too_large',
      message: expect.stringMatching(/larger than 8388608 bytes: raise maxResponseBytes/) as unknown,
    });
    expect(await client.retrieve(RESPONSE_KIND, { response_id: 'resp_1' }, { watchId: 'w' })).toMatchObject({ ok: true, snapshot: { status: 'completed' } });
    client.close();
    const capped = new ApiClient({ provider: 'openai', baseUrl, maxResponseBytes: 1024 * 1024 });
    expect(await capped.retrieve(RESPONSE_KIND, { response_id: 'resp_1' }, { watchId: 'w' })).toMatchObject({ ok: false, code: 'response_too_large', message: expect.stringContaining('1048576 bytes') as unknown });
    capped.close();
    expect(() => new ApiClient({ maxResponseBytes: 10 })).toThrow('maxResponseBytes');
  });

  it('sends a cancel with no body, and the Portkey provider slug as x-portkey-provider', async () => {
    const seen: Array<{ method?: string; url?: string; headers: Record<string, unknown>; body: string }> = [];
    handler = (req, res) => {
      let body = '';
      req.on('data', (chunk: Buffer) => (body += chunk.toString()));
      req.on('end', () => {
        seen.push({ method: req.method, url: req.url, headers: req.headers, body });
        res.end(JSON.stringify({ id: 'resp_1', object: 'response', status: 'cancelled' }));
      });
    };
    const client = new ApiClient({ provider: 'portkey', baseUrl, credentials: { apiKey: 'pk-1234', portkeyProvider: '@openai-prod' } });
    await client.act(RESPONSE_KIND, { response_id: 'resp_1' }, 'cancel', {}, { watchId: 'w_1' });
    await client.retrieve(RESPONSE_KIND, { response_id: 'resp_1' }, { watchId: 'w_1' });
    client.close();
    expect(seen[0]).toMatchObject({ method: 'POST', body: '', headers: { 'content-length': '0', 'x-portkey-provider': '@openai-prod', 'x-portkey-trace-id': 'w_1' } });
    expect(seen[0]!.headers['content-type']).toBeUndefined();
    expect(seen[1]).toMatchObject({ method: 'GET', headers: { 'x-portkey-provider': '@openai-prod' } });
    expect(() => new ApiClient({ provider: 'portkey', credentials: { portkeyProvider: '@bad slug' } })).toThrow(/invalid Portkey provider "@bad slug": expected a Model Catalog slug such as @openai-prod/);
  });

  it('does not follow redirects (they could carry the key to another host)', async () => {
    handler = (_req, res) => res.writeHead(302, { location: 'http://127.0.0.2:1/steal' }).end();
    const client = new ApiClient({ provider: 'openai', baseUrl, credentials: { apiKey: 'sk-secret-123456' } });
    expect(await client.retrieve(RUN_KIND, { thread_id: 't', run_id: 'r' }, { watchId: 'w' })).toMatchObject({ ok: false, retryable: false, httpStatus: 302 });
    client.close();
  });

  it('rejects bad options with a ConfigError', () => {
    expect(() => new ApiClient({ provider: 'azure' as 'openai' })).toThrow(ConfigError);
    expect(() => new ApiClient({ requestTimeoutMs: 0 })).toThrow('requestTimeoutMs');
    expect(() => new ApiClient({ headers: { 'bad header': 'x' } })).toThrow('invalid header name');
    expect(() => new ApiClient({ headers: { 'x-ok': 'a\r\nb' } })).toThrow('line break');
  });
});
