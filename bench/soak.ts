// Soak of the SQLite daemon: about --watches runs in flight for --minutes, the daemon SIGKILLed
// every --kill-every seconds and restarted on the same data dir, a webhook receiver that flaps.
// Reports RSS and open fds at the same moment of the first and the last process life (drift),
// events lost (committed in SQLite, never accepted by the receiver), duplicates, order and
// terminal events. Writes bench/results/soak.md and soak.json; exits 1 when a target is missed.
// Needs a build. Not in CI. Usage: npm run bench:soak [-- --minutes 4 --kill-every 60 --watches 500]
import { fork } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { parseArgs } from 'node:util';
import { seededRandom } from '../dist/simulator.js';
import type { BenchDaemon } from './daemon.ts';
import { startDaemon } from './daemon.ts';
import { FlappingReceiver, sleep } from './flapping-receiver.ts';
import { ask, describeMachine } from './harness.ts';
import type { SimReport, SimRequest } from './sim-worker.ts';
import type { WorkloadSpec } from './workloads.ts';
import { buildRuns, runIds } from './workloads.ts';

const { values: flags } = parseArgs({
  options: {
    watches: { type: 'string', default: '5000' },
    minutes: { type: 'string', default: '30' },
    'kill-every': { type: 'string', default: '120' },
    rps: { type: 'string', default: '250' },
    seed: { type: 'string', default: '15' },
    keep: { type: 'boolean', default: false },
  },
});
const WATCHES = Number(flags.watches);
const SOAK_MS = Number(flags.minutes) * 60_000;
const KILL_EVERY_MS = Number(flags['kill-every']) * 1_000;
/** Compare lives at this moment, after the resume's burst: 60 s, or half a life when lives are shorter. */
const WARMUP_MS = Math.min(60_000, KILL_EVERY_MS / 2);
/** Samples within this window after `WARMUP_MS` make one point (their median): one sample is noisy. */
const WINDOW_MS = Math.min(30_000, KILL_EVERY_MS / 4);
const SAMPLE_EVERY_MS = 2_000;
const SETTLE_TIMEOUT_MS = 300_000;
const TARGET_DRIFT_PERCENT = 5;
const KEY = 'sk-bench-soak';
const TERMINAL = new Set(['completed', 'failed', 'cancelled', 'expired', 'incomplete']);
const RESULTS = path.join(import.meta.dirname, 'results');
const random = seededRandom(Number(flags.seed) + 1);

interface Sample {
  readonly life: number;
  /** Since the process listened. */
  readonly atMs: number;
  readonly rssMb: number;
  readonly fds: number;
  /** Of `fds`, the sockets: they follow the requests in flight, the rest (files, pipes, epoll) should not move. */
  readonly sockets: number;
}

/** VmRSS (MB) and the open fds of a live process, `null` once it is gone. */
function sampleProcess(pid: number): Omit<Sample, 'life' | 'atMs'> | null {
  try {
    const kb = Number(/^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
    const fds = readdirSync(`/proc/${pid}/fd`);
    let sockets = 0;
    for (const fd of fds) {
      try {
        if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('socket:')) sockets += 1;
      } catch {
        // closed between the listing and the look
      }
    }
    return { rssMb: kb / 1024, fds: fds.length, sockets };
  } catch {
    return null;
  }
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length === 0 ? Number.NaN : sorted[Math.floor((sorted.length - 1) / 2)]!;
}

/** The median RSS and fds of one life's samples in [fromMs, toMs) of its life, `null` if it has none there. */
function lifePoint(samples: readonly Sample[], life: number, fromMs = WARMUP_MS, toMs = WARMUP_MS + WINDOW_MS): Omit<Sample, 'life' | 'atMs'> | null {
  const inWindow = samples.filter((s) => s.life === life && s.atMs >= fromMs && s.atMs < toMs);
  if (inWindow.length === 0) return null;
  return { rssMb: median(inWindow.map((s) => s.rssMb)), fds: median(inWindow.map((s) => s.fds)), sockets: median(inWindow.map((s) => s.sockets)) };
}

const root = mkdtempSync(path.join(tmpdir(), 'rw-soak-'));
const dataDir = path.join(root, 'data');
const toolsPath = path.join(root, 'tools.mjs');
// answers every tool call at once: tool-output runs go on to completed
writeFileSync(toolsPath, "export default async ({ toolCalls }) => toolCalls.map((call) => ({ tool_call_id: call.id, output: '{\"ok\":true}' }));\n");
const daemonLog = path.join(root, 'daemon-warnings.ndjson');

