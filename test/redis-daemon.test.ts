import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/daemon/config.js';
import { Daemon } from '../src/daemon/daemon.js';
import type { WatchEvent } from '../src/events.js';
import type { RunningSimulator } from '../src/simulator.js';
import { startSimulator } from '../src/simulator.js';
import { RedisStore } from '../src/store/redis.js';
import { REDIS_URL, removeKeys, requireRedis, testPrefix } from './redis.js';
import { readSseEvents } from './sse.js';

const available = await requireRedis();
const prefix = testPrefix();
let sim: RunningSimulator;
let daemon: Daemon;
let base: string;

beforeAll(async () => {
  if (!available) return;
  sim = await startSimulator({ apiKey: 'sk-rd' });
  const config = loadConfig({
    overrides: [
      ['daemon.port', '0'],
      ['daemon.dataDir', JSON.stringify(mkdtempSync(path.join(tmpdir(), 'runwatch-rd-')))],
      ['store.kind', '"redis"'],
      ['store.prefix', JSON.stringify(prefix)],
      ['sinks.stdout.enabled', 'false'],
      ['watch.provider', '"openai"'],
      ['watch.baseUrl', JSON.stringify(sim.baseUrl)],
      ['watch.policy', '{"jitter":0,"intervals":{"queued":{"baseMs":100,"capMs":100},"in_progress":{"baseMs":100,"capMs":100}}}'],
      // long enough for a test to read an ended watch before the pruner (every 300 ms) removes it, even on a loaded machine
      ['retention.watchesMs', '2000'],
      ['retention.pruneIntervalMs', '300'],
    ],
  });
  daemon = await Daemon.start(config, { credentials: { apiKey: 'sk-rd' }, redisUrl: REDIS_URL }, pino({ level: 'silent' }));
  base = `http://127.0.0.1:${daemon.address.port}`;
});
afterAll(async () => {
  if (!available) return;
  await daemon.shutdown();
  await sim.close();
  await removeKeys(prefix);
});

const post = (body: unknown): Promise<Response> => fetch(`${base}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

/** Reads the SSE stream until `done` holds for the events seen. */
function readEvents(query: string, done: (events: WatchEvent[]) => boolean): Promise<WatchEvent[]> {
  return readSseEvents(`${base}/v1/events${query}`, done);
}

describe.skipIf(!available)('daemon on the Redis store: control API (needs Redis)', () => {
  it('creates a watch once per run and streams its events', async () => {
    sim.addRun({ threadId: 'thread_rd', runId: 'run_rd1', timeline: [{ status: 'queued', durationMs: 150 }, { status: 'in_progress', durationMs: 250 }, { status: 'completed' }], start: 'first_request' });
    const first = await post({ thread_id: 'thread_rd', run_id: 'run_rd1', metadata: { team: 'a' } });
    expect(first.status).toBe(201);
    const watch = (await first.json()) as { id: string };
    const again = await post({ thread_id: 'thread_rd', run_id: 'run_rd1' });
    expect(again.status).toBe(200);
    expect(((await again.json()) as { id: string }).id).toBe(watch.id);
    const events = await readEvents('?run_id=run_rd1', (list) => list.some((e) => e.type === 'run.completed'));
    expect(events.map((e) => [e.type, e.seq])).toEqual([
      ['run.queued', 1],
      ['run.in_progress', 2],
      ['run.completed', 3],
    ]);
    const stored = (await (await fetch(`${base}/v1/watches/${watch.id}`)).json()) as { state: string; status: string; metadata: unknown };
    expect(stored).toMatchObject({ state: 'finished', status: 'completed', metadata: { team: 'a' } });
  });

  it('watches a background response: one watch per response, response.* events filtered by response_id', async () => {
    sim.addResponse({ responseId: 'resp_rd1', timeline: [{ status: 'queued', durationMs: 150 }, { status: 'completed' }], start: 'first_request' });
    const first = await post({ response_id: 'resp_rd1' });
    expect(first.status).toBe(201);
    const watch = (await first.json()) as { id: string; kind: string; response_id: string };
    expect(watch).toMatchObject({ kind: 'response', response_id: 'resp_rd1' });
    expect(watch).not.toHaveProperty('thread_id');
    expect((await post({ response_id: 'resp_rd1' })).status).toBe(200);
    const events = await readEvents('?response_id=resp_rd1', (list) => list.some((e) => e.type === 'response.completed'));
    expect(events.map((e) => [e.type, e.seq])).toEqual([
      ['response.queued', 1],
      ['response.completed', 2],
    ]);
    // (the ended watch itself is pruned within about 2 s in this file: its events are the record)
  });

  it('reads a watch stored before responses existed (no kind field) as a run', async () => {
    const redis = new Redis(REDIS_URL);
    const state = new RedisStore(redis, `${prefix}legacy:`, 4);
    await redis.hset(state.keys.watch('w_legacy'), { id: 'w_legacy', thread_id: 'thread_l', run_id: 'run_l', metadata: '', callback_url: '', state: 'active', seq: '3', created_at: '1', updated_at: '1' });
    expect(await state.get('w_legacy')).toMatchObject({ kind: 'run', thread_id: 'thread_l', run_id: 'run_l', progress: { seq: 3 }, state: 'active' });
    await redis.quit();
  });

  it('stops a watch on DELETE with a watch.error', async () => {
    sim.addRun({ threadId: 'thread_rd', runId: 'run_rd2', timeline: [{ status: 'in_progress' }] });
    const { id } = (await (await post({ thread_id: 'thread_rd', run_id: 'run_rd2' })).json()) as { id: string };
    await readEvents('?run_id=run_rd2', (list) => list.length > 0);
    const deleted = (await (await fetch(`${base}/v1/watches/${id}`, { method: 'DELETE' })).json()) as { state: string; error: { code: string } };
    expect(deleted).toMatchObject({ state: 'deleted', error: { code: 'aborted' } });
    const events = await readEvents('?run_id=run_rd2', (list) => list.some((e) => e.type === 'watch.error'));
    expect(events.at(-1)).toMatchObject({ type: 'watch.error', error: { code: 'aborted' } });
  });

  it('prunes ended watches after the retention', async () => {
    sim.addRun({ threadId: 'thread_rd', runId: 'run_rd3', timeline: [{ status: 'completed' }] });
    const { id } = (await (await post({ thread_id: 'thread_rd', run_id: 'run_rd3' })).json()) as { id: string };
    await readEvents('?run_id=run_rd3', (list) => list.some((e) => e.type === 'run.completed'));
    // the pruner runs every 300 ms in this test and removes watches ended 2 s ago; wait for it through the API
    for (let i = 0; i < 100 && (await fetch(`${base}/v1/watches/${id}`)).status !== 404; i++) await new Promise((resolve) => setTimeout(resolve, 100));
    expect((await fetch(`${base}/v1/watches/${id}`)).status).toBe(404);
    // the run added again is a new watch: its event ids cannot collide with the old ones
    const again = await post({ thread_id: 'thread_rd', run_id: 'run_rd3' });
    expect(again.status).toBe(201);
    expect(((await again.json()) as { id: string }).id).not.toBe(id);
  });
});
