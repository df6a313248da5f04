import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Cluster } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SimulatedRun } from '../src/simulator.js';
import { startSimulator } from '../src/simulator.js';
import { TERMINAL_RUN_STATUSES } from '../src/status.js';
import { shardPrefix } from '../src/store/redis-keys.js';
import { shardOf } from '../src/store/sharded.js';
import { targetKey } from '../src/store/store.js';
import type { LocalCluster } from './cluster.js';
import { requireClusterTools, startCluster } from './cluster.js';
import { expectCompleteAndOrdered, startReceiver, terminalRuns } from './receiver.js';
import { testPrefix } from './redis.js';
import { readFrames } from './sse.js';
import { startCli } from './spawn.js';
import type { CliProcess } from './spawn.js';

const available = requireClusterTools();
const KEY = 'sk-cluster-key-0001';
const SECRET = `whsec_${Buffer.from('cluster-webhook-secret-32-bytes!').toString('base64')}`;
const SHARDS = 3;
let cluster: LocalCluster | undefined;
beforeAll(async () => {
  if (available) cluster = await startCluster(3);
}, 60_000);
afterAll(async () => {
  await cluster?.stop();
});

interface Replica {
  readonly cli: CliProcess;
  readonly base: string;
}

async function startReplica(prefix: string, simUrl: string, webhookUrl: string, serve: readonly number[] | null): Promise<Replica> {
  const cli = startCli(
    [
      'daemon',
      '--port',
      '0',
      '--data-dir',
      mkdtempSync(path.join(tmpdir(), 'runwatch-cluster-')),
      ...['store.kind="redis"', `store.prefix=${JSON.stringify(prefix)}`, `store.shards=${SHARDS}`, `store.serveShards=${JSON.stringify(serve)}`, 'store.partitions=4', 'store.leaseMs=3000', 'store.lockDurationMs=3000', 'store.stalledIntervalMs=1000'].flatMap((s) => ['--set', s]),
      ...['watch.provider="openai"', `watch.baseUrl=${JSON.stringify(simUrl)}`, 'watch.maxRequestsPerSecond=2000', 'watch.maxInFlight=32'].flatMap((s) => ['--set', s]),
      ...['watch.policy={"jitter":0,"intervals":{"queued":{"baseMs":150,"capMs":150},"in_progress":{"baseMs":200,"capMs":200}}}', 'sinks.stdout.enabled=false'].flatMap((s) => ['--set', s]),
      ...[`sinks.webhook.url=${JSON.stringify(webhookUrl)}`, 'sinks.delivery.backoffBaseMs=100', 'sinks.delivery.backoffCapMs=500'].flatMap((s) => ['--set', s]),
    ],
    { OPENAI_API_KEY: KEY, RUNWATCH_WEBHOOK_SECRET: SECRET, RUNWATCH_REDIS_URL: cluster!.url },
  );
  const line = await cli.waitForStderr((l) => l.includes('daemon listening'));
  return { cli, base: `http://127.0.0.1:${(JSON.parse(line) as { port: number }).port}` };
}

