// Redis mode on a local 3-node Redis Cluster: polls per second and lateness with the watches in
// 1 shard (one node does all of Redis's work) and in 3 shards (one per node, as hashing places
// them), two replicas serving every shard; Redis CPU summed over the nodes and the busiest
// node's. Then reads by id through ShardedStore: an id that hashes to its shard (one round trip)
// against one that does not (the home shard, then the others at once).
// Needs redis-server and redis-cli on PATH and a build.
// Usage: npm run bench:shards [-- <watches>]
import { once } from 'node:events';
import { Cluster, Redis } from 'ioredis';
// from the build: node runs this file with type stripping, which does not map .js to .ts
import { startSimulator } from '../dist/simulator.js';
import { RedisStore } from '../dist/store/redis.js';
import { fleetBudgetKey, RedisKeys, shardPrefix } from '../dist/store/redis-keys.js';
import { shardOf, ShardedStore } from '../dist/store/sharded.js';
import { startCluster } from '../test/cluster.ts';
import { diff, latenessBuckets, quantile, startReplica } from './replica.ts';

const KEY = 'sk-bench-shards';
const WATCHES = Number(process.argv[2] ?? 600);
const REPLICAS = 2;
const WARMUP_MS = 5_000;
const MEASURE_MS = 15_000;
const READS = 2_000;

/** CPU seconds each node has used. */
async function nodeCpu(ports: readonly number[]): Promise<number[]> {
  return Promise.all(
    ports.map(async (port) => {
      const redis = new Redis(port, '127.0.0.1');
      const info = await redis.info('cpu');
      redis.disconnect();
      const field = (name: string): number => Number(new RegExp(`^${name}:([\\d.]+)`, 'm').exec(info)?.[1] ?? 0);
      return field('used_cpu_sys') + field('used_cpu_user');
    }),
  );
}

async function run(url: string, ports: readonly number[], shards: number): Promise<string> {
  const prefix = `rwbench:${process.pid}:${shards}:`;
  const sim = await startSimulator({ apiKey: KEY, recordRequests: false });
  const ids = Array.from({ length: WATCHES }, (_, i) => `run_s${i}`);
  for (const runId of ids) sim.addRun({ threadId: 'thread_s', runId, timeline: [{ status: 'in_progress' }] });
  const replicas = await Promise.all(Array.from({ length: REPLICAS }, () => startReplica(sim.baseUrl, url, KEY, [`store.prefix=${JSON.stringify(prefix)}`, `store.shards=${shards}`])));
  try {
    for (let i = 0; i < ids.length; i += 50) {
      await Promise.all(
        ids.slice(i, i + 50).map((runId, j) =>
          fetch(`http://127.0.0.1:${replicas[(i + j) % REPLICAS]!.port}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: 'thread_s', run_id: runId }) }),
        ),
      );
    }
    await new Promise((resolve) => setTimeout(resolve, WARMUP_MS));
    const polls = (): number => ids.reduce((sum, id) => sum + sim.retrieveCount(id), 0);
    const [polls0, cpu0, late0] = [polls(), await nodeCpu(ports), await latenessBuckets(replicas.map((r) => r.port))];
    const t0 = Date.now();
    await new Promise((resolve) => setTimeout(resolve, MEASURE_MS));
    const seconds = (Date.now() - t0) / 1000;
    const [polls1, cpu1, late1] = [polls(), await nodeCpu(ports), await latenessBuckets(replicas.map((r) => r.port))];
    const lateness = diff(late1, late0);
    const shares = cpu1.map((cpu, i) => ((cpu - cpu0[i]!) / seconds) * 100);
    const ms = (s: number): string => (s === Infinity ? '>30000' : String(Math.round(s * 1000)));
    return [
      String(shards).padStart(6),
      String(WATCHES).padStart(7),
      ((polls1 - polls0) / seconds).toFixed(0).padStart(7),
      ms(quantile(lateness, 0.5)).padStart(12),
      ms(quantile(lateness, 0.99)).padStart(12),
      `${shares.reduce((a, b) => a + b, 0).toFixed(0)}%`.padStart(17),
      `${Math.max(...shares).toFixed(0)}%`.padStart(19),
    ].join('  ');
  } finally {
    for (const replica of replicas) replica.child.kill('SIGTERM');
    await Promise.all(replicas.map((r) => once(r.child, 'close')));
    await sim.close();
  }
}

/** Mean microseconds of `READS` reads by id, one after another. */
async function timeReads(store: ShardedStore, ids: readonly string[]): Promise<number> {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < READS; i += 1) await store.get(ids[i % ids.length]!);
  return Number(process.hrtime.bigint() - t0) / 1000 / READS;
}

async function reads(ports: readonly number[]): Promise<string> {
  const redis = new Cluster(ports.map((port) => ({ host: '127.0.0.1', port })));
  const prefix = `rwbench:${process.pid}:reads:`;
  const store = new ShardedStore([0, 1, 2].map((i) => new RedisStore(redis, new RedisKeys(shardPrefix(prefix, i), fleetBudgetKey(prefix)), 4)));
  const routed: string[] = [];
  const foreign: string[] = [];
  for (let i = 0; routed.length < 100 || foreign.length < 100; i += 1) {
    const target = { kind: 'run', thread_id: 'thread_r', run_id: `run_r${i}` } as const;
    const id = `w_read${i}`;
    const home = shardOf(id, 3) === store.shardOfTarget(target);
    if ((home ? routed : foreign).length >= 100) continue;
    await store.create({ ...target, id }, Date.now());
    (home ? routed : foreign).push(id);
  }
  await timeReads(store, routed);
  const [routedUs, foreignUs] = [await timeReads(store, routed), await timeReads(store, foreign)];
  redis.disconnect();
  return `reads by id over 3 shards (${READS} one after another): id in its shard ${routedUs.toFixed(0)} µs, id elsewhere (fan-out) ${foreignUs.toFixed(0)} µs, ratio ${(foreignUs / routedUs).toFixed(2)}`;
}

const cluster = await startCluster(3);
try {
  process.stdout.write(`a local 3-node Redis Cluster, ${REPLICAS} replicas serving every shard, each watch polled about once a second\n`);
  process.stdout.write('shards  watches  polls/s  lateness p50  lateness p99  Redis CPU (nodes)  Redis CPU (busiest)\n');
  for (const shards of [1, 3]) process.stdout.write(`${await run(cluster.url, cluster.ports, shards)}\n`);
  process.stdout.write("lateness: upper bounds of histogram buckets (ms), from the replicas' runwatch_poll_lateness_seconds; CPU as a share of one core\n");
  process.stdout.write(`${await reads(cluster.ports)}\n`);
} finally {
  await cluster.stop();
}
