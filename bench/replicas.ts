// Scale of the Redis mode on this machine: polls per second and scheduling lateness with 1, 2
// and 3 replicas, Redis's CPU share and Redis commands per poll. Every watch polls about once a
// second, so the offered load is about the number of watches per second.
// Redis: a private redis-server on a free port when one is on PATH (so other clients of a shared
// Redis do not count), else RUNWATCH_TEST_REDIS_URL (default redis://127.0.0.1:6379). Needs a build.
// Commands per poll count those run inside scripts (INFO commandstats, diffed over the window).
// Usage: npm run bench:replicas [-- <watches>]
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { createInterface } from 'node:readline';
import { Redis } from 'ioredis';
// from the build: node runs this file with type stripping, which does not map .js to .ts
import { startSimulator } from '../dist/simulator.js';
import { diff, latenessBuckets, quantile, startReplica } from './replica.ts';

const PRIVATE_REDIS = spawnSync('redis-server', ['--version']).status === 0;
const KEY = 'sk-bench-replicas';
const WATCHES = Number(process.argv[2] ?? 600);
const WARMUP_MS = 5_000;
const MEASURE_MS = 15_000;

interface RedisStats {
  readonly cpuS: number;
  /** Calls by command, those run inside scripts included (`INFO commandstats`). */
  readonly calls: Map<string, number>;
}

async function redisStats(redis: Redis): Promise<RedisStats> {
  const info = await redis.info('all');
  const field = (name: string): number => Number(new RegExp(`^${name}:([\\d.]+)`, 'm').exec(info)?.[1] ?? 0);
  const calls = new Map<string, number>();
  for (const match of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) calls.set(match[1]!, Number(match[2]));
  return { cpuS: field('used_cpu_sys') + field('used_cpu_user'), calls };
}

/** A private redis-server on a free port; stopped by the returned function. */
async function startRedis(): Promise<{ url: string; stop: () => Promise<void> }> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const port = (probe.address() as { port: number }).port;
  await new Promise((resolve) => probe.close(resolve));
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout });
  await new Promise<void>((resolve) => lines.on('line', (l) => l.includes('Ready to accept connections') && resolve()));
  return {
    url: `redis://127.0.0.1:${port}`,
    stop: async () => {
      child.kill('SIGTERM');
      await once(child, 'close');
    },
  };
}

const byCommand = new Map<string, number>();

async function run(replicaCount: number, redisUrl: string): Promise<string> {
  const prefix = `rwbench:${process.pid}:${replicaCount}:`;
  const sim = await startSimulator({ apiKey: KEY });
  const ids = Array.from({ length: WATCHES }, (_, i) => `run_b${i}`);
  for (const runId of ids) sim.addRun({ threadId: 'thread_b', runId, timeline: [{ status: 'in_progress' }] });
  const replicas = await Promise.all(Array.from({ length: replicaCount }, () => startReplica(sim.baseUrl, redisUrl, KEY, [`store.prefix=${JSON.stringify(prefix)}`])));
  const redis = new Redis(redisUrl);
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
    let commands = 0;
    for (const [name, calls] of redis1.calls) {
      const delta = calls - (redis0.calls.get(name) ?? 0);
      commands += delta;
      if (delta > 0) byCommand.set(`${replicaCount} ${name}`, delta / polls);
    }
    const ms = (s: number): string => (s === Infinity ? '>30000' : String(Math.round(s * 1000)));
    return [
      String(replicaCount).padStart(8),
      String(WATCHES).padStart(7),
      (polls / seconds).toFixed(0).padStart(11),
      ms(quantile(lateness, 0.5)).padStart(13),
      ms(quantile(lateness, 0.99)).padStart(13),
      `${(((redis1.cpuS - redis0.cpuS) / seconds) * 100).toFixed(0)}%`.padStart(18),
      (((redis1.cpuS - redis0.cpuS) / polls) * 1e6).toFixed(0).padStart(18),
      (commands / polls).toFixed(1).padStart(15),
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

const redisServer = PRIVATE_REDIS ? await startRedis() : undefined;
const redisUrl = redisServer?.url ?? process.env.RUNWATCH_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
process.stdout.write(`Redis: ${redisServer ? 'a private redis-server' : redisUrl}\n`);
process.stdout.write(`replicas  watches  polls/s      lateness p50  lateness p99  Redis CPU (1 core)  Redis CPU/poll (µs)  Redis cmds/poll\n`);
try {
  for (const replicaCount of [1, 2, 3]) process.stdout.write(`${await run(replicaCount, redisUrl)}\n`);
} finally {
  await redisServer?.stop();
}
process.stdout.write('Redis commands per poll, by command (inside scripts included; >= 0.05 per poll):\n');
for (const [key, perPoll] of [...byCommand].sort((a, b) => a[0].localeCompare(b[0], 'en', { numeric: true }) || b[1] - a[1])) {
  if (perPoll >= 0.05) process.stdout.write(`  ${key.padEnd(28)} ${perPoll.toFixed(2)}\n`);
}
process.stdout.write('lateness: upper bounds of histogram buckets (ms), from the replicas\' runwatch_poll_lateness_seconds\n');
