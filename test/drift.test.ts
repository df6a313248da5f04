// The drifts between the SQLite and the Redis daemon that one engine removed, each checked
// through what a user sees (the CLI, the control API, /metrics), so the same file runs against
// any version of the daemon.
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import type { RunningSimulator } from '../src/simulator.js';
import { startProxy } from './proxy.js';
import { REDIS_URL, removeKeys, requireRedis, testPrefix } from './redis.js';
import { runCli, startCli } from './spawn.js';
import type { CliProcess } from './spawn.js';
import { useSimulator } from './sim.js';

const KEY = 'sk-drift-0001';
const POLICY = 'watch.policy={"jitter":0,"intervals":{"queued":{"baseMs":100,"capMs":100},"in_progress":{"baseMs":100,"capMs":100}}}';
const redisAvailable = await requireRedis();
const prefixes: string[] = [];
let sim: RunningSimulator;
useSimulator({ apiKey: KEY }, (started) => (sim = started));
afterAll(async () => {
  for (const prefix of prefixes) await removeKeys(prefix);
});

/** Starts `runwatch daemon` on a store; resolves once it listens. */
async function daemon(store: 'sqlite' | 'redis', settings: string[] = [], env: Record<string, string> = {}): Promise<{ cli: CliProcess; base: string; prefix: string }> {
  const prefix = testPrefix();
  prefixes.push(prefix);
  const cli = startCli(
    [
      'daemon',
      '--port',
      '0',
      '--data-dir',
      mkdtempSync(path.join(tmpdir(), 'runwatch-drift-')),
      ...[`store.kind="${store}"`, `store.prefix=${JSON.stringify(prefix)}`, 'watch.provider="openai"', `watch.baseUrl=${JSON.stringify(sim.baseUrl)}`, 'sinks.stdout.enabled=false', 'watch.maxRequestsPerSecond=40', POLICY, ...settings].flatMap((s) => ['--set', s]),
    ],
    { OPENAI_API_KEY: KEY, RUNWATCH_REDIS_URL: REDIS_URL, ...env },
  );
  const line = await cli.waitForStderr((l) => l.includes('daemon listening'));
  return { cli, base: `http://127.0.0.1:${(JSON.parse(line) as { port: number }).port}`, prefix };
}

