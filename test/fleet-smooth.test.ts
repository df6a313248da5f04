import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import type { EngineSettings } from '../src/daemon/engine.js';
import { RedisEngine } from '../src/daemon/redis-engine.js';
import type { RunningSimulator } from '../src/simulator.js';
import { RedisStore } from '../src/store/redis.js';
import { REDIS_URL, removeKeys, requireRedis, testPrefix } from './redis.js';
import { useSimulator } from './sim.js';

const KEY = 'sk-fleet-smooth-0001';
const RATE = 20;
const WATCHES = 40;
const redisAvailable = await requireRedis();
const prefix = testPrefix();
const clients: Redis[] = [];

let sim!: RunningSimulator;
useSimulator({ apiKey: KEY }, (started) => (sim = started));

afterAll(async () => {
  await removeKeys(prefix);
  await Promise.all(clients.map((client) => client.quit().catch(() => undefined)));
});

/** The most requests in any window of `windowMs` (sliding, not aligned to seconds). */
function busiestWindow(timesMs: readonly number[], windowMs: number): number {
  const sorted = [...timesMs].sort((a, b) => a - b);
  let best = 0;
  for (let start = 0, end = 0; end < sorted.length; end += 1) {
    while (sorted[end]! - sorted[start]! >= windowMs) start += 1;
    best = Math.max(best, end - start + 1);
  }
  return best;
}

/** Three replicas on one fleet budget of `RATE`/s, each watch wanting a poll every 100 ms (demand far above the budget). */
function fleet(budgetKey: string): RedisEngine[] {
  const settings: EngineSettings = {
    watcher: {
      provider: 'openai',
      baseUrl: sim.baseUrl,
      credentials: { apiKey: KEY },
      policy: { jitter: 0, intervals: { in_progress: { baseMs: 100, capMs: 100 } } },
      maxRequestsPerSecond: RATE,
      logger: pino({ level: 'silent' }),
    },
    toolHandler: undefined,
    cancelAfterStallMs: undefined,
  };
  return Array.from({ length: 3 }, () => {
    const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
    clients.push(redis);
    // six watch partitions: two for each replica to own, so all three poll
    return new RedisEngine(redis, new RedisStore(redis, `${prefix}${budgetKey}:`, 6), settings, { lockDurationMs: 2_000, stalledIntervalMs: 1_000, repairIntervalMs: 60_000, logger: pino({ level: 'silent' }) });
  });
}

/** Adds `count` endless runs and spreads their watches over the replicas at once; returns the run ids. */
async function addWatches(engines: readonly RedisEngine[], name: string, count: number): Promise<string[]> {
  const runIds = Array.from({ length: count }, (_, i) => `run_${name}_${i}`);
  for (const runId of runIds) sim.addRun({ threadId: `thread_${name}`, runId, timeline: [{ status: 'in_progress' }] });
  await Promise.all(runIds.map((runId, i) => engines[i % engines.length]!.add({ kind: 'run', id: `w_${runId}`, thread_id: `thread_${name}`, run_id: runId })));
  return runIds;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe.skipIf(!redisAvailable)('the fleet budget on Redis', () => {
  it(`keeps three replicas within ${RATE} requests/s (+10 %) in every 1 s window, from the first second on`, async () => {
    const engines = fleet('smooth');
    try {
      await Promise.all(engines.map((engine) => engine.start()));
      // the watches arrive at once, on every replica: a budget that hands out a second's quota at once shows here
      const runIds = await addWatches(engines, 'smooth', WATCHES);
      const times = (): number[] => runIds.flatMap((runId) => sim.requests(runId).filter((r) => r.method === 'GET').map((r) => r.atMs));
      while (times().length < RATE * 4) await sleep(50);
      const all = times();
      expect(busiestWindow(all, 1_000)).toBeLessThanOrEqual(Math.floor(RATE * 1.1));
      // and the budget was used: no window far below the rate once it ran
      expect(all.length).toBeGreaterThanOrEqual(RATE * 4);
      // every replica took part
      const perReplica = new Set(runIds.flatMap((runId) => sim.requests(runId).map((r) => String(r.headers['x-runwatch-instance']))));
      expect(perReplica.size).toBe(3);
    } finally {
      await Promise.all(engines.map((engine) => engine.close(500)));
    }
  }, 30_000);

  it('slows the whole fleet down when the API answers 429, and speeds it up again once it stops', async () => {
    const LIMIT = 8;
    const engines = fleet('aimd');
    try {
      await Promise.all(engines.map((engine) => engine.start()));
      const runIds = await addWatches(engines, 'aimd', WATCHES);
      // every GET of these runs, with whether the rate limit refused it (no status served)
      const gets = (): Array<{ atMs: number; limited: boolean }> =>
        runIds.flatMap((runId) => sim.requests(runId).filter((r) => r.method === 'GET').map((r) => ({ atMs: r.atMs, limited: r.status === null })));
      while (gets().length < RATE) await sleep(50);
      // the API tightens its limit to well under the budget for 6 s
      sim.setRateLimit({ requestsPerSecond: LIMIT, burst: 1 });
      const limitedFromMs = Date.now();
      await sleep(6_000);
      const slowRate = Math.max(...engines.map((engine) => engine.budget().ratePerSecond));
      const lastTwoSeconds = gets().filter((r) => r.atMs >= limitedFromMs + 4_000);
      sim.setRateLimit(null);
      const liftedAtMs = Date.now();
      // the fleet's rate (the gauge, every replica's view of the shared bucket) came down to about the API's limit
      expect(slowRate).toBeLessThanOrEqual(LIMIT * 1.3);
      // so the API was asked at about its limit, and most requests got through
      expect(lastTwoSeconds.length).toBeLessThanOrEqual(2 * LIMIT * 1.5);
      expect(lastTwoSeconds.filter((r) => r.limited).length / lastTwoSeconds.length).toBeLessThan(0.25);
      // once the 429s stop the rate grows back (slowly: +2 %/s while the budget is the bottleneck)
      await sleep(5_000);
      const recovered = Math.min(...engines.map((engine) => engine.budget().ratePerSecond));
      expect(recovered).toBeGreaterThan(slowRate * 1.05);
      expect(gets().filter((r) => r.atMs >= liftedAtMs && r.limited)).toEqual([]);
    } finally {
      sim.setRateLimit(null);
      await Promise.all(engines.map((engine) => engine.close(500)));
    }
  }, 40_000);
});
