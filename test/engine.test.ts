import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { ToolApprovalHandler, ToolHandler } from '../src/actions.js';
import type { Engine, EngineSettings } from '../src/daemon/engine.js';
import { LocalEngine } from '../src/daemon/engine.js';
import { RedisEngine } from '../src/daemon/redis-engine.js';
import type { RunEvent, WatchEvent } from '../src/events.js';
import type { RunningSimulator } from '../src/simulator.js';
import { MemoryStore } from '../src/store/memory.js';
import { RedisStore } from '../src/store/redis.js';
import { SqliteStore } from '../src/store/sqlite.js';
import type { WatchStore } from '../src/store/store.js';
import { REDIS_URL, removeKeys, requireRedis, testPrefix } from './redis.js';
import { useSimulator } from './sim.js';

const KEY = 'sk-engine-suite-0001';
const FAST = { jitter: 0, intervals: Object.fromEntries(['queued', 'in_progress', 'requires_action', 'cancelling', 'unknown'].map((s) => [s, { baseMs: 100, capMs: 100 }])) };
const silent = pino({ level: 'silent' });
let sim: RunningSimulator;
useSimulator({ apiKey: KEY }, (started) => (sim = started));
/** Azure's Agent Service (tool approvals are its own). */
let azure: RunningSimulator;
useSimulator({ apiKey: KEY, errorStyle: 'azure' }, (started) => (azure = started));

const redisAvailable = await requireRedis();
const prefixes: string[] = [];
const clients: Redis[] = [];
afterAll(async () => {
  for (const redis of clients) redis.disconnect();
  for (const prefix of prefixes) await removeKeys(prefix);
});

/** A place a store lives: opened again after a restart, it holds what the last engine wrote. */
interface StoreHome {
  open(): WatchStore;
  /** What a host does with its store when it stops (a memory store lives on in this test's hands). */
  release(store: WatchStore): Promise<void>;
}

/** How each store kind is set up: its store, and the engine that drives it. */
const kinds = [
  {
    name: 'memory',
    skip: false,
    home: (): StoreHome => {
      // the same object outlives an engine: that is a memory store's "restart"
      const store = new MemoryStore();
      return { open: () => store, release: () => Promise.resolve() };
    },
    engine: (store: WatchStore, settings: EngineSettings): Engine => new LocalEngine(store, settings),
  },
  {
    name: 'sqlite',
    skip: false,
    home: (): StoreHome => {
      const file = path.join(mkdtempSync(path.join(tmpdir(), 'runwatch-engine-')), 'runwatch.db');
      return { open: () => new SqliteStore(file), release: (store) => store.close() };
    },
    engine: (store: WatchStore, settings: EngineSettings): Engine => new LocalEngine(store, settings),
  },
  {
    name: 'redis',
    skip: !redisAvailable,
    home: (): StoreHome => {
      const prefix = testPrefix();
      prefixes.push(prefix);
      return {
        open: () => {
          const redis = new Redis(REDIS_URL);
          clients.push(redis);
          return new RedisStore(redis, prefix, 2);
        },
        release: (store) => store.close(),
      };
    },
    engine: (store: WatchStore, settings: EngineSettings): Engine => {
      const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
      clients.push(redis);
      return new RedisEngine(redis, store as RedisStore, settings, { lockDurationMs: 2_000, stalledIntervalMs: 1_000, repairIntervalMs: 60_000, logger: silent });
    },
  },
];