const receiver = new FlappingReceiver();
await receiver.start();

// runs last 1 minute to 80 % of the soak: at any time some end and new ones take their place
const durationMs = { min: 60_000, max: Math.max(120_000, SOAK_MS * 0.8) };
// enough runs for every replacement, with a margin: only those created are watched
const totalRuns = Math.ceil(WATCHES * (1 + (1.5 * SOAK_MS) / ((durationMs.min + durationMs.max) / 2))) + 100;
const spec: WorkloadSpec = { kind: 'soak', runs: totalRuns, seed: Number(flags.seed), durationMs };
const plan = buildRuns(spec).map((run) => run.timeline.reduce((sum, step) => sum + (step.durationMs ?? 0), 0));
const simProcess = fork(path.join(import.meta.dirname, 'sim-worker.ts'), [], { execArgv: ['--experimental-strip-types', '--no-warnings'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
const { baseUrl } = await ask<{ baseUrl: string }>(simProcess, { type: 'start', spec } satisfies SimRequest);

const settings = [
  'watch.provider="openai"',
  `watch.baseUrl=${JSON.stringify(baseUrl)}`,
  `watch.maxRequestsPerSecond=${Number(flags.rps)}`,
  'watch.maxInFlight=64',
  'sinks.stdout.enabled=false',
  `sinks.webhook.url=${JSON.stringify(receiver.url)}`,
  // bounds the wait after an outage, so the final drain is short; what is delivered is the same
  'sinks.delivery.backoffCapMs=30000',
  // runs stay in_progress for minutes: run.stalled happens in short soaks too
  'daemon.stallThresholdMs=120000',
  `daemon.toolHandler=${JSON.stringify({ path: toolsPath })}`,
];
let daemon: BenchDaemon | null = null;
let lifeStartedAtMs = 0;
let life = 0;
let daemonErrors = 0;
/** Exits the soak did not cause (neither its SIGKILL nor its final SIGTERM), with the code or signal. */
const unexpectedExits: string[] = [];
const stopped = new Set<ChildProcess>();

/** Sends the signal and resolves with the exit code (null after a signal), at once if the process is gone already. */
async function stop(child: ChildProcess, signal: NodeJS.Signals): Promise<number | null> {
  stopped.add(child);
  if (child.exitCode === null && child.signalCode === null) {
    const exited = once(child, 'exit');
    child.kill(signal);
    await exited;
  }
  return child.exitCode;
}
const samples: Sample[] = [];
const restartMs: number[] = [];

async function boot(): Promise<BenchDaemon> {
  const t0 = Date.now();
  const started = await startDaemon({ settings, dataDir, env: { OPENAI_API_KEY: KEY }, nodeFlags: ['--max-semi-space-size=8'] });
  restartMs.push(Date.now() - t0);
  const lifeNumber = life + 1;
  started.child.once('exit', (code, signal) => {
    if (!stopped.has(started.child)) unexpectedExits.push(`life ${lifeNumber}: ${signal ?? `exit ${code}`}`);
  });
  started.lines.on('line', (line) => {
    const level = (JSON.parse(line) as { level?: number }).level ?? 0;
    if (level >= 50) daemonErrors += 1;
    // the first failure of each event is a warning: keep them for evidence, not the info lines
    if (level >= 40) writeFileSync(daemonLog, `${line}\n`, { flag: 'a' });
  });
  life += 1;
  lifeStartedAtMs = Date.now();
  return started;
}

// the plan of each run created: when it was created and when it should end
const createdAtMs: number[] = [];
const plannedEndMs: number[] = [];
const queue: number[] = [];
let nextRun = 0;
let maxInFlight = 0;
const inFlightSamples: number[] = [];

function inFlight(now: number): number {
  let n = 0;
  for (const end of plannedEndMs) if (end > now) n += 1;
  return n;
}

/** Tops the runs in flight up to WATCHES and POSTs the queued ones; a POST that fails (daemon killed) is queued again. */
async function createWatches(): Promise<void> {
  const now = Date.now();
  const current = inFlight(now);
  maxInFlight = Math.max(maxInFlight, current);
  inFlightSamples.push(current);
  while (nextRun < plan.length && current + queue.length < WATCHES) queue.push(nextRun++);
  while (queue.length > 0 && daemon) {
    const port = daemon.port;
    const batch = queue.splice(0, 50);
    const failed = await Promise.all(
      batch.map(async (i) => {
        try {
          const { threadId, runId } = runIds(i);
          const res = await fetch(`http://127.0.0.1:${port}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: threadId, run_id: runId }) });
          await res.arrayBuffer();
          if (res.status !== 200 && res.status !== 201) return i;
          // 200: created before a kill whose answer was lost
          createdAtMs[i] ??= Date.now();
          plannedEndMs[i] ??= createdAtMs[i] + plan[i]!;
          return null;
        } catch {
          return i;
        }
      }),
    );
    const again = failed.filter((i): i is number => i !== null);
    if (again.length > 0) {
      queue.unshift(...again);
      return;
    }
  }
}

process.stderr.write(`soak: ${WATCHES} watches for ${SOAK_MS / 60_000} min, SIGKILL every ${KILL_EVERY_MS / 1000} s, data in ${root}\n`);
const startedAtMs = Date.now();
daemon = await boot();
const flapping = new AbortController();
const flapDone = receiver.flap(flapping.signal, random);
let lastSampleMs = 0;
let kills = 0;
while (Date.now() - startedAtMs < SOAK_MS) {
  const now = Date.now();
  if (daemon && now - lastSampleMs >= SAMPLE_EVERY_MS) {
    lastSampleMs = now;
    const sample = sampleProcess(daemon.child.pid!);
    if (sample) samples.push({ life, atMs: now - lifeStartedAtMs, ...sample });
  }
  if (daemon && now - lifeStartedAtMs >= KILL_EVERY_MS) {
    await stop(daemon.child, 'SIGKILL');
    daemon = null;
    kills += 1;
    daemon = await boot();
    continue;
  }
  await createWatches();
  await sleep(Math.max(0, 1_000 - (Date.now() - now)));
}
const soakEndMs = Date.now();
process.stderr.write(`soak: ${Math.round((soakEndMs - startedAtMs) / 1000)} s, ${kills} kills; settling\n`);
flapping.abort();
await flapDone;

// the runs that ended in the simulator by now must each get their terminal event, in the log and at the receiver
const simEnd = await ask<SimReport>(simProcess, { type: 'collect' } satisfies SimRequest);
const ended = new Map<string, string>();
simEnd.lastStatus.forEach((status, i) => {
  if (createdAtMs[i] !== undefined && status !== null && TERMINAL.has(status)) ended.set(runIds(i).runId, status);
});

interface LoggedEvent {
  readonly pos: number;
  readonly id: string;
  readonly watchId: string;
  readonly runId: string;
  readonly type: string;
  readonly seq: number;
}
const logged: LoggedEvent[] = [];
const db = new DatabaseSync(path.join(dataDir, 'runwatch.db'), { readOnly: true });
function readLog(): void {
  const rows = db.prepare('SELECT pos, event_id, watch_id, run_id, payload FROM events WHERE pos > ? ORDER BY pos').all(logged.at(-1)?.pos ?? 0) as { pos: number; event_id: string; watch_id: string; run_id: string; payload: string }[];
  for (const row of rows) {
    const payload = JSON.parse(row.payload) as { type: string; seq: number };
    logged.push({ pos: row.pos, id: row.event_id, watchId: row.watch_id, runId: row.run_id, type: payload.type, seq: payload.seq });
  }
}
const terminalLogged = (): Set<string> => new Set(logged.filter((e) => e.type === `run.${ended.get(e.runId)}`).map((e) => e.runId));
const settleStartMs = Date.now();
while (Date.now() - settleStartMs < SETTLE_TIMEOUT_MS) {
  readLog();
  if (terminalLogged().size >= ended.size) break;
  await sleep(2_000);
}
const terminalSettledMs = Date.now() - settleStartMs;
// every event committed up to now must reach the receiver
readLog();
const drainPos = logged.at(-1)?.pos ?? 0;
const mustArrive = logged.filter((e) => e.pos <= drainPos);
const arrivedIds = (): Set<string> => new Set(receiver.arrivals.map((a) => a.id));
const drainStartMs = Date.now();
for (let ids = arrivedIds(); Date.now() - drainStartMs < SETTLE_TIMEOUT_MS && !mustArrive.every((e) => ids.has(e.id)); ids = arrivedIds()) await sleep(2_000);
const drainedMs = Date.now() - drainStartMs;

const stopCode = daemon ? await stop(daemon.child, 'SIGTERM') : null;
// not disconnect(): the simulator's close() did not return once in a 30-minute soak
await stop(simProcess, 'SIGTERM');
await receiver.close();
readLog();
const dead = (db.prepare("SELECT COUNT(*) AS n FROM deliveries WHERE state = 'dead'").get() as { n: number }).n;
db.close();

// delivery: lost, duplicates, order per watch (first arrivals in seq order), terminal events
const arrived = arrivedIds();
const lost = mustArrive.filter((e) => !arrived.has(e.id));
const loggedIds = new Set(logged.map((e) => e.id));
const unknown = receiver.arrivals.filter((a) => !loggedIds.has(a.id)).length;
const duplicates = receiver.arrivals.length - arrived.size;
const seen = new Set<string>();
const lastSeq = new Map<string, number>();
let outOfOrder = 0;
for (const a of receiver.arrivals) {
  if (seen.has(a.id)) continue;
  seen.add(a.id);
  if ((lastSeq.get(a.watchId) ?? -Infinity) >= a.seq) outOfOrder += 1;
  lastSeq.set(a.watchId, a.seq);
}
const terminalInLog = terminalLogged();
const missingInLog = [...ended.keys()].filter((runId) => !terminalInLog.has(runId));
const terminalArrived = new Set(logged.filter((e) => e.type === `run.${ended.get(e.runId)}` && arrived.has(e.id)).map((e) => e.runId));
const missingAtReceiver = [...ended.keys()].filter((runId) => !terminalArrived.has(runId));
const kinds = [...new Set(logged.map((e) => e.type))].sort();

// memory and fds: the same moment of the first and of the last life that reached it
const lastFullLife = Math.max(...samples.filter((s) => s.atMs >= WARMUP_MS + WINDOW_MS).map((s) => s.life), 1);
const first = lifePoint(samples, 1);
const last = lifePoint(samples, lastFullLife);
const drift = (a: number | undefined, b: number | undefined): number => (a === undefined || b === undefined ? Number.NaN : ((b - a) / a) * 100);
const rssDrift = drift(first?.rssMb, last?.rssMb);
const fdDrift = drift(first?.fds, last?.fds);
const maxRss = Math.max(...samples.map((s) => s.rssMb));
// within a life too: a life is at most KILL_EVERY_MS, so compare its window with its last WINDOW_MS
const withinLife = Array.from({ length: life }, (_, i) => {
  const [early, late] = [lifePoint(samples, i + 1), lifePoint(samples, i + 1, KILL_EVERY_MS - WINDOW_MS, KILL_EVERY_MS)];
  return early && late ? ((late.rssMb - early.rssMb) / early.rssMb) * 100 : null;
}).filter((v): v is number => v !== null);
const maxFds = Math.max(...samples.map((s) => s.fds));

const missed: string[] = [];
if (!(Math.abs(rssDrift) <= TARGET_DRIFT_PERCENT)) missed.push(`RSS drift ${rssDrift.toFixed(1)} %`);
if (!(Math.abs(fdDrift) <= TARGET_DRIFT_PERCENT)) missed.push(`fd drift ${fdDrift.toFixed(1)} %`);
if (lost.length > 0) missed.push(`${lost.length} events lost`);
if (outOfOrder > 0) missed.push(`${outOfOrder} events out of order`);
if (missingInLog.length + missingAtReceiver.length > 0) missed.push(`${missingInLog.length} terminal events not committed, ${missingAtReceiver.length} not received`);
if (unknown > 0) missed.push(`${unknown} events received that the log does not hold`);
if (dead > 0) missed.push(`${dead} dead letters`);
if (unexpectedExits.length > 0) missed.push(`daemon exits the soak did not cause: ${unexpectedExits.join(', ')}`);

const mb = (v: number | undefined): string => (v === undefined ? 'n/a' : v.toFixed(1));
const pct = (v: number): string => `${v >= 0 ? '+' : ''}${v.toFixed(1)} %`;
const at = `${Math.round(WARMUP_MS / 1000)}-${Math.round((WARMUP_MS + WINDOW_MS) / 1000)} s into the life, median`;
const rows: [string, string, string][] = [
  ['RSS, first life (MB)', mb(first?.rssMb), at],
  [`RSS, life ${lastFullLife} (MB)`, mb(last?.rssMb), at],
  ['RSS drift', pct(rssDrift), `<= ${TARGET_DRIFT_PERCENT} %`],
  ['max RSS seen (MB)', mb(maxRss), ''],
  [`RSS growth within a life, from ${Math.round(WARMUP_MS / 1000)} s to its last ${Math.round(WINDOW_MS / 1000)} s: median / max over ${withinLife.length} lives`, withinLife.length ? `${pct(median(withinLife))} / ${pct(Math.max(...withinLife))}` : 'n/a', ''],
  ['open fds (sockets), first life', first ? `${first.fds} (${first.sockets})` : 'n/a', at],
  [`open fds (sockets), life ${lastFullLife}`, last ? `${last.fds} (${last.sockets})` : 'n/a', at],
  ['fd drift', pct(fdDrift), `<= ${TARGET_DRIFT_PERCENT} %`],
  ['max open fds seen', String(maxFds), ''],
  ['SIGKILLs / process lives', `${kills} / ${life}`, ''],
  ['restart to listening, median / max (ms)', `${median(restartMs.slice(1))} / ${Math.max(...restartMs.slice(1), 0)}`, 'resumes every active watch'],
  ['watches created / in flight, mean / max', `${createdAtMs.filter((t) => t !== undefined).length} / ${Math.round(inFlightSamples.reduce((a, b) => a + b, 0) / Math.max(1, inFlightSamples.length))} / ${maxInFlight}`, `about ${WATCHES}`],
  ['events committed (SQLite log)', String(logged.length), ''],
  ['event kinds', kinds.join(', '), ''],
  ['events that had to arrive / arrived', `${mustArrive.length} / ${mustArrive.length - lost.length}`, ''],
  ['events lost', String(lost.length), '0'],
  ['duplicates (share of deliveries)', `${duplicates} (${((duplicates / Math.max(1, receiver.arrivals.length)) * 100).toFixed(2)} %)`, 'reported (at least once)'],
  ['events out of order per watch', String(outOfOrder), '0'],
  ['runs ended in the simulator / terminal event committed / received', `${ended.size} / ${ended.size - missingInLog.length} / ${ended.size - missingAtReceiver.length}`, 'all'],
  ['dead letters', String(dead), '0'],
  ['receiver down: flaps / total s / requests refused or 503', `${receiver.flaps} / ${Math.round(receiver.downMs / 1000)} / ${receiver.rejected}`, ''],
  ['settle: terminal events / receiver drained after (s)', `${(terminalSettledMs / 1000).toFixed(0)} / ${(drainedMs / 1000).toFixed(0)}`, `<= ${SETTLE_TIMEOUT_MS / 1000} each`],
  ['daemon error lines / exits not caused by the soak / graceful stop exit code', `${daemonErrors} / ${unexpectedExits.length} / ${stopCode ?? 'n/a'}`, '0 / 0 / 0'],
];
const command = `npm run bench:soak -- --watches ${WATCHES} --minutes ${SOAK_MS / 60_000} --kill-every ${KILL_EVERY_MS / 1000} --rps ${flags.rps}`;
const markdown = [
  `Soak measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC on ${describeMachine()}; \`${command}\`.`,
  '',
  '| metric | value | target |',
  '|---|---:|---|',
  ...rows.map(([name, value, target]) => `| ${name} | ${value} | ${target} |`),
  '',
  missed.length === 0 ? 'Every target met.' : `Targets missed: ${missed.join('; ')}.`,
  '',
].join('\n');
process.stdout.write(markdown);
mkdirSync(RESULTS, { recursive: true });
writeFileSync(path.join(RESULTS, 'soak.md'), markdown);
const json = { date: new Date().toISOString(), machine: describeMachine(), command, missed, rows: Object.fromEntries(rows.map(([name, value]) => [name, value])), lost: lost.slice(0, 50), samples };
writeFileSync(path.join(RESULTS, 'soak.json'), `${JSON.stringify(json, null, 1)}\n`);
if (missed.length === 0 && !flags.keep) rmSync(root, { recursive: true, force: true });
else process.stderr.write(`soak: data, daemon warnings and the tool handler kept in ${root}\n`);
process.exit(missed.length === 0 ? 0 : 1);
