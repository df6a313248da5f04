// Measures what the web view's table costs the daemon with 10,000 watches: one page (50 rows) of
// GET /v1/watches as the store answers it, in creation order (the index) and with what the page
// asks for (needing attention first, a status, an id search), on SQLite and on Redis.
// Needs a build (npm run build); Redis at RUNWATCH_TEST_REDIS_URL (default redis://127.0.0.1:6379), skipped if none answers.
// Usage: npm run bench:list [-- <watches>]
import { Redis } from 'ioredis';
// from the build: node runs this file with type stripping, which does not map .js to .ts
import { RedisStore, SqliteStore } from '../dist/daemon/index.js';
import type { WatchQuery, WatchStore } from '../dist/daemon/index.js';

const WATCHES = Number(process.argv[2] ?? 10_000);
const REDIS_URL = process.env.RUNWATCH_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
const STATUSES = ['queued', 'in_progress', 'in_progress', 'in_progress', 'requires_action', 'completed'];

/** Fills a store with `WATCHES` runs: one event each, a 1 KB snapshot, a few stalled or failing. */
async function fill(store: WatchStore): Promise<void> {
  const padding = 'x'.repeat(1000);
  for (let i = 0; i < WATCHES; i++) {
    const id = `w_${String(i).padStart(6, '0')}`;
    const runId = `run_${i}`;
    await store.create({ kind: 'run', id, thread_id: `thread_${i % 100}`, run_id: runId }, i);
    const status = STATUSES[i % STATUSES.length]!;
    const progress = {
      status, seq: 1, polls: 3, unchangedPolls: 0, consecutiveErrors: i % 97 === 0 ? 2 : 0, statusSinceMs: i, stallReported: i % 89 === 0, deadlineAtMs: Date.now() + 3_600_000,
      lastSnapshot: { id: runId, status, instructions: padding }, lastFailure: null, handledCalls: null, approvalReported: null, cancelRequested: false, next: { kind: 'poll' as const, atMs: Date.now() + 1000 }, notBeforeMs: null,
    };
    const event = { id: `${id}.1`, type: `run.${status}`, seq: 1, watch_id: id, thread_id: `thread_${i % 100}`, run_id: runId, from: null, to: status, observed_at: new Date().toISOString(), run: progress.lastSnapshot };
    await store.commit(id, 0, { progress, events: [event as never], state: status === 'completed' ? 'finished' : 'active' });
  }
}

/** Median time of `runs` calls of `list(query)`, in ms. */
async function median(store: WatchStore, query: WatchQuery, runs = 15): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const start = performance.now();
    await store.list(query);
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)]!;
}

const QUERIES: Array<[string, WatchQuery]> = [
  ['creation order (index)', { limit: 50 }],
  ['needing attention first', { limit: 50, order: 'attention' }],
  ['attention, 2nd page', { limit: 50, order: 'attention', after: 'w_000089' }],
  ['status requires_action', { limit: 50, status: 'requires_action', order: 'attention' }],
  ['search "run_12"', { limit: 50, search: 'run_12', order: 'attention' }],
];

async function report(name: string, store: WatchStore): Promise<void> {
  const fillStart = performance.now();
  await fill(store);
  process.stdout.write(`\n${name}: ${WATCHES} watches (filled in ${((performance.now() - fillStart) / 1000).toFixed(1)} s)\n`);
  let base = 0;
  for (const [label, query] of QUERIES) {
    const ms = await median(store, query);
    base ||= ms;
    process.stdout.write(`  ${label.padEnd(28)} ${ms.toFixed(2).padStart(8)} ms per page   x${(ms / base).toFixed(1)} the index\n`);
  }
}

const sqlite = new SqliteStore(':memory:', { sinks: ['stdout'] });
await report('SQLite (memory)', sqlite);
await sqlite.close();

const redis = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null });
redis.on('error', () => undefined);
const up = await redis.connect().then(
  () => true,
  () => false,
);
if (!up) process.stdout.write(`\nRedis: skipped, nothing answers at ${REDIS_URL}\n`);
else {
  const prefix = `rwbench:list:${process.pid}:`;
  try {
    await report('Redis', new RedisStore(redis, prefix, 4));
  } finally {
    const keys = await redis.keys(`${prefix}*`);
    for (let i = 0; i < keys.length; i += 1000) await redis.del(...keys.slice(i, i + 1000));
    redis.disconnect();
  }
}
