import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { requireRedis } from './redis.js';
import { storeKinds, useDaemon } from './daemons.js';

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

describe.each(storeKinds(redisAvailable, ['memory', 'sqlite', 'redis']))('outbox delivery with the $kind store', ({ kind, skip }) => {
  const tag = kind;
  const t = useDaemon(kind, {
    skip,
    key: KEY,
    settings: (d) => {
      writeFileSync(path.join(d.dir, 'late-sink.mjs'), SINK);
      return [
        ['sinks.modules', JSON.stringify([{ path: path.join(d.dir, 'late-sink.mjs'), options: { key: `${tag}-${d.dir}`, failType: 'run.in_progress', failAfterMs: 30 } }])],
        ['sinks.delivery', '{"retryForMs":60000,"backoffBaseMs":50,"backoffCapMs":50,"concurrency":8}'],
      ];
    },
  });
  const journal = (journals[`${tag}-${t.dir}`] = new Journal());

  it.skipIf(skip)('retries an event whose sink promise rejects late, and holds the run’s later events back until it is delivered', async () => {
    const runId = `run_${tag}_late_sink`;
    t.sim.addRun({ threadId: 'thread_delivery', runId, timeline: [{ status: 'in_progress', durationMs: 100 }, { status: 'completed' }], start: 'first_request' });
    const created = await fetch(`${t.base}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: 'thread_delivery', run_id: runId }) });
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
    const metrics = await (await fetch(`${t.base}/metrics`)).text();
    expect(counter(metrics, 'runwatch_sink_deliveries_total', 'sink="late",outcome="retry"')).toBe(1);
    expect(counter(metrics, 'runwatch_sink_deliveries_total', 'sink="late",outcome="delivered"')).toBe(2);
    expect(counter(metrics, 'runwatch_sink_deliveries_total', 'sink="late",outcome="dead"')).toBe(0);
  });
});