async function post(base: string, body: unknown): Promise<{ status: number; body: { id: string } }> {
  const res = await fetch(`${base}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as { id: string } };
}

describe.skipIf(!available)('Redis mode on a 3-node Redis Cluster, 3 shards (needs redis-server and redis-cli)', () => {
  it('two replicas (shards 0 and 1 / shard 2): every watch ends with its events once each and in order, polled only by its shard\'s replica; SSE resumes from a cursor per shard', async () => {
    const sim = await startSimulator({ apiKey: KEY });
    const receiver = await startReceiver(SECRET);
    const runs: SimulatedRun[] = Array.from({ length: 60 }, (_, i) => ({
      threadId: 'thread_cl',
      runId: `run_cl_${i}`,
      start: 'first_request' as const,
      timeline: [{ status: 'queued', durationMs: 200 + (i % 5) * 100 }, { status: 'in_progress', durationMs: 500 + (i % 7) * 150 }, { status: TERMINAL_RUN_STATUSES[i % TERMINAL_RUN_STATUSES.length]! }],
    }));
    for (const run of runs) sim.addRun(run);
    const prefix = testPrefix();
    const replicas = [await startReplica(prefix, sim.baseUrl, receiver.url, [0, 1]), await startReplica(prefix, sim.baseUrl, receiver.url, [2])];
    const redis = new Cluster(cluster!.ports.map((port) => ({ host: '127.0.0.1', port })));
    try {
      const ids = new Map<string, string>();
      await Promise.all(
        runs.map(async (run, i) => {
          const created = await post(replicas[i % 2]!.base, { thread_id: run.threadId, run_id: run.runId });
          expect(created.status).toBe(201);
          ids.set(run.runId, created.body.id);
        }),
      );
      // the same run through the other replica is the same watch
      const again = await post(replicas[1]!.base, { thread_id: 'thread_cl', run_id: 'run_cl_0' });
      expect(again).toMatchObject({ status: 200, body: { id: ids.get('run_cl_0') } });
      // a watch created on one replica is read on the other
      expect((await (await fetch(`${replicas[0]!.base}/v1/watches/${ids.get('run_cl_1')}`)).json()) as { run_id: string }).toMatchObject({ run_id: 'run_cl_1' });

      await receiver.waitFor(() => terminalRuns(receiver) === runs.length, 90_000);
      expectCompleteAndOrdered(receiver, runs);
      const eventIds = receiver.received.map((r) => r.id);
      expect(new Set(eventIds).size, 'no event delivered twice').toBe(eventIds.length);

      // every shard got watches, each in its own hash-tagged keyspace
      const shardOfRun = (runId: string): number => shardOf(targetKey({ kind: 'run', thread_id: 'thread_cl', run_id: runId }), SHARDS);
      for (let shard = 0; shard < SHARDS; shard += 1) {
        const expected = runs.filter((run) => shardOfRun(run.runId) === shard).length;
        expect(expected).toBeGreaterThan(0);
        expect(await redis.zcard(`${shardPrefix(prefix, shard)}watches`)).toBe(expected);
      }
      // a shard's watches are polled by the replica serving it (its pid is in x-runwatch-instance), one poll at a time
      const pids = replicas.map((r) => r.cli.child.pid);
      for (const run of runs) {
        const senders = new Set(sim.requests(run.runId).map((r) => Number(String(r.headers['x-runwatch-instance']).split('-').at(-2))));
        expect([...senders], run.runId).toEqual([pids[shardOfRun(run.runId) === 2 ? 1 : 0]]);
        expect(sim.maxConcurrent(run.runId), run.runId).toBe(1);
      }

      // the list pages over every shard, every watch once
      const listed: Array<{ id: string; created_at: string }> = [];
      let after = '';
      for (;;) {
        const page = (await (await fetch(`${replicas[1]!.base}/v1/watches?limit=25${after}`)).json()) as { data: Array<{ id: string; created_at: string }>; next_after: string | null };
        listed.push(...page.data);
        if (!page.next_after) break;
        after = `&after=${page.next_after}`;
      }
      expect(listed.map((w) => w.id).sort()).toEqual([...ids.values()].sort());

      // SSE: ids are one position per shard; resuming from one in the middle gives the rest, nothing twice
      const total = receiver.received.length;
      const all = await readFrames(`${replicas[1]!.base}/v1/events`, (frames) => frames.length === total);
      expect(all.every((f) => /^\d+\.\d+\.\d+$/.test(f.id))).toBe(true);
      const middle = all[Math.floor(total / 2)]!;
      const rest = await readFrames(`${replicas[0]!.base}/v1/events`, (frames) => frames.length === total - Math.floor(total / 2) - 1, { 'last-event-id': middle.id });
      expect(rest.map((f) => f.id)).toEqual(all.slice(Math.floor(total / 2) + 1).map((f) => f.id));
      expect(new Set(all.map((f) => (JSON.parse(f.data) as { id: string }).id))).toEqual(new Set(eventIds));
      // the fleet summary gives the log's end as such a cursor, and the fleet's counts of every shard
      const fleet = (await (await fetch(`${replicas[0]!.base}/v1/fleet`)).json()) as { last_event_id: string; last_event_pos: number; active_by_status: Record<string, number> };
      expect(fleet.last_event_id).toBe(all.at(-1)!.id);
      expect(fleet.last_event_pos).toBe(total);
      expect(Object.values(fleet.active_by_status).reduce((a, b) => a + b, 0)).toBe(0);
      // runwatch tail resumes from the same id and prints the same events
      const tail = startCli(['tail', '--daemon-url', replicas[1]!.base, '--from', middle.id]);
      const printed: string[] = [];
      let timer: NodeJS.Timeout | undefined;
      const tailTimeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`tail printed ${printed.length} of ${rest.length} events`)), 15_000)));
      await Promise.race([tail.waitForLine((line) => printed.push((JSON.parse(line) as { id: string }).id) === rest.length), tailTimeout]).finally(() => clearTimeout(timer));
      tail.child.kill('SIGTERM');
      expect((await tail.done).stderr).toContain(`stopped after position ${all.at(-1)!.id}`);
      expect(printed).toEqual(rest.map((f) => (JSON.parse(f.data) as { id: string }).id));
      const bad = await fetch(`${replicas[0]!.base}/v1/events`, { headers: { 'last-event-id': '12' } });
      expect(bad.status).toBe(400);
      expect(((await bad.json()) as { error: { message: string } }).error.message).toMatch(/3 dot-separated positions/);

      for (const replica of replicas) replica.cli.child.kill('SIGTERM');
      for (const replica of replicas) expect((await replica.cli.done).code).toBe(0);
    } finally {
      for (const replica of replicas) if (replica.cli.child.exitCode === null) replica.cli.child.kill('SIGKILL');
      redis.disconnect();
      await receiver.close();
      await sim.close();
    }
  }, 180_000);

  it('two replicas serving every shard, one SIGKILLed mid-way: the other takes its polls over in every shard and every watch ends, in order', async () => {
    const sim = await startSimulator({ apiKey: KEY });
    const receiver = await startReceiver(SECRET);
    const runs: SimulatedRun[] = Array.from({ length: 45 }, (_, i) => ({
      threadId: 'thread_to',
      runId: `run_to_${i}`,
      start: 'first_request' as const,
      timeline: [{ status: 'queued', durationMs: 300 }, { status: 'in_progress', durationMs: 2_500 + (i % 5) * 300 }, { status: TERMINAL_RUN_STATUSES[i % TERMINAL_RUN_STATUSES.length]! }],
    }));
    for (const run of runs) sim.addRun(run);
    const prefix = testPrefix();
    const replicas = [await startReplica(prefix, sim.baseUrl, receiver.url, null), await startReplica(prefix, sim.baseUrl, receiver.url, null)];
    try {
      await Promise.all(runs.map(async (run, i) => expect((await post(replicas[i % 2]!.base, { thread_id: run.threadId, run_id: run.runId })).status).toBe(201)));
      // every run polled at least once, then the first replica dies with polls (and leases) in its hands
      await receiver.waitFor((r) => new Set(r.map((e) => e.event.run_id)).size === runs.length, 30_000);
      replicas[0]!.cli.child.kill('SIGKILL');
      await replicas[0]!.cli.done;
      const killedAt = Date.now();
      await receiver.waitFor(() => terminalRuns(receiver) === runs.length, 90_000);
      expectCompleteAndOrdered(receiver, runs);
      const survivor = String(replicas[1]!.cli.child.pid);
      const shardsTakenOver = new Set(
        runs.filter((run) => sim.requests(run.runId).some((r) => r.atMs > killedAt && String(r.headers['x-runwatch-instance']).split('-').at(-2) === survivor)).map((run) => shardOf(targetKey({ kind: 'run', thread_id: 'thread_to', run_id: run.runId }), SHARDS)),
      );
      expect([...shardsTakenOver].sort()).toEqual([0, 1, 2]);
      for (const run of runs) expect(sim.maxConcurrent(run.runId), run.runId).toBe(1);
      replicas[1]!.cli.child.kill('SIGTERM');
      expect((await replicas[1]!.cli.done).code).toBe(0);
    } finally {
      for (const replica of replicas) if (replica.cli.child.exitCode === null) replica.cli.child.kill('SIGKILL');
      await receiver.close();
      await sim.close();
    }
  }, 180_000);
});
