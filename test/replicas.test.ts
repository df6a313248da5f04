import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { SimulatedRun } from '../src/simulator.js';
import { startSimulator } from '../src/simulator.js';
import { TERMINAL_RUN_STATUSES } from '../src/status.js';
import { expectCompleteAndOrdered, startReceiver, terminalRuns } from './receiver.js';
import { REDIS_URL, removeKeys, requireRedis, testPrefix } from './redis.js';
import { startCli } from './spawn.js';
import type { CliProcess } from './spawn.js';

const available = await requireRedis();
const prefix = testPrefix();
const KEY = 'sk-replicas-key-0001';
const SECRET = `whsec_${Buffer.from('replica-webhook-secret-32-bytes!').toString('base64')}`;
const TERMINAL = new Set<string>(TERMINAL_RUN_STATUSES);
afterAll(async () => {
  if (available) await removeKeys(prefix);
});

interface Replica {
  readonly cli: CliProcess;
  readonly base: string;
}

async function startReplica(simUrl: string, webhookUrl: string): Promise<Replica> {
  const cli = startCli(
    [
      'daemon',
      '--port',
      '0',
      '--data-dir',
      mkdtempSync(path.join(tmpdir(), 'runwatch-replica-')),
      ...['store.kind="redis"', `store.prefix=${JSON.stringify(prefix)}`, 'store.lockDurationMs=3000', 'store.stalledIntervalMs=1000', 'store.leaseMs=3000'].flatMap((s) => ['--set', s]),
      ...['watch.provider="openai"', `watch.baseUrl=${JSON.stringify(simUrl)}`, 'watch.maxRequestsPerSecond=2000', 'watch.maxInFlight=32'].flatMap((s) => ['--set', s]),
      ...['watch.policy={"intervals":{"queued":{"baseMs":200,"capMs":600},"in_progress":{"baseMs":300,"capMs":900}}}', 'sinks.stdout.enabled=false'].flatMap((s) => ['--set', s]),
      ...[`sinks.webhook.url=${JSON.stringify(webhookUrl)}`, 'sinks.delivery.backoffBaseMs=100', 'sinks.delivery.backoffCapMs=500'].flatMap((s) => ['--set', s]),
    ],
    { OPENAI_API_KEY: KEY, RUNWATCH_WEBHOOK_SECRET: SECRET, RUNWATCH_REDIS_URL: REDIS_URL },
  );
  const line = await cli.waitForStderr((l) => l.includes('daemon listening'));
  return { cli, base: `http://127.0.0.1:${(JSON.parse(line) as { port: number }).port}` };
}

describe.skipIf(!available)('several replicas on Redis (needs Redis)', () => {
  it('300 watches over 3 replicas, two SIGKILLed: every watch ends, every event arrives in order, no run polled twice at once', async () => {
    const sim = await startSimulator({ apiKey: KEY });
    const receiver = await startReceiver(SECRET);
    let seed = 99;
    const random = (): number => ((seed = (seed * 48271) % 2147483647) - 1) / 2147483646;
    const runs: SimulatedRun[] = Array.from({ length: 300 }, (_, i) => ({
      threadId: 'thread_rep',
      runId: `run_rep_${i}`,
      start: 'first_request' as const,
      timeline: [
        { status: 'queued', durationMs: 200 + Math.floor(random() * 800) },
        { status: 'in_progress', durationMs: 1000 + Math.floor(random() * 4000) },
        { status: [...TERMINAL][i % TERMINAL.size]! },
      ],
    }));
    for (const run of runs) sim.addRun(run);
    const replicas = [await startReplica(sim.baseUrl, receiver.url), await startReplica(sim.baseUrl, receiver.url), await startReplica(sim.baseUrl, receiver.url)];
    try {
      for (let i = 0; i < runs.length; i += 30) {
        await Promise.all(
          runs.slice(i, i + 30).map(async (run, j) => {
            const res = await fetch(`${replicas[(i + j) % 3]!.base}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: run.threadId, run_id: run.runId }) });
            expect(res.status).toBe(201);
          }),
        );
      }
      // the same run through another replica is the same watch
      const again = await fetch(`${replicas[1]!.base}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: 'thread_rep', run_id: 'run_rep_0' }) });
      expect(again.status).toBe(200);

      await receiver.waitFor((r) => r.length >= 200, 60_000);
      replicas[0]!.cli.child.kill('SIGKILL');
      await replicas[0]!.cli.done;
      await receiver.waitFor((r) => r.length >= 500, 60_000);
      replicas[1]!.cli.child.kill('SIGKILL');
      await replicas[1]!.cli.done;
      await receiver.waitFor(() => terminalRuns(receiver) === runs.length, 120_000);

      const list = (await (await fetch(`${replicas[2]!.base}/v1/watches?state=active`)).json()) as { data: unknown[] };
      expect(list.data).toEqual([]);
      const metrics = await (await fetch(`${replicas[2]!.base}/metrics`)).text();
      expect(metrics).toMatch(/runwatch_polls_total\{outcome="ok"\} [1-9]/);
      expect(metrics).toMatch(/runwatch_sink_deliveries_total\{sink="webhook",outcome="delivered"\} [1-9]/);
      replicas[2]!.cli.child.kill('SIGTERM');
      expect((await replicas[2]!.cli.done).code).toBe(0);

      expectCompleteAndOrdered(receiver, runs);
      for (const run of runs) expect(sim.maxConcurrent(run.runId), run.runId).toBe(1);
      const instances = new Set(runs.flatMap((run) => sim.requests(run.runId).map((r) => String(r.headers['x-runwatch-instance']))));
      expect(instances.size).toBeGreaterThanOrEqual(3);
    } finally {
      for (const replica of replicas) if (replica.cli.child.exitCode === null) replica.cli.child.kill('SIGKILL');
      await receiver.close();
      await sim.close();
    }
  }, 240_000);
});