const post = (base: string, body: unknown): Promise<Response> => fetch(`${base}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

async function waitFor(check: () => Promise<boolean> | boolean, what: string, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** What /metrics says, reduced to what must be the same whatever the store: families, series labels, and the counts that are deterministic. */
function metricsShape(text: string): Record<string, unknown> {
  const families = [...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => `${m[1]} ${m[2]}`).sort();
  const series = (name: string): Record<string, number> =>
    Object.fromEntries([...text.matchAll(new RegExp(`^${name}\\{([^}]*)\\} (\\S+)$`, 'gm'))].map((m) => [m[1]!, Number(m[2])]));
  const labels = (name: string): string[] => Object.keys(series(name)).sort();
  const budget = Number(/^runwatch_budget_requests_per_second (\S+)$/m.exec(text)?.[1]);
  return {
    families,
    transitions: series('runwatch_transitions_total'),
    active: series('runwatch_active_watches'),
    polls: labels('runwatch_polls_total'),
    deliveries: labels('runwatch_sink_deliveries_total'),
    backlog: labels('runwatch_outbox_backlog'),
    budgetCut: budget < 40,
  };
}

describe.skipIf(!redisAvailable)('one engine: the SQLite and the Redis daemon tell the same story (needs Redis)', () => {
  it('the same scenario gives the same metric families, label names and values on both stores', async () => {
    const shapes: Record<string, Record<string, unknown>> = {};
    for (const store of ['sqlite', 'redis'] as const) {
      const tag = `${store}_${Date.now()}`;
      // a run that completes; one the server does not know (watch.error); one that stays in_progress, with a 429 on its 2nd poll
      sim.addRun({ threadId: 'thread_drift', runId: `run_done_${tag}`, timeline: [{ status: 'queued', durationMs: 400 }, { status: 'in_progress', durationMs: 700 }, { status: 'completed' }], start: 'first_request' });
      sim.addRun({ threadId: 'thread_drift', runId: `run_busy_${tag}`, timeline: [{ status: 'in_progress' }], faults: [{ type: 'status', status: 429, headers: { 'retry-after-ms': '200' }, from: 2 }] });
      const { cli, base } = await daemon(store, ['sinks.webhook.url="http://127.0.0.1:9/hooks"', 'sinks.delivery.backoffBaseMs=60000', 'sinks.delivery.backoffCapMs=60000']);
      try {
        const ids: string[] = [];
        for (const run of [`run_done_${tag}`, `run_missing_${tag}`, `run_busy_${tag}`]) ids.push(String(((await (await post(base, { thread_id: 'thread_drift', run_id: run })).json()) as { id: string }).id));
        const state = async (id: string): Promise<string> => ((await (await fetch(`${base}/v1/watches/${id}`)).json()) as { state: string }).state;
        await waitFor(async () => (await state(ids[0]!)) === 'finished' && (await state(ids[1]!)) === 'failed' && sim.requests(`run_busy_${tag}`).length >= 4, `the ${store} scenario`);
        // the gauges are read at scrape time; the fleet's counts may lag a commit by a moment
        let shape: Record<string, unknown> = {};
        await waitFor(async () => {
          shape = metricsShape(await (await fetch(`${base}/metrics`)).text());
          return JSON.stringify(shape.active) === JSON.stringify({ 'status="in_progress"': 1 });
        }, `the ${store} gauges`);
        shapes[store] = shape;
      } finally {
        cli.child.kill('SIGTERM');
        await cli.done;
      }
    }
    expect(shapes.redis).toEqual(shapes.sqlite);
    expect(shapes.sqlite).toMatchObject({
      transitions: { 'status="queued"': 1, 'status="in_progress"': 2, 'status="completed"': 1, 'status="watch_error"': 1 },
      polls: ['outcome="ok"', 'outcome="run_not_found"', 'outcome="transient"'],
      budgetCut: true,
    });
  }, 60_000);

  it('answers 503 store_unavailable with retry-after while Redis is down, and 201 once it is back', async () => {
    const proxy = await startProxy(new URL(REDIS_URL));
    const { cli, base } = await daemon('redis', [], { RUNWATCH_REDIS_URL: proxy.url });
    try {
      await proxy.down();
      await waitFor(async () => (await fetch(`${base}/readyz`)).status === 503, 'readiness to drop');
      const refused = await post(base, { thread_id: 'thread_drift', run_id: 'run_during_outage' });
      expect(refused.status).toBe(503);
      expect(refused.headers.get('retry-after')).toBe('5');
      expect(await refused.json()).toMatchObject({ error: { code: 'store_unavailable' } });
      expect((await fetch(`${base}/v1/watches`)).status).toBe(503);
      // the gauges keep their last figures; what this process counts is still scraped
      const scrape = await fetch(`${base}/metrics`);
      expect(scrape.status).toBe(200);
      expect(await scrape.text()).toContain('# TYPE runwatch_polls_total counter');
      await proxy.up();
      await waitFor(async () => (await fetch(`${base}/readyz`)).status === 200, 'readiness to return');
      expect((await post(base, { thread_id: 'thread_drift', run_id: 'run_during_outage' })).status).toBe(201);
    } finally {
      cli.child.kill('SIGTERM');
      await cli.done;
      await proxy.close().catch(() => undefined);
    }
  }, 60_000);

  it('polls an active watch nobody polls: one left in the one active set of versions before watch partitions (at start), and one posted again', async () => {
    const prefix = testPrefix();
    prefixes.push(prefix);
    const redis = new Redis(REDIS_URL);
    // an active watch as versions before watch partitions wrote it (one `active` set for all)
    const orphan = async (id: string, runId: string): Promise<void> => {
      sim.addRun({ threadId: 'thread_drift', runId, timeline: [{ status: 'in_progress' }] });
      await redis.hset(`${prefix}watch:${id}`, { id, kind: 'run', thread_id: 'thread_drift', run_id: runId, response_id: '', metadata: '', callback_url: '', state: 'active', seq: '0', created_at: String(Date.now()), updated_at: String(Date.now()), order: '1' });
      await redis.hset(`${prefix}runs`, `thread_drift\n${runId}`, id);
      await redis.zadd(`${prefix}watches`, 1, id);
      await redis.sadd(`${prefix}active`, id);
    };
    const tag = Date.now();
    await orphan('w_orphan_start', `run_orphan_start_${tag}`);
    const cli = startCli(
      ['daemon', '--port', '0', '--data-dir', mkdtempSync(path.join(tmpdir(), 'runwatch-drift-')), ...['store.kind="redis"', `store.prefix=${JSON.stringify(prefix)}`, 'watch.provider="openai"', `watch.baseUrl=${JSON.stringify(sim.baseUrl)}`, 'sinks.stdout.enabled=false', POLICY].flatMap((s) => ['--set', s])],
      { OPENAI_API_KEY: KEY, RUNWATCH_REDIS_URL: REDIS_URL },
    );
    try {
      const base = `http://127.0.0.1:${(JSON.parse(await cli.waitForStderr((l) => l.includes('daemon listening'))) as { port: number }).port}`;
      await waitFor(() => sim.requests(`run_orphan_start_${tag}`).length > 0, 'the orphan found at start to be polled');
      await orphan('w_orphan_post', `run_orphan_post_${tag}`);
      const again = await post(base, { thread_id: 'thread_drift', run_id: `run_orphan_post_${tag}` });
      expect(again.status).toBe(200);
      expect(((await again.json()) as { id: string }).id).toBe('w_orphan_post');
      await waitFor(() => sim.requests(`run_orphan_post_${tag}`).length > 0, 'the orphan posted again to be polled');
    } finally {
      cli.child.kill('SIGTERM');
      await cli.done;
      redis.disconnect();
    }
  }, 60_000);
});

