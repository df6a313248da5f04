import { once } from 'node:events';
import { mkdtempSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { EngineSettings } from '../src/daemon/engine.js';
import type { RedisEngineOptions } from '../src/daemon/redis-engine.js';
import { RedisEngine } from '../src/daemon/redis-engine.js';
import type { RunEvent } from '../src/events.js';
import type { RunningSimulator } from '../src/simulator.js';
import { partitionOf, RedisStore } from '../src/store/redis.js';
import { REDIS_URL, removeKeys, requireRedis, testPrefix } from './redis.js';
import { useSimulator } from './sim.js';
import { startCli } from './spawn.js';
import type { CliProcess } from './spawn.js';

const KEY = 'sk-partitions-0001';
const available = await requireRedis();
let sim: RunningSimulator;
useSimulator({ apiKey: KEY }, (started) => (sim = started));
const prefixes: string[] = [];
const clients: Redis[] = [];
const engines: RedisEngine[] = [];
afterEach(async () => {
  await Promise.all(engines.splice(0).map((engine) => engine.close(200)));
});
afterAll(async () => {
  for (const redis of clients) redis.disconnect();
  for (const prefix of prefixes) await removeKeys(prefix);
});

const SETTINGS: EngineSettings = {
  watcher: {
    provider: 'openai',
    baseUrl: '',
    credentials: { apiKey: KEY },
    policy: { jitter: 0, intervals: Object.fromEntries(['queued', 'in_progress', 'cancelling'].map((s) => [s, { baseMs: 100, capMs: 100 }])) },
    maxRequestsPerSecond: 10_000,
    logger: pino({ level: 'silent' }),
  },
  toolHandler: undefined,
  cancelAfterStallMs: undefined,
};

function newPrefix(): string {
  const prefix = testPrefix();
  prefixes.push(prefix);
  return prefix;
}

function connect(): Redis {
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  clients.push(redis);
  return redis;
}

/** A replica in this process: its own connection, store and engine (stopped after each test). */
function replica(prefix: string, partitions: number, options: Partial<RedisEngineOptions> = {}): RedisEngine {
  const redis = connect();
  const engine = new RedisEngine(redis, new RedisStore(redis, prefix, partitions), { ...SETTINGS, watcher: { ...SETTINGS.watcher, baseUrl: sim.baseUrl } }, {
    lockDurationMs: 1_500,
    stalledIntervalMs: 300,
    logger: pino({ level: 'silent' }),
    ...options,
  });
  engines.push(engine);
  return engine;
}

async function waitFor(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 15_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * The commands Redis runs for this prefix, as MONITOR lines: those naming one of its keys, and
 * what a script among them runs (`TIME` names no key). A plain socket: ioredis's monitor mode
 * trips over replies that arrive with its MONITOR command.
 */
async function monitorCommands(prefix: string): Promise<{ lines: string[]; close: () => void }> {
  const url = new URL(REDIS_URL);
  const socket = createConnection({ host: url.hostname, port: Number(url.port || 6379) });
  await once(socket, 'connect');
  if (url.password) socket.write(`AUTH ${decodeURIComponent(url.password)}\r\n`);
  socket.write('MONITOR\r\n');
  const lines: string[] = [];
  let rest = '';
  let inOurScript = false;
  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => {
    const parts = (rest + chunk).split('\r\n');
    rest = parts.pop() ?? '';
    for (const line of parts) {
      if (!line.startsWith('+') || line === '+OK') continue;
      if (!/ \[\d+ lua\] /.test(line)) inOurScript = line.includes(`"${prefix}`);
      if (inOurScript) lines.push(line);
    }
  });
  return { lines, close: () => socket.destroy() };
}

/** Which replica sent each request of a run. */
function senders(runId: string): string[] {
  return sim.requests(runId).map((r) => String(r.headers['x-runwatch-instance']));
}

/** A watch id (and its run) in a given watch partition. */
function watchIn(partition: number, partitions: number, tag: string): { id: string; run_id: string } {
  for (let i = 0; ; i++) {
    const id = `w_${tag}_${i}`;
    if (partitionOf(id, partitions) === partition) return { id, run_id: `run_${tag}_${i}` };
  }
}

describe.skipIf(!available)('watch partitions on Redis (needs Redis)', () => {
  it('shares the partitions fairly as replicas join (1 -> 3), and each watch is then polled by its partition\'s owner only', async () => {
    const prefix = newPrefix();
    const tag = `fair${Date.now()}`;
    const a = replica(prefix, 8);
    await a.start();
    expect(a.ownedPartitions()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    const runs = Array.from({ length: 24 }, (_, i) => ({ id: `w_${tag}_${i}`, run_id: `run_${tag}_${i}` }));
    for (const run of runs) {
      sim.addRun({ threadId: 'thread_fair', runId: run.run_id, timeline: [{ status: 'in_progress' }] });
      await a.add({ kind: 'run', id: run.id, thread_id: 'thread_fair', run_id: run.run_id });
    }
    await waitFor(() => runs.every((run) => sim.requests(run.run_id).length > 0), 'every watch polled by the first replica');
    const b = replica(prefix, 8);
    const c = replica(prefix, 8);
    await Promise.all([b.start(), c.start()]);
    const fleet = [a, b, c];
    await waitFor(() => fleet.map((e) => e.ownedPartitions().length).sort().join() === '2,3,3', 'the partitions to be shared 3, 3, 2');
    const owners = new Map<number, string>();
    for (const engine of fleet) for (const p of engine.ownedPartitions()) owners.set(p, engine.replicaId);
    expect(owners.size).toBe(8);
    await waitFor(async () => [...(await a.watchesByReplica()).values()].reduce((sum, n) => sum + n, 0) === 24 && (await a.watchesByReplica()).size === 3, 'every watch counted once, by three replicas');
    // from here on each watch is polled by its owner, and never twice at once
    const seen = new Map(runs.map((run) => [run.run_id, sim.requests(run.run_id).length]));
    await waitFor(() => runs.every((run) => sim.requests(run.run_id).length >= seen.get(run.run_id)! + 3), 'three more polls of every watch');
    for (const run of runs) {
      const since = senders(run.run_id).slice(seen.get(run.run_id));
      expect(since, run.run_id).toEqual(since.map(() => owners.get(partitionOf(run.id, 8))));
      expect(sim.maxConcurrent(run.run_id), run.run_id).toBe(1);
    }
  }, 40_000);

  it('a watch added on a replica that does not own its partition is polled by the owner; a cancel there reaches it', async () => {
    const prefix = newPrefix();
    const a = replica(prefix, 4);
    const b = replica(prefix, 4);
    await Promise.all([a.start(), b.start()]);
    await waitFor(() => a.ownedPartitions().length === 2 && b.ownedPartitions().length === 2, 'two partitions each');
    const run = watchIn(b.ownedPartitions()[0]!, 4, `nonowner${Date.now()}`);
    sim.addRun({ threadId: 'thread_no', runId: run.run_id, timeline: [{ status: 'in_progress' }] });
    await a.add({ kind: 'run', id: run.id, thread_id: 'thread_no', run_id: run.run_id });
    await waitFor(() => sim.requests(run.run_id).length >= 2, 'the watch to be polled');
    expect(new Set(senders(run.run_id))).toEqual(new Set([b.replicaId]));
    // the cancel is sent and recorded by the replica asked; the owner goes on from it
    await a.cancel(run.id);
    const events = async (): Promise<RunEvent[]> => (await a.store.eventsAfter(0, { run_id: run.run_id }, 100)).map((e) => JSON.parse(e.payload) as RunEvent);
    await waitFor(async () => (await events()).some((e) => e.type === 'run.cancelled'), 'the run to end cancelled');
    const all = await events();
    expect(all.map((e) => e.type)).toEqual(['run.in_progress', 'run.cancel_requested', 'run.cancelling', 'run.cancelled']);
    expect(all.map((e) => e.seq)).toEqual([1, 2, 3, 4]);
    const posts = sim.requests(run.run_id).filter((r) => r.method === 'POST');
    expect(posts.map((r) => String(r.headers['x-runwatch-instance']))).toEqual([a.replicaId]);
    expect(new Set(sim.requests(run.run_id).filter((r) => r.method === 'GET').map((r) => String(r.headers['x-runwatch-instance'])))).toEqual(new Set([b.replicaId]));
    expect((await a.store.get(run.id))?.state).toBe('finished');
    // a delete there too: written through the store, and the owner lets the watch go
    const other = watchIn(b.ownedPartitions()[0]!, 4, `nonownerdel${Date.now()}`);
    sim.addRun({ threadId: 'thread_no', runId: other.run_id, timeline: [{ status: 'in_progress' }] });
    await a.add({ kind: 'run', id: other.id, thread_id: 'thread_no', run_id: other.run_id });
    await waitFor(async () => (await a.store.eventsAfter(0, { run_id: other.run_id }, 10)).length === 1, 'the owner to poll the watch');
    expect((await a.delete(other.id))?.state).toBe('deleted');
    await waitFor(async () => (await a.watchesByReplica()).get(b.replicaId) === 0, 'the owner to let it go');
    const polls = sim.requests(other.run_id).length;
    const last = (await a.store.eventsAfter(0, { run_id: other.run_id }, 10)).map((e) => (JSON.parse(e.payload) as RunEvent).type);
    expect(last).toEqual(['run.in_progress', 'watch.error']);
    expect(sim.requests(other.run_id).length).toBe(polls);
  }, 30_000);

  it('a webhook taken by a replica that does not own the watch makes the owner poll at once', async () => {
    const prefix = newPrefix();
    const webhook = { ...SETTINGS, push: 'webhook' as const, watcher: { ...SETTINGS.watcher, baseUrl: sim.baseUrl } };
    const make = (): RedisEngine => {
      const redis = connect();
      const engine = new RedisEngine(redis, new RedisStore(redis, prefix, 4), webhook, { lockDurationMs: 1_500, stalledIntervalMs: 300, logger: pino({ level: 'silent' }) });
      engines.push(engine);
      return engine;
    };
    const [a, b] = [make(), make()];
    await Promise.all([a.start(), b.start()]);
    await waitFor(() => a.ownedPartitions().length === 2 && b.ownedPartitions().length === 2, 'two partitions each');
    const { id, run_id: responseId } = watchIn(b.ownedPartitions()[0]!, 4, `wake${Date.now()}`);
    sim.addResponse({ responseId, timeline: [{ status: 'in_progress' }] });
    await a.add({ kind: 'response', id, response_id: responseId });
    await waitFor(() => sim.requests(responseId).length === 1, 'the first poll');
    // the safety net would poll again in 30 s; the wake passed on to the owner polls now
    expect(await a.wakeResponse(responseId)).toBe(true);
    await waitFor(() => sim.requests(responseId).length === 2, 'the woken poll', 5_000);
    expect(new Set(senders(responseId))).toEqual(new Set([b.replicaId]));
    expect(await a.wakeResponse('resp_nobody_watches')).toBe(false);
  }, 30_000);

  it('the periodic repair polls a watch whose notice was lost, and lets go of one that ended elsewhere unnoticed', async () => {
    const prefix = newPrefix();
    const a = replica(prefix, 2, { repairIntervalMs: 300 });
    await a.start();
    const redis = connect();
    const tag = `repair${Date.now()}`;
    const [lost, ended] = [`w_${tag}_lost`, `w_${tag}_ended`];
    for (const id of [lost, ended]) sim.addRun({ threadId: 'thread_rep', runId: `run_${id}`, timeline: [{ status: 'in_progress' }] });
    // created by another replica whose notice never came: in the store, not polled here
    await new RedisStore(redis, prefix, 2).create({ kind: 'run', id: lost, thread_id: 'thread_rep', run_id: `run_${lost}` }, Date.now());
    await waitFor(() => sim.requests(`run_${lost}`).length > 0, 'the repair to poll the watch');
    await a.add({ kind: 'run', id: ended, thread_id: 'thread_rep', run_id: `run_${ended}` });
    await waitFor(() => sim.requests(`run_${ended}`).length > 1, 'the watch to be polled');
    // ended by another writer whose notice never came: the owner's unchanged polls would never learn it
    await redis.hset(a.store.keys.watch(ended), 'state', 'deleted');
    await redis.srem(a.store.keys.activeIn(a.store.partitionOfWatch(ended)), ended);
    await waitFor(async () => (await a.watchesByReplica()).get(a.replicaId) === 1, 'the repair to let the ended watch go');
    const polls = sim.requests(`run_${ended}`).length;
    await waitFor(() => sim.requests(`run_${lost}`).length > 5, 'more polls of the other watch');
    expect(sim.requests(`run_${ended}`).length).toBe(polls);
  }, 30_000);

  it('an unchanged poll writes nothing to Redis and costs at most 12 commands (inside scripts included); its checkpoint is written at release', async () => {
    const prefix = newPrefix();
    // two partitions and a slow lease round: the replica's own traffic stays small beside the polls
    const a = replica(prefix, 2, { lockDurationMs: 5_000, stalledIntervalMs: 1_000, checkpointIntervalMs: 60_000 });
    await a.start();
    const tag = `quiet${Date.now()}`;
    const runs = Array.from({ length: 10 }, (_, i) => ({ id: `w_${tag}_${i}`, run_id: `run_${tag}_${i}` }));
    for (const run of runs) {
      sim.addRun({ threadId: 'thread_quiet', runId: run.run_id, timeline: [{ status: 'in_progress' }] });
      await a.add({ kind: 'run', id: run.id, thread_id: 'thread_quiet', run_id: run.run_id });
    }
    await waitFor(async () => (await a.store.eventsAfter(0, {}, 100)).length === runs.length, 'the first event of every watch');
    const monitor = await monitorCommands(prefix);
    const commands = monitor.lines;
    // MONITOR sees what was sent after it answered: a round trip marks the start
    await connect().get(`${prefix}mark`);
    await waitFor(() => commands.some((line) => line.includes(`"${prefix}mark"`)), 'the monitor to see the mark');
    const polls0 = runs.reduce((sum, run) => sum + sim.requests(run.run_id).length, 0);
    const from = commands.length;
    await waitFor(() => runs.reduce((sum, run) => sum + sim.requests(run.run_id).length, 0) >= polls0 + 100, '100 unchanged polls');
    const polls = runs.reduce((sum, run) => sum + sim.requests(run.run_id).length, 0) - polls0;
    const window = commands.slice(from);
    monitor.close();
    // nothing read or written of any watch: no hash, no stream entry
    expect(window.filter((line) => line.includes(`"${prefix}watch:`) || line.includes(`"${prefix}log"`))).toEqual([]);
    expect(window.length / polls).toBeLessThanOrEqual(12);
    // Redis still has the progress of the first poll; this replica's checkpoint is newer
    const elsewhere = new RedisStore(connect(), prefix, 2);
    expect((await elsewhere.get(runs[0]!.id))?.progress).toMatchObject({ seq: 1, unchangedPolls: 0 });
    const here = (await a.store.get(runs[0]!.id))?.progress as { unchangedPolls: number } | undefined;
    expect(here?.unchangedPolls).toBeGreaterThanOrEqual(5);
    await a.close(200);
    const stored = (await elsewhere.get(runs[0]!.id))?.progress as { seq: number; unchangedPolls: number } | undefined;
    expect(stored?.seq).toBe(1);
    // a poll in flight at the close may have added one more
    expect(stored?.unchangedPolls).toBeGreaterThanOrEqual(here!.unchangedPolls);
  }, 30_000);
});

interface Replica {
  readonly cli: CliProcess;
  readonly base: string;
}

async function startReplica(prefix: string): Promise<Replica> {
  const cli = startCli(
    [
      'daemon',
      '--port',
      '0',
      '--data-dir',
      mkdtempSync(path.join(tmpdir(), 'runwatch-partitions-')),
      ...['store.kind="redis"', `store.prefix=${JSON.stringify(prefix)}`, 'store.partitions=4', 'store.lockDurationMs=2000', 'store.stalledIntervalMs=400', 'store.leaseMs=2000'].flatMap((s) => ['--set', s]),
      ...['watch.provider="openai"', `watch.baseUrl=${JSON.stringify(sim.baseUrl)}`, 'watch.maxRequestsPerSecond=2000', 'sinks.stdout.enabled=false'].flatMap((s) => ['--set', s]),
      ...['watch.policy={"jitter":0,"intervals":{"queued":{"baseMs":100,"capMs":100},"in_progress":{"baseMs":150,"capMs":150}}}'].flatMap((s) => ['--set', s]),
    ],
    { OPENAI_API_KEY: KEY, RUNWATCH_REDIS_URL: REDIS_URL },
  );
  const line = await cli.waitForStderr((l) => l.includes('daemon listening'));
  return { cli, base: `http://127.0.0.1:${(JSON.parse(line) as { port: number }).port}` };
}

describe.skipIf(!available)('a SIGKILLed owner (needs Redis)', () => {
  it('its partitions move to the live replica when their lease lapses; every watch goes on, no event lost or written twice', async () => {
    const prefix = newPrefix();
    const tag = `kill${Date.now()}`;
    const runs = Array.from({ length: 40 }, (_, i) => ({ id: '', runId: `run_${tag}_${i}`, statuses: ['queued', 'in_progress', i % 2 ? 'completed' : 'failed'] }));
    for (const [i, run] of runs.entries()) {
      sim.addRun({ threadId: 'thread_kill', runId: run.runId, start: 'first_request', timeline: [{ status: 'queued', durationMs: 300 + (i % 5) * 100 }, { status: 'in_progress', durationMs: 2_500 + (i % 7) * 200 }, { status: run.statuses[2]! }] });
    }
    const first = await startReplica(prefix);
    const second = await startReplica(prefix);
    try {
      for (const run of runs) {
        const res = await fetch(`${first.base}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: 'thread_kill', run_id: run.runId }) });
        expect(res.status).toBe(201);
      }
      // both replicas poll: each owns some partitions
      await waitFor(() => new Set(runs.flatMap((run) => senders(run.runId))).size === 2, 'both replicas to poll');
      first.cli.child.kill('SIGKILL');
      await first.cli.done;
      const killedAt = Date.now();
      const store = new RedisStore(connect(), prefix, 4);
      const events = async (): Promise<RunEvent[]> => (await store.eventsAfter(0, {}, 10_000)).map((e) => JSON.parse(e.payload) as RunEvent);
      await waitFor(async () => (await events()).filter((e) => e.type === 'run.completed' || e.type === 'run.failed').length === runs.length, 'every run to end', 60_000);
      const byRun = new Map<string, RunEvent[]>();
      for (const event of await events()) byRun.set(event.run_id, [...(byRun.get(event.run_id) ?? []), event]);
      for (const run of runs) {
        const list = byRun.get(run.runId) ?? [];
        // gapless and once each: a late step of the dead replica could not write again; a status
        // seen by no committed poll (a poll cut by the kill or a hand-back) is missed, as between any two polls
        const types: string[] = list.map((e) => e.type);
        expect(types.at(-1), run.runId).toBe(`run.${run.statuses[2]}`);
        expect(types, run.runId).toEqual(run.statuses.map((s) => `run.${s}`).filter((type) => types.includes(type)));
        expect(list.map((e) => e.seq), run.runId).toEqual(list.map((_, i) => i + 1));
        expect(sim.maxConcurrent(run.runId), run.runId).toBe(1);
      }
      // after the kill one replica polls every watch: the killed one's were taken over
      const sentBy = (runId: string, afterKill: boolean): string[] => sim.requests(runId).filter((r) => r.atMs > killedAt === afterKill).map((r) => String(r.headers['x-runwatch-instance']));
      const survivorIds = new Set(runs.flatMap((run) => sentBy(run.runId, true)));
      expect(survivorIds.size).toBe(1);
      const [survivorId] = survivorIds;
      const takenOver = runs.filter((run) => sentBy(run.runId, false).some((id) => id !== survivorId) && sentBy(run.runId, true).length > 0);
      expect(takenOver.length).toBeGreaterThan(0);
      const survivor = second;
      const list = (await (await fetch(`${survivor.base}/v1/watches?state=active`)).json()) as { data: unknown[] };
      expect(list.data).toEqual([]);
    } finally {
      for (const r of [first, second]) if (r.cli.child.exitCode === null && r.cli.child.signalCode === null) r.cli.child.kill('SIGTERM');
      await Promise.all([first.cli.done, second.cli.done]);
    }
  }, 90_000);
});
