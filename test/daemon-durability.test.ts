import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { RunningSimulator, SimulatedRun } from '../src/simulator.js';
import { TERMINAL_RUN_STATUSES } from '../src/status.js';
import { expectCompleteAndOrdered, startReceiver, terminalRuns } from './receiver.js';
import { startCli } from './spawn.js';
import type { CliProcess } from './spawn.js';
import { useSimulator } from './sim.js';

const KEY = 'sk-durability-key-0001';
const SECRET = `whsec_${Buffer.from('a-webhook-secret-of-32-bytes!!!!').toString('base64')}`;
const TOKEN = 'durability-token';
const TERMINAL = new Set<string>(TERMINAL_RUN_STATUSES);
let sim: RunningSimulator;

useSimulator({ apiKey: KEY }, (started) => (sim = started));

/** Deterministic runs: queued, in_progress, then one of the terminal statuses. */
function makeRuns(prefix: string, count: number): SimulatedRun[] {
  let seed = 12345;
  const random = (): number => ((seed = (seed * 48271) % 2147483647) - 1) / 2147483646;
  return Array.from({ length: count }, (_, i) => ({
    threadId: `thread_${prefix}`,
    runId: `run_${prefix}_${i}`,
    start: 'first_request' as const,
    timeline: [
      { status: 'queued', durationMs: 200 + Math.floor(random() * 600) },
      { status: 'in_progress', durationMs: 800 + Math.floor(random() * 3000) },
      { status: [...TERMINAL][i % TERMINAL.size]! },
    ],
  }));
}

interface RunningDaemon {
  readonly cli: CliProcess;
  readonly base: string;
  /** Active watches it picked up from the store at start. */
  readonly resumed: number;
}

async function startDaemon(dataDir: string, webhookUrl: string, extra: string[] = []): Promise<RunningDaemon> {
  const cli = startCli(
    [
      'daemon',
      '--port',
      '0',
      '--data-dir',
      dataDir,
      '--set',
      'watch.provider="openai"',
      '--set',
      `watch.baseUrl=${JSON.stringify(sim.baseUrl)}`,
      '--set',
      'watch.maxRequestsPerSecond=2000',
      '--set',
      'watch.maxInFlight=64',
      '--set',
      'watch.policy={"intervals":{"queued":{"baseMs":200,"capMs":600},"in_progress":{"baseMs":300,"capMs":900}}}',
      '--set',
      'sinks.stdout.enabled=false',
      '--set',
      `sinks.webhook.url=${JSON.stringify(webhookUrl)}`,
      '--set',
      'sinks.delivery.backoffBaseMs=100',
      '--set',
      'sinks.delivery.backoffCapMs=500',
      '--set',
      'daemon.shutdownTimeoutMs=5000',
      ...extra,
    ],
    { OPENAI_API_KEY: KEY, RUNWATCH_WEBHOOK_SECRET: SECRET, RUNWATCH_CONTROL_TOKEN: TOKEN },
  );
  const line = await cli.waitForStderr((l) => l.includes('daemon listening'));
  const { port, resumed } = JSON.parse(line) as { port: number; resumed: number };
  return { cli, base: `http://127.0.0.1:${port}`, resumed };
}

async function addWatches(base: string, runs: readonly SimulatedRun[]): Promise<void> {
  for (let i = 0; i < runs.length; i += 20) {
    await Promise.all(
      runs.slice(i, i + 20).map(async (run) => {
        const res = await fetch(`${base}/v1/watches`, {
          method: 'POST',
          headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
          body: JSON.stringify({ thread_id: run.threadId, run_id: run.runId }),
        });
        expect([200, 201]).toContain(res.status);
      }),
    );
  }
}