describe('process boundary: errors by class, each with its exit code', () => {
  it.each([['redis://:pw-secret@127.0.0.1:notaport'], ['not a url']])('exits 64 naming RUNWATCH_REDIS_URL (never its value) for %j', async (url) => {
    const result = await runCli(['daemon', '--port', '0', '--set', 'store.kind="redis"', '--data-dir', mkdtempSync(path.join(tmpdir(), 'runwatch-drift-'))], { PORTKEY_API_KEY: 'x', RUNWATCH_REDIS_URL: url });
    expect(result.code).toBe(64);
    expect(result.stderr).toMatch(/^runwatch: invalid RUNWATCH_REDIS_URL: expected redis:\/\//m);
    expect(result.stderr).not.toContain('pw-secret');
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('exits 73 when the data dir is a file', async () => {
    const file = path.join(mkdtempSync(path.join(tmpdir(), 'runwatch-drift-')), 'not-a-dir');
    writeFileSync(file, 'x');
    const result = await runCli(['daemon', '--port', '0', '--data-dir', file], { PORTKEY_API_KEY: 'x' });
    expect(result.code).toBe(73);
    expect(result.stderr).toMatch(/^runwatch: cannot open the store .*not-a-dir.*check that the data dir is a writable directory$/m);
  });
});

describe('one home for each shared thing', () => {
  it('builds Redis keys only in src/store/redis-keys.ts', () => {
    const src = path.join(import.meta.dirname, '..', 'src');
    const offenders = readdirSync(src, { recursive: true, encoding: 'utf8' })
      .filter((file) => file.endsWith('.ts') && !file.endsWith('redis-keys.ts'))
      .flatMap((file) =>
        readFileSync(path.join(src, file), 'utf8')
          .split('\n')
          .filter((line) => /\$\{[^}]*prefix[^}]*\}[a-z]/i.test(line) || /prefix\s*\+\s*['"`]/.test(line))
          .map((line) => `${file}: ${line.trim()}`),
      );
    expect(offenders).toEqual([]);
  });

  it("exports from the main entry exactly the values the README's Public API section lists", async () => {
    const readme = readFileSync(path.join(import.meta.dirname, '..', 'README.md'), 'utf8');
    const section = /## Public API\n([\s\S]*?)\n## /.exec(readme)?.[1] ?? '';
    const listed = [...section.matchAll(/^\| `([A-Za-z_]+)` \|/gm)].map((m) => m[1]).sort();
    const exported = Object.keys(await import('../src/index.js')).sort();
    expect(listed).toEqual(exported);
  });
});
