// Scale of the Redis mode on this machine: polls per second and scheduling lateness with 1, 2
// and 3 replicas, Redis's CPU share and Redis commands per poll. Every watch polls about once a
// second, so the offered load is about the number of watches per second.
// Needs Redis (RUNWATCH_TEST_REDIS_URL, default redis://127.0.0.1:6379) and a build.
// Usage: npm run bench:replicas [-- <watches>]
import { once } from 'node:events';
import { Redis } from 'ioredis';
// from the build: node runs this file with type stripping, which does not map .js to .ts
import { startSimulator } from '../dist/simulator.js';
import { diff, latenessBuckets, quantile, startReplica } from './replica.ts';

const REDIS_URL = process.env.RUNWATCH_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
const KEY = 'sk-bench-replicas';
const WATCHES = Number(process.argv[2] ?? 600);
const WARMUP_MS = 5_000;
const MEASURE_MS = 15_000;

async function redisStats(redis: Redis): Promise<{ cpuS: number; commands: number }> {
  const info = await redis.info();
  const field = (name: string): number => Number(new RegExp(`^${name}:([\\d.]+)`, 'm').exec(info)?.[1] ?? 0);
  return { cpuS: field('used_cpu_sys') + field('used_cpu_user'), commands: field('total_commands_processed') };
}

async function run(replicaCount: number): Promise<string> {
  const prefix = `rwbench:${process.pid}:${replicaCount}:`;
  const sim = await startSimulator({ apiKey: KEY });
  const ids = Array.from({ length: WATCHES }, (_, i) => `run_b${i}`);
  for (const runId of ids) sim.addRun({ threadId: 'thread_b', runId, timeline: [{ status: 'in_progress' }] });
  const replicas = await Promise.all(Array.from({ length: replicaCount }, () => startReplica(sim.baseUrl, REDIS_URL, KEY, [`store.prefix=${JSON.stringify(prefix)}`])));
  const redis = new Redis(REDIS_URL);
  try {
    for (let i = 0; i < ids.length; i += 50) {
      await Promise.all(
        ids.slice(i, i + 50).map((runId, j) =>
          fetch(`http://127.0.0.1:${replicas[(i + j) % replicaCount]!.port}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: 'thread_b', run_id: runId }) }),
        ),
      );
    }
    await new Promise((resolve) => setTimeout(resolve, WARMUP_MS));
    const count = (): number => ids.reduce((sum, id) => sum + sim.requests(id).length, 0);
    const [polls0, redis0, late0] = [count(), await redisStats(redis), await latenessBuckets(replicas.map((r) => r.port))];
    const t0 = Date.now();
    await new Promise((resolve) => setTimeout(resolve, MEASURE_MS));
    const seconds = (Date.now() - t0) / 1000;
    const [polls1, redis1, late1] = [count(), await redisStats(redis), await latenessBuckets(replicas.map((r) => r.port))];
    const polls = polls1 - polls0;
    const lateness = diff(late1, late0);
    const ms = (s: number): string => (s === Infinity ? '>30000' : String(Math.round(s * 1000)));
    return [
      String(replicaCount).padStart(8),
      String(WATCHES).padStart(7),
      (polls / seconds).toFixed(0).padStart(11),
      ms(quantile(lateness, 0.5)).padStart(13),
      ms(quantile(lateness, 0.99)).padStart(13),
      `${(((redis1.cpuS - redis0.cpuS) / seconds) * 100).toFixed(0)}%`.padStart(15),
      ((redis1.commands - redis0.commands) / polls).toFixed(1).padStart(15),
    ].join('  ');
  } finally {
    for (const replica of replicas) replica.child.kill('SIGTERM');
    await Promise.all(replicas.map((r) => once(r.child, 'close')));
    await sim.close();
    for (let cursor = '0'; ; ) {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      if (keys.length) await redis.del(...keys);
      if ((cursor = next) === '0') break;
    }
    redis.disconnect();
  }
}

process.stdout.write(`replicas  watches  polls/s      lateness p50  lateness p99  Redis CPU (1 core)  Redis cmds/poll\n`);
for (const replicaCount of [1, 2, 3]) process.stdout.write(`${await run(replicaCount)}\n`);
process.stdout.write('lateness: upper bounds of histogram buckets (ms), from the replicas\' runwatch_poll_lateness_seconds\n');
