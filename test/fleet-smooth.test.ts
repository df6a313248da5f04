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

describe.skipIf(!redisAvailable)('the fleet budget on Redis', () => {
  it(`keeps three replicas within ${RATE} requests/s (+10 %) in every 1 s window, from the first second on`, async () => {
    const settings: EngineSettings = {
      watcher: {
        provider: 'openai',
        baseUrl: sim.baseUrl,
        credentials: { apiKey: KEY },
        // every watch wants a poll each 100 ms: demand is far above the budget
        policy: { jitter: 0, intervals: { in_progress: { baseMs: 100, capMs: 100 } } },
        maxRequestsPerSecond: RATE,
        logger: pino({ level: 'silent' }),
      },
      toolHandler: undefined,
      cancelAfterStallMs: undefined,
    };
    const engines = Array.from({ length: 3 }, () => {
      const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
      clients.push(redis);
      // six watch partitions: two for each replica to own
      return new RedisEngine(redis, new RedisStore(redis, prefix, 6), settings, { lockDurationMs: 2_000, stalledIntervalMs: 1_000, repairIntervalMs: 60_000, logger: pino({ level: 'silent' }) });
    });
    try {
      await Promise.all(engines.map((engine) => engine.start()));
      const runIds = Array.from({ length: WATCHES }, (_, i) => `run_smooth_${i}`);
      for (const runId of runIds) sim.addRun({ threadId: 'thread_smooth', runId, timeline: [{ status: 'in_progress' }] });
      // the watches arrive at once, on every replica: a budget that hands out a second's quota at once shows here
      await Promise.all(runIds.map((runId, i) => engines[i % 3]!.add({ kind: 'run', id: `w_${runId}`, thread_id: 'thread_smooth', run_id: runId })));
      const times = (): number[] => runIds.flatMap((runId) => sim.requests(runId).filter((r) => r.method === 'GET').map((r) => r.atMs));
      while (times().length < RATE * 4) await new Promise((resolve) => setTimeout(resolve, 50));
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
});
