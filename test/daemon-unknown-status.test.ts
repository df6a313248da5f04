import { describe, expect, it } from 'vitest';
import { requireRedis } from './redis.js';
import { readSseEvents } from './sse.js';
import { storeKinds, useDaemon } from './daemons.js';

const KEY = 'sk-daemon-unknown';
const redisAvailable = await requireRedis();

describe.each(storeKinds(redisAvailable, ['sqlite', 'redis']))('an undocumented status with the $kind store', ({ kind, skip }) => {
  const tag = kind;
  const t = useDaemon(kind, { skip, key: KEY, settings: () => [] });

  const getWatch = async (id: string): Promise<Record<string, unknown>> => (await (await fetch(`${t.base}/v1/watches/${id}`)).json()) as Record<string, unknown>;

  it.skipIf(skip)('keeps the watch active while the run is "thinking", resumes it after a restart and follows it to run.completed', async () => {
    const runId = `run_${tag}_thinking`;
    // "thinking" lasts until the run is replaced below: the daemon is stopped and started meanwhile
    t.sim.addRun({ threadId: 'thread_unknown', runId, timeline: [{ status: 'in_progress', durationMs: 150 }, { status: 'thinking' }], start: 'first_request' });
    const created = await fetch(`${t.base}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: 'thread_unknown', run_id: runId }) });
    expect(created.status).toBe(201);
    const id = String(((await created.json()) as { id: string }).id);

    const before = await readSseEvents(`${t.base}/v1/events?run_id=${runId}`, (list) => list.some((e) => e.type === 'run.thinking'));
    expect(before.map((e) => [e.type, e.seq])).toEqual([
      ['run.in_progress', 1],
      ['run.thinking', 2],
    ]);
    // the simulator served the status as given, and the daemon kept polling through it
    expect(t.sim.requests(runId).some((r) => r.status === 'thinking')).toBe(true);
    expect(await getWatch(id)).toMatchObject({ id, state: 'active', status: 'thinking', seq: 2 });

    await t.stop();
    expect(t.sim.transitions(runId).at(-1)?.status).toBe('thinking');
    await t.start();
    // the stored watch survived the restart as active
    expect(await getWatch(id)).toMatchObject({ id, state: 'active', status: 'thinking', seq: 2 });

    // now the run ends: only a resumed watch polls again and sees it
    t.sim.addRun({ threadId: 'thread_unknown', runId, timeline: [{ status: 'completed' }] });
    const events = await readSseEvents(`${t.base}/v1/events?run_id=${runId}`, (list) => list.some((e) => e.type === 'run.completed'));
    expect(events.map((e) => [e.type, e.seq])).toEqual([
      ['run.in_progress', 1],
      ['run.thinking', 2],
      ['run.completed', 3],
    ]);
    expect(events.at(-1)).toMatchObject({ watch_id: id, from: 'thinking', to: 'completed' });
    expect(t.sim.requests(runId).filter((r) => r.method === 'GET').length).toBeGreaterThan(0);
    expect(await getWatch(id)).toMatchObject({ id, state: 'finished', status: 'completed', seq: 3 });
  });
});
