import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/daemon/config.js';
import { Daemon } from '../src/daemon/daemon.js';
import type { RunningSimulator } from '../src/simulator.js';
import { startSimulator } from '../src/simulator.js';
import { REDIS_URL, removeKeys, requireRedis, testPrefix } from './redis.js';
import { readSseEvents } from './sse.js';

const KEY = 'sk-daemon-unknown';
const redisAvailable = await requireRedis();

const stores = [
  { kind: 'sqlite' as const, skip: false },
  { kind: 'redis' as const, skip: !redisAvailable },
];

describe.each(stores)('an undocumented status with the $kind store', ({ kind, skip }) => {
  let sim: RunningSimulator;
  let daemon: Daemon;
  let base: string;
  let start: () => Promise<Daemon>;
  const prefix = testPrefix();
  const tag = kind === 'sqlite' ? 'sq' : 'rd';

  beforeAll(async () => {
    if (skip) return;
    sim = await startSimulator({ apiKey: KEY });
    const config = loadConfig({
      overrides: [
        ['daemon.port', '0'],
        ['daemon.dataDir', JSON.stringify(mkdtempSync(path.join(tmpdir(), 'runwatch-unknown-')))],
        ['store.kind', JSON.stringify(kind)],
        ['store.prefix', JSON.stringify(prefix)],
        ['sinks.stdout.enabled', 'false'],
        ['watch.provider', '"openai"'],
        ['watch.baseUrl', JSON.stringify(sim.baseUrl)],
        ['watch.policy', '{"jitter":0,"intervals":{"in_progress":{"baseMs":100,"capMs":100},"unknown":{"baseMs":100,"capMs":100}}}'],
      ],
    });
    const secrets = { credentials: { apiKey: KEY }, redisUrl: REDIS_URL };
    // the same data dir (SQLite) or prefix (Redis) every time: a second start is a restart
    start = async () => {
      daemon = await Daemon.start(config, secrets, pino({ level: 'silent' }));
      base = `http://127.0.0.1:${daemon.address.port}`;
      return daemon;
    };
    await start();
  });
  afterAll(async () => {
    if (skip) return;
    await daemon.shutdown();
    await sim.close();
    if (kind === 'redis') await removeKeys(prefix);
  });

  const getWatch = async (id: string): Promise<Record<string, unknown>> => (await (await fetch(`${base}/v1/watches/${id}`)).json()) as Record<string, unknown>;

  it.skipIf(skip)('keeps the watch active while the run is "thinking", resumes it after a restart and follows it to run.completed', async () => {
    const runId = `run_${tag}_thinking`;
    // "thinking" lasts until the run is replaced below: the daemon is stopped and started meanwhile
    sim.addRun({ threadId: 'thread_unknown', runId, timeline: [{ status: 'in_progress', durationMs: 150 }, { status: 'thinking' }], start: 'first_request' });
    const created = await fetch(`${base}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: 'thread_unknown', run_id: runId }) });
    expect(created.status).toBe(201);
    const id = String(((await created.json()) as { id: string }).id);

    const before = await readSseEvents(`${base}/v1/events?run_id=${runId}`, (list) => list.some((e) => e.type === 'run.thinking'));
    expect(before.map((e) => [e.type, e.seq])).toEqual([
      ['run.in_progress', 1],
      ['run.thinking', 2],
    ]);
    // the simulator served the status as given, and the daemon kept polling through it
    expect(sim.requests(runId).some((r) => r.status === 'thinking')).toBe(true);
    expect(await getWatch(id)).toMatchObject({ id, state: 'active', status: 'thinking', seq: 2 });

    await daemon.shutdown();
    expect(sim.transitions(runId).at(-1)?.status).toBe('thinking');
    await start();
    // the stored watch survived the restart as active
    expect(await getWatch(id)).toMatchObject({ id, state: 'active', status: 'thinking', seq: 2 });

    // now the run ends: only a resumed watch polls again and sees it
    sim.addRun({ threadId: 'thread_unknown', runId, timeline: [{ status: 'completed' }] });
    const events = await readSseEvents(`${base}/v1/events?run_id=${runId}`, (list) => list.some((e) => e.type === 'run.completed'));
    expect(events.map((e) => [e.type, e.seq])).toEqual([
      ['run.in_progress', 1],
      ['run.thinking', 2],
      ['run.completed', 3],
    ]);
    expect(events.at(-1)).toMatchObject({ watch_id: id, from: 'thinking', to: 'completed' });
    expect(sim.requests(runId).filter((r) => r.method === 'GET').length).toBeGreaterThan(0);
    expect(await getWatch(id)).toMatchObject({ id, state: 'finished', status: 'completed', seq: 3 });
  });
});
