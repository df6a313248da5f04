// Measures how long a watch waits after the replica polling it is SIGKILLed mid-request, until
// another replica polls it: the lease of its watch partition has to lapse, and another replica has to take it.
// Needs Redis (RUNWATCH_TEST_REDIS_URL, default redis://127.0.0.1:6379) and a build (npm run build).
// Usage: npm run bench:takeover
import { once } from 'node:events';
import { Redis } from 'ioredis';
// from the build: node runs this file with type stripping, which does not map .js to .ts
import { startSimulator } from '../dist/simulator.js';
import { startDaemon } from './daemon.ts';

const REDIS_URL = process.env.RUNWATCH_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
const KEY = 'sk-bench-takeover';

function replica(simUrl: string, prefix: string, lockMs: number, stalledMs: number) {
  const settings = ['store.kind="redis"', `store.prefix=${JSON.stringify(prefix)}`, `store.lockDurationMs=${lockMs}`, `store.stalledIntervalMs=${stalledMs}`,
    'watch.provider="openai"', `watch.baseUrl=${JSON.stringify(simUrl)}`, 'sinks.stdout.enabled=false'];
  return startDaemon({ settings, env: { OPENAI_API_KEY: KEY, RUNWATCH_REDIS_URL: REDIS_URL } });
}

async function measure(lockMs: number, stalledMs: number): Promise<number> {
  const prefix = `rwbench:${process.pid}:${lockMs}:`;
  const sim = await startSimulator({ apiKey: KEY });
  // the first request hangs, so the first replica is killed in the middle of it
  sim.addRun({ threadId: 'thread_t', runId: 'run_t', timeline: [{ status: 'in_progress' }], faults: [{ type: 'hang', from: 1 }] });
  // both replicas run and have shared the watch partitions before the watch is added, so no rebalance moves it
  const replicas = [await replica(sim.baseUrl, prefix, lockMs, stalledMs), await replica(sim.baseUrl, prefix, lockMs, stalledMs)];
  await new Promise((r) => setTimeout(r, 3 * Math.min(stalledMs, lockMs / 5)));
  await fetch(`http://127.0.0.1:${replicas[0]!.port}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"thread_id":"thread_t","run_id":"run_t"}' });
  while (sim.requests('run_t').length === 0) await new Promise((r) => setTimeout(r, 10));
  // the replica that polls it (its id is <host>-<pid>-<random>) is the one killed
  const sender = String(sim.requests('run_t')[0]!.headers['x-runwatch-instance']);
  const victim = replicas.find((r) => sender.includes(`-${r.child.pid}-`))!;
  const survivor = replicas.find((r) => r !== victim)!;
  const killedAt = Date.now();
  victim.child.kill('SIGKILL');
  while (sim.requests('run_t').length < 2) await new Promise((r) => setTimeout(r, 10));
  const takeoverMs = sim.requests('run_t')[1]!.atMs - killedAt;
  survivor.child.kill('SIGTERM');
  await once(survivor.child, 'close');
  await sim.close();
  const redis = new Redis(REDIS_URL);
  for (let cursor = '0'; ; ) {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
    if (keys.length) await redis.del(...keys);
    if ((cursor = next) === '0') break;
  }
  redis.disconnect();
  return takeoverMs;
}

process.stdout.write('lockDurationMs  stalledIntervalMs  takeover after SIGKILL (ms)\n');
for (const [lockMs, stalledMs] of [[10_000, 5_000], [5_000, 2_000], [3_000, 1_000]] as const) {
  const samples: number[] = [];
  for (let i = 0; i < 3; i++) samples.push(await measure(lockMs, stalledMs));
  process.stdout.write(`${String(lockMs).padStart(14)}  ${String(stalledMs).padStart(17)}  ${samples.join(', ')} (median ${[...samples].sort((x, y) => x - y)[1]})\n`);
}
