import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startSimulator } from '../src/simulator.js';
import { byRun, startReceiver } from './receiver.js';
import { REDIS_URL, removeKeys, requireRedis, testPrefix } from './redis.js';
import { startProxy } from './proxy.js';
import { startCli } from './spawn.js';

const available = await requireRedis();
const prefix = testPrefix();
const KEY = 'sk-outage-key-0001';
afterAll(async () => {
  if (available) await removeKeys(prefix);
});

describe.skipIf(!available)('Redis outage (needs Redis)', () => {
  it('reports not-ready for 10 s without Redis, keeps running, and loses nothing', async () => {
    const sim = await startSimulator({ apiKey: KEY });
    const receiver = await startReceiver(`whsec_${Buffer.from('outage-webhook-secret-32-bytes!!').toString('base64')}`);
    const proxy = await startProxy(new URL(REDIS_URL));
    const runs = Array.from({ length: 20 }, (_, i) => ({ threadId: 'thread_out', runId: `run_out_${i}`, start: 'first_request' as const, timeline: [{ status: 'in_progress', durationMs: 3_000 + i * 300 }, { status: 'completed' }] }));
    for (const run of runs) sim.addRun(run);
    const cli = startCli(
      [
        'daemon',
        '--port',
        '0',
        '--data-dir',
        mkdtempSync(path.join(tmpdir(), 'runwatch-outage-')),
        ...['store.kind="redis"', `store.prefix=${JSON.stringify(prefix)}`, 'store.lockDurationMs=3000', 'store.stalledIntervalMs=1000', 'store.leaseMs=3000'].flatMap((s) => ['--set', s]),
        ...['watch.provider="openai"', `watch.baseUrl=${JSON.stringify(sim.baseUrl)}`, 'sinks.stdout.enabled=false', `sinks.webhook.url=${JSON.stringify(receiver.url)}`].flatMap((s) => ['--set', s]),
        ...['watch.policy={"intervals":{"in_progress":{"baseMs":300,"capMs":600}}}', 'sinks.delivery.backoffBaseMs=100', 'sinks.delivery.backoffCapMs=500'].flatMap((s) => ['--set', s]),
      ],
      { OPENAI_API_KEY: KEY, RUNWATCH_REDIS_URL: proxy.url, RUNWATCH_WEBHOOK_SECRET: `whsec_${Buffer.from('outage-webhook-secret-32-bytes!!').toString('base64')}` },
    );
    try {
      const base = `http://127.0.0.1:${(JSON.parse(await cli.waitForStderr((l) => l.includes('daemon listening'))) as { port: number }).port}`;
      for (const run of runs) {
        const res = await fetch(`${base}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: run.threadId, run_id: run.runId }) });
        expect(res.status).toBe(201);
      }
      await receiver.waitFor((r) => r.length >= 10, 30_000);
      expect((await fetch(`${base}/readyz`)).status).toBe(200);

      await proxy.down();
      const cutAt = Date.now();
      // readiness follows the connection: wait for the first 503, then hold the cut for 10 s
      let notReady = false;
      while (!notReady && Date.now() - cutAt < 10_000) {
        notReady = (await fetch(`${base}/readyz`)).status === 503;
        if (!notReady) await new Promise((resolve) => setTimeout(resolve, 100));
      }
      expect(notReady).toBe(true);
      expect((await fetch(`${base}/healthz`)).status).toBe(200);
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, 10_000 - (Date.now() - cutAt))));
      expect(cli.child.exitCode).toBeNull();
      expect((await fetch(`${base}/readyz`)).status).toBe(503);
      await proxy.up();

      await receiver.waitFor(() => [...byRun(receiver.received).values()].filter((events) => events.some((e) => e.type === 'run.completed')).length === runs.length, 90_000);
      expect((await fetch(`${base}/readyz`)).status).toBe(200);
      for (const run of runs) {
        const events = byRun(receiver.received).get(run.runId) ?? [];
        expect(events.map((e) => e.seq), run.runId).toEqual(events.map((_, i) => i + 1));
        expect(events.at(-1)?.type).toBe('run.completed');
      }
      cli.child.kill('SIGTERM');
      expect((await cli.done).code).toBe(0);
    } finally {
      if (cli.child.exitCode === null) cli.child.kill('SIGKILL');
      await proxy.close().catch(() => undefined);
      await receiver.close();
      await sim.close();
    }
  }, 150_000);
});
