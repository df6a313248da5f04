import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/daemon/config.js';
import { Daemon } from '../src/daemon/daemon.js';
import type { RunningSimulator } from '../src/simulator.js';
import { startSimulator } from '../src/simulator.js';
import { REDIS_URL, removeKeys, requireRedis, testPrefix } from './redis.js';

const KEY = 'sk-daemon-delivery';
const redisAvailable = await requireRedis();

/**
 * A module sink whose first attempt at each event of type `options.failType` fails late: its
 * promise rejects `options.failAfterMs` after the call. Every call and outcome goes to the
 * journal the test registered under `options.key`.
 */
const SINK = `
import { setTimeout } from 'node:timers/promises';

export default function createSink(options) {
  const journal = globalThis.__runwatchDeliveryJournals[options.key];
  const attempts = new Map();
  return {
    name: 'late',
    async deliver(event) {
      const attempt = (attempts.get(event.id) ?? 0) + 1;
      attempts.set(event.id, attempt);
      journal.record(event.type + ' attempt ' + attempt);
      if (event.type === options.failType && attempt === 1) {
        await setTimeout(options.failAfterMs);
        journal.record(event.type + ' failed');
        throw new Error('the receiver failed late');
      }
      journal.record(event.type + ' delivered');
    },
  };
}
`;

/** What the module sink saw, in order; `until` resolves once a condition holds (no polling). */
class Journal {
  readonly lines: string[] = [];
  #waiters: Array<() => void> = [];

  record(line: string): void {
    this.lines.push(line);
    for (const waiter of this.#waiters) waiter();
  }

  until(condition: (lines: readonly string[]) => boolean, timeoutMs = 10_000): Promise<readonly string[]> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (!condition(this.lines)) return;
        clearTimeout(timer);
        this.#waiters = this.#waiters.filter((w) => w !== check);
        resolve([...this.lines]);
      };
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== check);
        reject(new Error(`sink journal: condition not met; got ${this.lines.join(', ')}`));
      }, timeoutMs);
      this.#waiters.push(check);
      check();
    });
  }
}

const journals = ((globalThis as { __runwatchDeliveryJournals?: Record<string, Journal> }).__runwatchDeliveryJournals ??= {});

/** A counter's value from a Prometheus text exposition, 0 when absent. */
function counter(text: string, name: string, labels: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
}

const stores = [
  { kind: 'memory' as const, skip: false },
  { kind: 'sqlite' as const, skip: false },
  { kind: 'redis' as const, skip: !redisAvailable },
];

describe.each(stores)('outbox delivery with the $kind store', ({ kind, skip }) => {
  let sim: RunningSimulator;
  let daemon: Daemon;
  let base: string;
  const prefix = testPrefix();
  const tag = kind === 'sqlite' ? 'sq' : 'rd';
  const journal = (journals[`${tag}-${prefix}`] = new Journal());

  beforeAll(async () => {
    if (skip) return;
    sim = await startSimulator({ apiKey: KEY });
    const dir = mkdtempSync(path.join(tmpdir(), 'runwatch-delivery-'));
    const sinkPath = path.join(dir, 'late-sink.mjs');
    writeFileSync(sinkPath, SINK);
    const config = loadConfig({
      overrides: [
        ['daemon.port', '0'],
        ['daemon.dataDir', JSON.stringify(dir)],
        ['store.kind', JSON.stringify(kind)],
        ['store.prefix', JSON.stringify(prefix)],
        ['sinks.stdout.enabled', 'false'],
        ['sinks.modules', JSON.stringify([{ path: sinkPath, options: { key: `${tag}-${prefix}`, failType: 'run.in_progress', failAfterMs: 30 } }])],
        ['sinks.delivery', '{"retryForMs":60000,"backoffBaseMs":50,"backoffCapMs":50,"concurrency":8}'],
        ['watch.provider', '"openai"'],
        ['watch.baseUrl', JSON.stringify(sim.baseUrl)],
        ['watch.policy', '{"jitter":0,"intervals":{"in_progress":{"baseMs":100,"capMs":100}}}'],
      ],
    });
    const secrets = { credentials: { apiKey: KEY }, redisUrl: REDIS_URL };
    daemon = await Daemon.start(config, secrets, pino({ level: 'silent' }));
    base = `http://127.0.0.1:${daemon.address.port}`;
  });
  afterAll(async () => {
    if (skip) return;
    await daemon.shutdown();
    await sim.close();
    if (kind === 'redis') await removeKeys(prefix);
  });

  it.skipIf(skip)('retries an event whose sink promise rejects late, and holds the run’s later events back until it is delivered', async () => {
    const runId = `run_${tag}_late_sink`;
    sim.addRun({ threadId: 'thread_delivery', runId, timeline: [{ status: 'in_progress', durationMs: 100 }, { status: 'completed' }], start: 'first_request' });
    const created = await fetch(`${base}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: 'thread_delivery', run_id: runId }) });
    expect(created.status).toBe(201);

    const lines = await journal.until((seen) => seen.includes('run.completed delivered'));
    expect(lines).toEqual([
      'run.in_progress attempt 1',
      'run.in_progress failed',
      'run.in_progress attempt 2',
      'run.in_progress delivered',
      'run.completed attempt 1',
      'run.completed delivered',
    ]);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(counter(metrics, 'runwatch_sink_deliveries_total', 'sink="late",outcome="retry"')).toBe(1);
    expect(counter(metrics, 'runwatch_sink_deliveries_total', 'sink="late",outcome="delivered"')).toBe(2);
    expect(counter(metrics, 'runwatch_sink_deliveries_total', 'sink="late",outcome="dead"')).toBe(0);
  });
});