describe('daemon durability', () => {
  it('survives two kill -9 and a SIGTERM mid-way: every watch ends, every event arrives once or more, in order', async () => {
    const receiver = await startReceiver(SECRET);
    const dataDir = mkdtempSync(path.join(tmpdir(), 'runwatch-durable-'));
    const runs = makeRuns('dur', 200);
    for (const run of runs) sim.addRun(run);
    try {
      let daemon = await startDaemon(dataDir, receiver.url);
      await addWatches(daemon.base, runs.slice(0, 100));
      await receiver.waitFor((r) => r.length >= 60);
      daemon.cli.child.kill('SIGKILL');
      expect((await daemon.cli.done).signal).toBe('SIGKILL');

      daemon = await startDaemon(dataDir, receiver.url);
      expect(daemon.resumed).toBeGreaterThan(0);
      await addWatches(daemon.base, runs.slice(100));
      // adding the same runs again changes nothing
      await addWatches(daemon.base, runs.slice(0, 10));
      await receiver.waitFor((r) => r.length >= 250);
      daemon.cli.child.kill('SIGKILL');
      await daemon.cli.done;

      daemon = await startDaemon(dataDir, receiver.url);
      expect(daemon.resumed).toBeGreaterThan(0);
      await receiver.waitFor((r) => r.length >= 350);
      const stoppedAt = Date.now();
      daemon.cli.child.kill('SIGTERM');
      const graceful = await daemon.cli.done;
      expect(graceful.code, graceful.stderr).toBe(0);
      expect(Date.now() - stoppedAt).toBeLessThan(5_000);

      daemon = await startDaemon(dataDir, receiver.url);
      expect(daemon.resumed).toBeGreaterThan(0);
      await receiver.waitFor(() => terminalRuns(receiver) === runs.length, 90_000);
      const list = (await (await fetch(`${daemon.base}/v1/watches?state=active`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as { data: unknown[] };
      expect(list.data).toEqual([]);
      daemon.cli.child.kill('SIGTERM');
      expect((await daemon.cli.done).code).toBe(0);

      expectCompleteAndOrdered(receiver, runs);
      // no run was polled by two requests at once, even across restarts
      expect(Math.max(...runs.map((r) => sim.maxConcurrent(r.runId)))).toBe(1);
    } finally {
      await receiver.close();
    }
  }, 180_000);

  it('loses nothing while the webhook receiver is down for a while', async () => {
    const receiver = await startReceiver(SECRET);
    receiver.answer = 503;
    const dataDir = mkdtempSync(path.join(tmpdir(), 'runwatch-down-'));
    const runs = makeRuns('down', 20);
    for (const run of runs) sim.addRun(run);
    try {
      const daemon = await startDaemon(dataDir, receiver.url, ['--log-level', 'debug']);
      await addWatches(daemon.base, runs);
      await receiver.waitFor(() => receiver.attempts >= 60, 60_000);
      expect(receiver.received).toEqual([]);
      receiver.answer = 200;
      await receiver.waitFor(() => terminalRuns(receiver) === runs.length, 60_000);
      const metrics = await (await fetch(`${daemon.base}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).text();
      expect(metrics).toMatch(/runwatch_sink_deliveries_total\{sink="webhook",outcome="retry"\} [1-9]/);
      daemon.cli.child.kill('SIGTERM');
      const ended = await daemon.cli.done;
      expect(ended.code).toBe(0);
      expectCompleteAndOrdered(receiver, runs);
      // secrets never reach the log, even at debug level with failing deliveries
      expect(ended.stderr).toContain('"level":20');
      for (const secret of [KEY, TOKEN, SECRET, SECRET.slice(6)]) expect(ended.stderr).not.toContain(secret);
    } finally {
      await receiver.close();
    }
  }, 120_000);

  it('dead-letters what the receiver refuses for good, and keeps delivering the rest', async () => {
    const receiver = await startReceiver(SECRET);
    receiver.answer = 400;
    const dataDir = mkdtempSync(path.join(tmpdir(), 'runwatch-dead-'));
    const runs = makeRuns('dead', 2);
    for (const run of runs) sim.addRun(run);
    try {
      const daemon = await startDaemon(dataDir, receiver.url);
      await addWatches(daemon.base, runs.slice(0, 1));
      await receiver.waitFor(() => receiver.attempts >= 1);
      receiver.answer = 200;
      await addWatches(daemon.base, runs.slice(1));
      await receiver.waitFor(() => terminalRuns(receiver) >= 1, 60_000);
      const metrics = await (await fetch(`${daemon.base}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).text();
      expect(metrics).toMatch(/runwatch_dead_letters\{sink="webhook"\} [1-9]/);
      daemon.cli.child.kill('SIGTERM');
      expect((await daemon.cli.done).code).toBe(0);
    } finally {
      await receiver.close();
    }
  }, 60_000);
});
