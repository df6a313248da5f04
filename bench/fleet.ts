// The fleet budget on Redis, measured where an API would see it: three replicas (CLI daemons,
// Redis store) share a budget of 20 requests/s with far more demand (120 watches that each want a
// poll every 200 ms). First the busiest windows; then the API limits itself to 10 requests/s for
// 20 s (429 with retry-after beyond it), then lifts the limit. Two contenders in the same run:
// the default bucket (a twentieth of a second's requests) and a bucket of a whole second's
// (`watch.burst` = the rate), the way a per-second limiter hands out its quota.
// Needs Redis (RUNWATCH_TEST_REDIS_URL, default redis://127.0.0.1:6379) and a build.
// Usage: npm run bench:fleet
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
// from the build: node runs this file with type stripping, which does not map .js to .ts
import { startSimulator } from '../dist/simulator.js';
import { startReplica } from './replica.ts';

const REDIS_URL = process.env.RUNWATCH_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
const KEY = 'sk-bench-fleet';
const RATE = 20;
const LIMIT = 10;
const REPLICAS = 3;
const WATCHES = 120;
const STEADY_MS = 20_000;
const LIMITED_MS = 20_000;
const LIFTED_MS = 30_000;
const SLICE_MS = 5_000;

interface Get {
  readonly atMs: number;
  readonly limited: boolean;
}

/** A replica on the fleet's budget whose watches each want a poll every 200 ms, with `extra` settings. */
function fleetReplica(simUrl: string, prefix: string, extra: readonly string[]): Promise<{ child: ChildProcess; port: number }> {
  const settings = [`store.prefix=${JSON.stringify(prefix)}`, `watch.maxRequestsPerSecond=${RATE}`, 'watch.maxInFlight=32', 'watch.policy={"jitter":0,"intervals":{"in_progress":{"baseMs":200,"capMs":200}}}'];
  return startReplica(simUrl, REDIS_URL, KEY, [...settings, ...extra]);
}

/** The most requests in any window of `windowMs` (sliding). */
function busiest(times: readonly number[], windowMs: number): number {
  const sorted = [...times].sort((a, b) => a - b);
  let best = 0;
  for (let start = 0, end = 0; end < sorted.length; end += 1) {
    while (sorted[end]! - sorted[start]! >= windowMs) start += 1;
    best = Math.max(best, end - start + 1);
  }
  return best;
}

/** Requests/s and 429 share in each slice of [fromMs, toMs). */
function slices(gets: readonly Get[], fromMs: number, toMs: number): Array<{ perSecond: number; limitedShare: number }> {
  const out = [];
  for (let at = fromMs; at + SLICE_MS <= toMs + 1; at += SLICE_MS) {
    const inSlice = gets.filter((g) => g.atMs >= at && g.atMs < at + SLICE_MS);
    out.push({ perSecond: inSlice.length / (SLICE_MS / 1000), limitedShare: inSlice.length === 0 ? 0 : inSlice.filter((g) => g.limited).length / inSlice.length });
  }
  return out;
}

/** The fleet's rate as each replica's gauge shows it (the shared bucket's), the lowest. */
async function gaugeRate(ports: readonly number[]): Promise<number> {
  const rates = await Promise.all(
    ports.map(async (port) => Number(/^runwatch_budget_requests_per_second (\S+)$/m.exec(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text())?.[1] ?? NaN)),
  );
  return Math.min(...rates);
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function contender(name: string, extra: readonly string[]): Promise<string> {
  const prefix = `rwbench:fleet:${process.pid}:${name.length}:`;
  const sim = await startSimulator({ apiKey: KEY });
  const runIds = Array.from({ length: WATCHES }, (_, i) => `run_f${i}`);
  for (const runId of runIds) sim.addRun({ threadId: 'thread_f', runId, timeline: [{ status: 'in_progress' }] });
  const replicas = await Promise.all(Array.from({ length: REPLICAS }, () => fleetReplica(sim.baseUrl, prefix, extra)));
  const ports = replicas.map((r) => r.port);
  const gets = (): Get[] => runIds.flatMap((runId) => sim.requests(runId).filter((r) => r.method === 'GET').map((r) => ({ atMs: r.atMs, limited: r.status === null })));
  try {
    // every replica is given its share of the watches at once
    await Promise.all(
      runIds.map((runId, i) =>
        fetch(`http://127.0.0.1:${ports[i % REPLICAS]}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: 'thread_f', run_id: runId }) }),
      ),
    );
    while (gets().length === 0) await sleep(20);
    const startMs = Math.min(...gets().map((g) => g.atMs));
    await sleep(startMs + STEADY_MS - Date.now());
    const steady = gets().filter((g) => g.atMs < startMs + STEADY_MS).map((g) => g.atMs);
    sim.setRateLimit({ requestsPerSecond: LIMIT, burst: 1 });
    const limitedAtMs = Date.now();
    await sleep(LIMITED_MS);
    const rateWhenLimited = await gaugeRate(ports);
    sim.setRateLimit(null);
    const liftedAtMs = Date.now();
    await sleep(LIFTED_MS);
    const rateAfter = await gaugeRate(ports);
    const all = gets();
    const limited = slices(all, limitedAtMs, liftedAtMs);
    const lifted = slices(all, liftedAtMs, liftedAtMs + LIFTED_MS);
    const pct = (x: number): string => `${(x * 100).toFixed(0)} %`;
    return [
      name,
      busiest(steady, 1_000),
      busiest(steady, 5_000),
      (steady.length / (STEADY_MS / 1000)).toFixed(1),
      limited.map((s) => pct(s.limitedShare)).join(' / '),
      limited.map((s) => s.perSecond.toFixed(1)).join(' / '),
      rateWhenLimited.toFixed(1),
      `${lifted[0]!.perSecond.toFixed(1)} → ${lifted.at(-1)!.perSecond.toFixed(1)}`,
      rateAfter.toFixed(1),
      pct(lifted.reduce((n, s) => n + s.limitedShare, 0) / lifted.length),
    ].join(' | ');
  } finally {
    for (const { child } of replicas) child.kill('SIGTERM');
    await Promise.all(replicas.map(async ({ child }) => (child.exitCode === null ? once(child, 'exit') : undefined)));
    await sim.close();
    const redis = new Redis(REDIS_URL);
    for await (const keys of redis.scanStream({ match: `${prefix}*`, count: 500 })) if ((keys as string[]).length > 0) await redis.unlink(...(keys as string[]));
    await redis.quit();
  }
}

const header = [
  `Measured ${new Date().toISOString().slice(0, 10)} on ${cpus()[0]?.model.trim() ?? 'unknown CPU'}, ${cpus().length} cores, Node ${process.version}; Redis and the simulator on the same machine.`,
  '',
  `| bucket | busiest 1 s (budget ${RATE}) | busiest 5 s (budget ${RATE * 5}) | requests/s | 429 share while the API allows ${LIMIT}/s, by 5 s | requests/s then, by 5 s | gauge at the end of it | requests/s after the lift, first → last 5 s | gauge 30 s after | 429 share after the lift |`,
  '|---|---:|---:|---:|---|---|---:|---|---:|---:|',
];
const rows = [await contender('a twentieth of a second (default)', []), await contender(`a second (watch.burst=${RATE})`, [`watch.burst=${RATE}`])];
const table = [...header, ...rows.map((row) => `| ${row} |`)].join('\n');
process.stdout.write(`${table}\n`);
writeFileSync(path.join(import.meta.dirname, 'results', 'fleet.md'), `${table}\n`);
