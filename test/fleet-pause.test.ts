import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startSimulator } from '../src/simulator.js';
import { REDIS_URL, removeKeys, requireRedis, testPrefix } from './redis.js';
import { startCli } from './spawn.js';
import type { CliProcess } from './spawn.js';

const available = await requireRedis();
const prefix = testPrefix();
const KEY = 'sk-fleet-pause';
afterAll(async () => {
  if (available) await removeKeys(prefix);
});

describe.skipIf(!available)('fleet-wide 429 (needs Redis)', () => {
  it('a 429 with retry-after on one replica pauses every replica', async () => {
    const sim = await startSimulator({ apiKey: KEY });
    // run_p0 answers its 4th poll with 429 and a 2-second retry-after; the others just keep going
    sim.addRun({ threadId: 'thread_p', runId: 'run_p0', timeline: [{ status: 'in_progress' }], faults: [{ type: 'status', status: 429, headers: { 'retry-after-ms': '2000' }, from: 4 }] });
    for (let i = 1; i < 8; i++) sim.addRun({ threadId: 'thread_p', runId: `run_p${i}`, timeline: [{ status: 'in_progress' }] });
    const replicas: CliProcess[] = [];
    try {
      for (let r = 0; r < 2; r++) {
        replicas.push(
          startCli(
            [
              'daemon',
              '--port',
              '0',
              '--data-dir',
              mkdtempSync(path.join(tmpdir(), 'runwatch-pause-')),
              ...['store.kind="redis"', `store.prefix=${JSON.stringify(prefix)}`, 'watch.provider="openai"', `watch.baseUrl=${JSON.stringify(sim.baseUrl)}`, 'sinks.stdout.enabled=false'].flatMap((s) => ['--set', s]),
              ...['watch.policy={"jitter":0,"intervals":{"in_progress":{"baseMs":200,"capMs":200}}}'].flatMap((s) => ['--set', s]),
            ],
            { OPENAI_API_KEY: KEY, RUNWATCH_REDIS_URL: REDIS_URL },
          ),
        );
      }
      const ports = await Promise.all(replicas.map(async (cli) => (JSON.parse(await cli.waitForStderr((l) => l.includes('daemon listening'))) as { port: number }).port));
      for (let i = 0; i < 8; i++) {
        await fetch(`http://127.0.0.1:${ports[i % 2]}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: 'thread_p', run_id: `run_p${i}` }) });
      }
      // wait until the 429 was served and 2.5 s have passed after it
      while (sim.requests('run_p0').length < 4) await new Promise((resolve) => setTimeout(resolve, 50));
      const limitedAt = sim.requests('run_p0')[3]!.atMs;
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, limitedAt + 2500 - Date.now())));
      const all = Array.from({ length: 8 }, (_, i) => sim.requests(`run_p${i}`)).flat();
      const instances = new Set(all.map((r) => String(r.headers['x-runwatch-instance'])));
      expect(instances.size).toBe(2);
      // polls already under way may land just after the 429; after that, silence until retry-after
      const during = all.filter((r) => r.atMs > limitedAt + 250 && r.atMs < limitedAt + 1900);
      expect(during).toEqual([]);
      const after = all.filter((r) => r.atMs >= limitedAt + 1900);
      expect(after.length).toBeGreaterThan(0);
    } finally {
      for (const cli of replicas) cli.child.kill('SIGTERM');
      await Promise.all(replicas.map((cli) => cli.done));
      await sim.close();
    }
  }, 60_000);
});