describe.each(kinds)('the engine on the $name store', ({ skip, home, engine: makeEngine }) => {
  const running: Array<{ engine: Engine; store: WatchStore; where: StoreHome }> = [];
  let counter = 0;

  /** Starts an engine over a store opened at `where`; stopped after each test. */
  async function start(where: StoreHome, options: { toolHandler?: ToolHandler; approvalHandler?: ToolApprovalHandler; azure?: boolean; expiresGraceMs?: number; cancelAfterStallMs?: number; maxRequestsPerSecond?: number } = {}) {
    const store = where.open();
    const settings: EngineSettings = {
      watcher: {
        provider: options.azure ? 'azure' : 'openai',
        baseUrl: options.azure ? azure.baseUrl : sim.baseUrl,
        credentials: { apiKey: KEY },
        policy: FAST,
        expiresGraceMs: options.expiresGraceMs ?? 60_000,
        maxRequestsPerSecond: options.maxRequestsPerSecond ?? 1_000,
        logger: silent,
      },
      toolHandler: options.toolHandler,
      approvalHandler: options.approvalHandler,
      cancelAfterStallMs: options.cancelAfterStallMs,
    };
    const engine = makeEngine(store, settings);
    const events: WatchEvent[] = [];
    const unwritten: string[] = [];
    engine.on('event', (event) => {
      events.push(event);
      // an event reaches listeners only once written: the log must hold it already
      void store
        .eventsAfter(0, {}, 10_000)
        .then((log) => (log.some((e) => e.event_id === event.id) ? undefined : unwritten.push(event.id)))
        .catch(() => undefined);
    });
    afterChecks.push(() => expect(unwritten).toEqual([]));
    await engine.start();
    running.push({ engine, store, where });
    return { engine, store, events };
  }

  /** Stops an engine as its host would: the engine, then the store. */
  async function stop(engine: Engine): Promise<void> {
    const [entry] = running.splice(
      running.findIndex((r) => r.engine === engine),
      1,
    );
    await engine.close(1_000);
    await entry!.where.release(entry!.store);
  }

  const afterChecks: Array<() => void> = [];
  afterEach(async () => {
    for (const { engine } of [...running]) await stop(engine);
    for (const check of afterChecks.splice(0)) check();
  });

  function ids(): { thread_id: string; run_id: string } {
    counter += 1;
    return { thread_id: 'thread_engine', run_id: `run_eng_${Date.now()}_${counter}` };
  }

  /** The events the store holds for a run, in log order. */
  async function stored(store: WatchStore, runId: string): Promise<RunEvent[]> {
    return (await store.eventsAfter(0, { run_id: runId }, 100)).map((e) => JSON.parse(e.payload) as RunEvent);
  }

  /** Waits until the store holds an event that satisfies `done` for the run (bounded). */
  async function until(store: WatchStore, runId: string, done: (events: RunEvent[]) => boolean, timeoutMs = 10_000): Promise<RunEvent[]> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const events = await stored(store, runId);
      if (done(events)) return events;
      if (Date.now() > end) throw new Error(`condition not met; events: ${events.map((e) => e.type).join(', ')}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  it.skipIf(skip)('turns statuses into gapless events, committed before they are emitted, and finishes the watch', async () => {
    const run = ids();
    sim.addRun({ threadId: run.thread_id, runId: run.run_id, timeline: [{ status: 'queued', durationMs: 150 }, { status: 'in_progress', durationMs: 150 }, { status: 'completed' }], start: 'first_request' });
    const { engine, store, events } = await start(home());
    const { watch } = await engine.add({ kind: 'run', id: `w_${run.run_id}`, ...run });
    const all = await until(store, run.run_id, (list) => list.some((e) => e.type === 'run.completed'));
    expect(all.map((e) => [e.type, e.seq])).toEqual([
      ['run.queued', 1],
      ['run.in_progress', 2],
      ['run.completed', 3],
    ]);
    expect(events.map((e) => e.id)).toEqual(all.map((e) => e.id));
    expect(await store.get(watch.id)).toMatchObject({ state: 'finished', progress: { status: 'completed', seq: 3 } });
    expect((await engine.add({ kind: 'run', id: 'w_other', ...run })).created).toBe(false);
  });

  it.skipIf(skip)('answers each set of tool calls once, and follows the run to completed', async () => {
    const run = ids();
    sim.addRun({ threadId: run.thread_id, runId: run.run_id, timeline: [{ status: 'requires_action' }, { status: 'in_progress', durationMs: 150 }, { status: 'requires_action' }, { status: 'completed' }], start: 'first_request' });
    const calls: string[] = [];
    const toolHandler: ToolHandler = ({ toolCalls }) => {
      calls.push(toolCalls.map((c) => c.id).join(','));
      return toolCalls.map((c) => ({ tool_call_id: c.id, output: 'ok' }));
    };
    const { engine, store } = await start(home(), { toolHandler });
    await engine.add({ kind: 'run', id: `w_${run.run_id}`, ...run });
    const all = await until(store, run.run_id, (list) => list.some((e) => e.type === 'run.completed'));
    expect(all.map((e) => e.type)).toEqual(['run.requires_action', 'run.tool_outputs_submitted', 'run.in_progress', 'run.requires_action', 'run.tool_outputs_submitted', 'run.completed']);
    expect(calls).toHaveLength(2);
    expect(sim.requests(run.run_id).filter((r) => r.method === 'POST')).toHaveLength(2);
  });

  it.skipIf(skip)('answers tool approvals (Azure) with the approval handler, once per set of tool calls, and follows the run to completed', async () => {
    const run = ids();
    azure.addRun({ threadId: run.thread_id, runId: run.run_id, timeline: [{ status: 'requires_action', requiredAction: 'submit_tool_approval' }, { status: 'in_progress', durationMs: 150 }, { status: 'completed' }], start: 'first_request' });
    const asked: string[] = [];
    const approvalHandler: ToolApprovalHandler = ({ toolCalls }) => {
      asked.push(toolCalls.map((c) => c.id).join(','));
      return toolCalls.map((c) => ({ tool_call_id: c.id, approve: false }));
    };
    const { engine, store } = await start(home(), { azure: true, approvalHandler, toolHandler: () => [] });
    await engine.add({ kind: 'run', id: `w_${run.run_id}`, ...run });
    const all = await until(store, run.run_id, (list) => list.some((e) => e.type === 'run.completed'));
    expect(all.map((e) => e.type)).toEqual(['run.requires_action', 'run.tool_approvals_submitted', 'run.in_progress', 'run.completed']);
    expect(all[1]).toMatchObject({ tool_call_ids: ['call_0'], approvals: [{ tool_call_id: 'call_0', approve: false }] });
    expect(asked).toEqual(['call_0']);
    expect(azure.requests(run.run_id).filter((r) => r.method === 'POST').map((r) => JSON.parse(r.body!) as unknown)).toEqual([{ tool_approvals: [{ tool_call_id: 'call_0', approve: false }] }]);
  });

  it.skipIf(skip)('without an approval handler, says once that the run waits for a person, and not again after a restart', async () => {
    const run = ids();
    azure.addRun({ threadId: run.thread_id, runId: run.run_id, timeline: [{ status: 'requires_action', requiredAction: 'submit_tool_approval' }], start: 'first_request' });
    const where = home();
    const first = await start(where, { azure: true });
    await first.engine.add({ kind: 'run', id: `w_${run.run_id}`, ...run });
    await until(first.store, run.run_id, (list) => list.some((e) => e.type === 'run.approval_required'));
    // polled on, told once
    const polled = azure.requests(run.run_id).length;
    while (azure.requests(run.run_id).length < polled + 3) await new Promise((resolve) => setTimeout(resolve, 20));
    await stop(first.engine);
    // a person approves meanwhile; the resumed watch sees the same tool calls first, then the run moving on
    azure.addRun({ threadId: run.thread_id, runId: run.run_id, timeline: [{ status: 'requires_action', requiredAction: 'submit_tool_approval', durationMs: 400 }, { status: 'in_progress', durationMs: 150 }, { status: 'completed' }], start: 'first_request' });
    const second = await start(where, { azure: true });
    const all = await until(second.store, run.run_id, (list) => list.some((e) => e.type === 'run.completed'));
    expect(all.map((e) => [e.type, e.seq])).toEqual([
      ['run.requires_action', 1],
      ['run.approval_required', 2],
      ['run.in_progress', 3],
      ['run.completed', 4],
    ]);
    expect(all[1]).toMatchObject({ tool_call_ids: ['call_0'], required_action: { type: 'submit_tool_approval' } });
    expect(azure.requests(run.run_id).filter((r) => r.method === 'POST')).toHaveLength(0);
  });

  it.skipIf(skip)('a restarted engine waits out the retry-after the server gave before the stop', async () => {
    const run = ids();
    // the second poll is answered 429 with retry-after-ms: 800
    sim.addRun({ threadId: run.thread_id, runId: run.run_id, timeline: [{ status: 'in_progress' }], faults: [{ type: 'status', status: 429, headers: { 'retry-after-ms': '800' }, from: 2, to: 2 }] });
    const where = home();
    const first = await start(where);
    const id = `w_${run.run_id}`;
    await first.engine.add({ kind: 'run', id, ...run });
    while (sim.requests(run.run_id).length < 2) await new Promise((resolve) => setTimeout(resolve, 10));
    // the floor is in the store at once, not in a batch a crash would lose (SQLite's are 2 s apart): read as another process would
    const peek = where.open();
    let stored = await peek.loadProgress(id);
    for (const giveUpAtMs = Date.now() + 500; stored?.notBeforeMs == null && Date.now() < giveUpAtMs; ) {
      await new Promise((resolve) => setTimeout(resolve, 10));
      stored = await peek.loadProgress(id);
    }
    if (peek !== first.store) await where.release(peek);
    if (stored?.notBeforeMs == null) throw new Error('the retry-after was not written within 500 ms');
    const limitedAtMs = sim.requests(run.run_id)[1]!.atMs;
    expect(stored.notBeforeMs).toBeGreaterThanOrEqual(limitedAtMs + 700);
    await stop(first.engine);
    await start(where);
    while (sim.requests(run.run_id).length < 3) await new Promise((resolve) => setTimeout(resolve, 10));
    // not at once after the restart: after the server's floor
    expect(sim.requests(run.run_id)[2]!.atMs).toBeGreaterThanOrEqual(limitedAtMs + 790);
  });

  it.skipIf(skip)('cancels on request: cancel_requested, then cancelling and cancelled', async () => {
    const run = ids();
    sim.addRun({ threadId: run.thread_id, runId: run.run_id, timeline: [{ status: 'in_progress' }] });
    const { engine, store } = await start(home());
    const { watch } = await engine.add({ kind: 'run', id: `w_${run.run_id}`, ...run });
    await until(store, run.run_id, (list) => list.length > 0);
    await engine.cancel(watch.id);
    const all = await until(store, run.run_id, (list) => list.some((e) => e.type === 'run.cancelled'));
    expect(all.map((e) => e.type)).toEqual(['run.in_progress', 'run.cancel_requested', 'run.cancelling', 'run.cancelled']);
    expect(all.map((e) => e.seq)).toEqual([1, 2, 3, 4]);
    expect(sim.requests(run.run_id).filter((r) => r.method === 'POST')).toHaveLength(1);
  });

  it.skipIf(skip)('ends a watch at its deadline (the run\'s expires_at plus grace) with a watch.error, and writes nothing after it', async () => {
    const run = ids();
    sim.addRun({ threadId: run.thread_id, runId: run.run_id, timeline: [{ status: 'queued' }], expiresInMs: 400 });
    const { engine, store } = await start(home(), { expiresGraceMs: 300 });
    const { watch } = await engine.add({ kind: 'run', id: `w_${run.run_id}`, ...run });
    const all = await until(store, run.run_id, (list) => list.some((e) => e.type === 'watch.error'));
    expect(all.map((e) => e.type)).toEqual(['run.queued', 'watch.error']);
    expect(all[1]).toMatchObject({ error: { code: 'deadline_exceeded' }, seq: 2 });
    expect(await store.get(watch.id)).toMatchObject({ state: 'failed', error: { code: 'deadline_exceeded' } });
    const requests = sim.requests(run.run_id).length;
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(sim.requests(run.run_id)).toHaveLength(requests);
  });

  it.skipIf(skip)("slows the whole budget on a 429 and sends nothing to anyone before its retry-after", async () => {
    const limited = ids();
    const other = ids();
    // the third poll of one run answers 429 with a 1.5 s retry-after; the other run just goes on
    sim.addRun({ threadId: limited.thread_id, runId: limited.run_id, timeline: [{ status: 'in_progress' }], faults: [{ type: 'status', status: 429, headers: { 'retry-after-ms': '1500' }, from: 3 }] });
    sim.addRun({ threadId: other.thread_id, runId: other.run_id, timeline: [{ status: 'in_progress' }] });
    const { engine, store } = await start(home(), { maxRequestsPerSecond: 40 });
    await engine.add({ kind: 'run', id: `w_${limited.run_id}`, ...limited });
    await engine.add({ kind: 'run', id: `w_${other.run_id}`, ...other });
    while (sim.requests(limited.run_id).length < 3) await new Promise((resolve) => setTimeout(resolve, 20));
    const limitedAt = sim.requests(limited.run_id)[2]!.atMs;
    // the budget's rate is cut to 70 % (the gauge reads it)
    for (let i = 0; i < 50 && engine.budget().ratePerSecond > 28.01; i++) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(engine.budget().ratePerSecond).toBeCloseTo(28, 1);
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, limitedAt + 1_800 - Date.now())));
    // polls already under way may land just after the 429; then silence for every watch until the retry-after
    const during = [...sim.requests(limited.run_id), ...sim.requests(other.run_id)].filter((r) => r.atMs > limitedAt + 150 && r.atMs < limitedAt + 1_450);
    expect(during).toEqual([]);
    expect(sim.requests(limited.run_id).filter((r) => r.atMs >= limitedAt + 1_450).length).toBeGreaterThan(0);
    await until(store, limited.run_id, (list) => list.length > 0);
  });

  it.skipIf(skip)('resumes after a restart from what the store holds: seq goes on, nothing is repeated, actions are not redone', async () => {
    const run = ids();
    sim.addRun({ threadId: run.thread_id, runId: run.run_id, timeline: [{ status: 'requires_action' }], start: 'first_request' });
    const where = home();
    let calls = 0;
    const failing: ToolHandler = () => {
      calls += 1;
      throw new Error('tool down');
    };
    const first = await start(where, { toolHandler: failing });
    await first.engine.add({ kind: 'run', id: `w_${run.run_id}`, ...run });
    await until(first.store, run.run_id, (list) => list.some((e) => e.type === 'run.action_failed'));
    await stop(first.engine);
    // the resumed watch sees the same tool calls again (a handler must not be called twice for them), then the run moves on
    sim.addRun({ threadId: run.thread_id, runId: run.run_id, timeline: [{ status: 'requires_action', durationMs: 500 }, { status: 'in_progress', durationMs: 200 }, { status: 'completed' }], start: 'first_request' });
    const second = await start(where, { toolHandler: failing });
    const all = await until(second.store, run.run_id, (list) => list.some((e) => e.type === 'run.completed'));
    expect(all.map((e) => [e.type, e.seq])).toEqual([
      ['run.requires_action', 1],
      ['run.action_failed', 2],
      ['run.in_progress', 3],
      ['run.completed', 4],
    ]);
    expect(new Set(all.map((e) => e.id)).size).toBe(all.length);
    expect(calls).toBe(1);
  });
});
