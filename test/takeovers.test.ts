// runwatch_takeovers_total counts what a replica takes over from one that died: the step job
// whose poll was in flight, and the outbox partition with a delivery it had read but not acknowledged.
import { mkdtempSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startSimulator } from '../src/simulator.js';
import { REDIS_URL, removeKeys, requireRedis, testPrefix } from './redis.js';
import { startCli } from './spawn.js';
import type { CliProcess } from './spawn.js';

const available = await requireRedis();
const prefix = testPrefix();
const KEY = 'sk-takeovers-0001';
afterAll(async () => {
  if (available) await removeKeys(prefix);
});

/** A webhook receiver that never answers: a delivery stays read and unacknowledged. */
async function startSilentReceiver(): Promise<{ url: string; firstRequest: Promise<void>; close(): Promise<void> }> {
  let arrived: () => void = () => undefined;
  const firstRequest = new Promise<void>((resolve) => (arrived = resolve));
  const server = http.createServer(() => arrived());
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`,
    firstRequest,
    close: async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

function startReplica(simUrl: string, webhookUrl: string): { cli: CliProcess; base: Promise<string> } {
  const cli = startCli(
    [
      'daemon',
      '--port',
      '0',
      '--data-dir',
      mkdtempSync(path.join(tmpdir(), 'runwatch-takeover-')),
      ...['store.kind="redis"', `store.prefix=${JSON.stringify(prefix)}`, 'store.partitions=1', 'store.lockDurationMs=2000', 'store.stalledIntervalMs=500', 'store.leaseMs=2000'].flatMap((s) => ['--set', s]),
      ...['watch.provider="openai"', `watch.baseUrl=${JSON.stringify(simUrl)}`, 'watch.requestTimeoutMs=60000', 'watch.maxRequestsPerSecond=1000', 'sinks.stdout.enabled=false', `sinks.webhook.url=${JSON.stringify(webhookUrl)}`].flatMap((s) => ['--set', s]),
    ],
    { OPENAI_API_KEY: KEY, RUNWATCH_REDIS_URL: REDIS_URL },
  );
  const base = cli.waitForStderr((l) => l.includes('daemon listening')).then((line) => `http://127.0.0.1:${(JSON.parse(line) as { port: number }).port}`);
  return { cli, base };
}

describe.skipIf(!available)('runwatch_takeovers_total (needs Redis)', () => {
  it('a replica that outlives a SIGKILLed one counts the step and the partition it took over', async () => {
    const sim = await startSimulator({ apiKey: KEY });
    const receiver = await startSilentReceiver();
    // its first poll never gets an answer: the step is in flight when the replica dies
    sim.addRun({ threadId: 'thread_take', runId: 'run_hung', timeline: [{ status: 'in_progress' }], faults: [{ type: 'hang', from: 1 }] });
    // its event is read by the first replica's outbox, whose delivery never returns
    sim.addRun({ threadId: 'thread_take', runId: 'run_told', timeline: [{ status: 'completed' }] });
    const first = startReplica(sim.baseUrl, receiver.url);
    let second: ReturnType<typeof startReplica> | undefined;
    try {
      const base = await first.base;
      for (const run of ['run_hung', 'run_told']) {
        const res = await fetch(`${base}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: 'thread_take', run_id: run }) });
        expect(res.status).toBe(201);
      }
      await receiver.firstRequest;
      // run_hung was added first and the budget has room for both: its poll went out before run_told's event could
      expect(sim.requests('run_hung').length).toBe(1);
      first.cli.child.kill('SIGKILL');
      await first.cli.done;

      second = startReplica(sim.baseUrl, receiver.url);
      const secondBase = await second.base;
      // the watch partition the dead replica held, taken when its lease lapsed
      await second.cli.waitForStderr((l) => l.includes('took over the watch partition of a replica'));
      await second.cli.waitForStderr((l) => l.includes('took over a partition'));
      const text = await (await fetch(`${secondBase}/metrics`)).text();
      expect(text).toMatch(/^runwatch_takeovers_total\{kind="step"\} [1-9]/m);
      expect(text).toMatch(/^runwatch_takeovers_total\{kind="partition"\} 1$/m);
    } finally {
      for (const replica of [first, second]) if (replica && replica.cli.child.exitCode === null) replica.cli.child.kill('SIGKILL');
      await receiver.close();
      await sim.close();
    }
  });
});
