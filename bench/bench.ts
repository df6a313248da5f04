// `npm run bench`: runwatch against the OpenAI SDK's `beta.threads.runs.poll()` on the built-in
// simulator, all contenders in the same run on this machine. Each contender and the simulator
// run in their own processes, one contender at a time, so CPU and memory are each one's own.
// Prints tables and writes bench/results/latest.{json,md} and bench/results/heavy-tail.svg.
//
// Usage: npm run bench [-- --only fixed,heavy,scale,budget,push] [--match <contender substring>] [--repeat 3] [--quick]
//        npm run bench -- --replot   (redraw the chart from bench/results/latest.json)
// npm run bench compiles bench/ to bench-dist/ first: type stripping at run time would add
// about 17 MB to every contender's RSS.
import { fork } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ask, describeMachine } from './harness.ts';
import type { Contender, ContenderReport, ContenderRequest } from './contender-worker.ts';
import type { SimReport, SimRequest } from './sim-worker.ts';
import type { WorkloadSpec } from './workloads.ts';
import { HEAVY_MAX_MS } from './workloads.ts';

const HERE = import.meta.dirname;
const RESULTS = path.join(HERE, '..', 'bench', 'results');
const SEED = 20261125;
const WORKLOADS = ['fixed', 'heavy', 'scale', 'budget', 'push'] as const;
type WorkloadName = (typeof WORKLOADS)[number];

const { values: args } = parseArgs({
  options: {
    only: { type: 'string', default: WORKLOADS.join(',') },
    match: { type: 'string', default: '' },
    repeat: { type: 'string', default: '1' },
    quick: { type: 'boolean', default: false },
    replot: { type: 'boolean', default: false },
  },
});
const only = new Set(args.only.split(',').map((s) => s.trim()));
for (const name of only) if (!(WORKLOADS as readonly string[]).includes(name)) throw new Error(`unknown workload ${name}: use ${WORKLOADS.join(', ')}`);
const repeat = Math.max(1, Number(args.repeat));
const quick = args.quick;
const RUNS = quick ? 250 : 1_000;
const SCALE_POINTS = quick ? [1_000, 5_000] : [1_000, 5_000, 10_000, 20_000, 50_000, 100_000];
/** The scale point run again with V8's young generation capped. */
const SEMI_SPACE_POINT = quick ? 5_000 : 10_000;
const SCALE_INTERVAL_MS = 10_000;
const SCALE_MEASURE_MS = quick ? 10_000 : 30_000;
const BUDGET_RPS = 200;

/** A generous budget for the runwatch contenders where the budget is not what is measured. */
const OPEN_BUDGET = { maxRequestsPerSecond: 100_000, maxInFlight: 256 };
const RUNWATCH = { type: 'runwatch', ...OPEN_BUDGET } as const satisfies Contender;
const sdk = (pollIntervalMs: number): Contender => ({ type: 'sdk', pollIntervalMs });

/** What bench/results/latest.json holds. */
interface Results {
  readonly machine: string;
  readonly date: string;
  readonly repeat: number;
  readonly quick: boolean;
  /** Per workload: when, where and how often it was measured (workloads not run keep theirs). */
  readonly measuredOn: Record<string, string>;
  readonly medians: Row[];
  /** Each repetition's rows, of every workload (those not run this time from their last run). */
  readonly repetitions: Row[][];
}

interface Row {
  readonly workload: WorkloadName;
  readonly contender: string;
  readonly metrics: Record<string, number>;
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))]!;
}

function worker(file: string, nodeFlags: readonly string[] = []): ChildProcess {
  return fork(path.join(HERE, file), [], { execArgv: [...nodeFlags], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
}

/** Runs one contender against a fresh simulator and returns both sides' reports. */
async function measure(spec: WorkloadSpec, contender: Contender, scale?: ContenderRequest['scale'], nodeFlags: readonly string[] = []): Promise<{ sim: SimReport; seen: ContenderReport; startedAtMs: number }> {
  const simProcess = worker('sim-worker.js');
  try {
    const { baseUrl } = await ask<{ baseUrl: string }>(simProcess, { type: 'start', spec } satisfies SimRequest);
    const startedAtMs = Date.now();
    const contenderProcess = worker('contender-worker.js', nodeFlags);
    const seen = await ask<ContenderReport>(contenderProcess, { contender, baseUrl, runs: spec.runs, scale } satisfies ContenderRequest);
    await once(contenderProcess, 'exit');
    const sim = await ask<SimReport>(simProcess, { type: 'collect' } satisfies SimRequest);
    return { sim, seen, startedAtMs };
  } finally {
    simProcess.disconnect();
    await once(simProcess, 'exit');
  }
}

function latencies(sim: SimReport, seen: ContenderReport): number[] {
  const out: number[] = [];
  seen.observedAtMs.forEach((at, i) => {
    const truth = sim.terminalAtMs[i];
    if (at !== null && truth !== null && truth !== undefined) out.push(at - truth);
  });
  return out.sort((a, b) => a - b);
}

function common(sim: SimReport, seen: ContenderReport, runs: number): Record<string, number> {
  const lat = latencies(sim, seen);
  return {
    requestsPerRun: sim.retrieves.reduce((a, b) => a + b, 0) / runs,
    latencyMeanMs: lat.reduce((a, b) => a + b, 0) / Math.max(1, lat.length),
    latencyP50Ms: percentile(lat, 50),
    latencyP99Ms: percentile(lat, 99),
    cpuUsPerRequest: seen.cpuUs / Math.max(1, sim.requests),
    peakRssMb: seen.maxRssBytes / 2 ** 20,
    failedRuns: seen.failed,
  };
}

/** Runs each (selected) contender on the workload, one after the other, with the common metrics. */
async function runEach(workload: WorkloadName, spec: WorkloadSpec, contenders: readonly [string, Contender][]): Promise<Row[]> {
  const rows: Row[] = [];
  for (const [name, contender] of contenders.filter(([n]) => n.includes(args.match))) {
    const { sim, seen } = await measure(spec, contender);
    rows.push({ workload, contender: name, metrics: common(sim, seen, spec.runs) });
    log(rows.at(-1)!);
  }
  return rows;
}

async function fixed(): Promise<Row[]> {
  const spec: WorkloadSpec = { kind: 'fixed', runs: RUNS, seed: SEED };
  const contenders: [string, Contender][] = [
    ['runwatch (default policy)', RUNWATCH],
    // the same requests as the SDK at 1000 ms: CPU per poll compared like for like
    ['runwatch, fixed 1000 ms policy', { ...RUNWATCH, policy: { jitter: 0, intervals: { queued: { baseMs: 1_000, capMs: 1_000 }, in_progress: { baseMs: 1_000, capMs: 1_000 } } } }],
    ['openai SDK poll, 1000 ms', sdk(1_000)],
    ['openai SDK poll, 5000 ms', sdk(5_000)],
    ['runwatch ApiClient (node:http) alone, 1000 ms loop', { type: 'client-only', intervalMs: 1_000 }],
    ['got alone, 1000 ms loop', { type: 'got-only', intervalMs: 1_000 }],
    ['fetch (undici) alone, 1000 ms loop', { type: 'fetch-only', intervalMs: 1_000 }],
  ];
  return runEach('fixed', spec, contenders);
}

async function heavy(): Promise<Row[]> {
  const spec: WorkloadSpec = { kind: 'heavy', runs: RUNS, seed: SEED + 1 };
  const contenders: [string, Contender][] = [
    ['runwatch (default policy)', RUNWATCH],
    ['fixed 1000 ms (openai SDK poll)', sdk(1_000)],
    ['fixed 2000 ms (openai SDK poll)', sdk(2_000)],
    ['fixed 5000 ms (openai SDK poll)', sdk(5_000)],
  ];
  return runEach('heavy', spec, contenders);
}

async function scale(): Promise<Row[]> {
  const rows: Row[] = [];
  // the 10,000 point again with V8's young generation capped: it grows under a high allocation rate
  const points: [number, string[]][] = [...SCALE_POINTS.map((n): [number, string[]] => [n, []]), [SEMI_SPACE_POINT, ['--max-semi-space-size=8']]];
  for (const [watches, nodeFlags] of points.filter(([n, flags]) => `${n} watches ${flags.join(' ')}`.includes(args.match))) {
    const spec: WorkloadSpec = { kind: 'scale', runs: watches, seed: SEED + 2 };
    const contender: Contender = { ...RUNWATCH, policy: { jitter: 0, intervals: { in_progress: { baseMs: SCALE_INTERVAL_MS, capMs: SCALE_INTERVAL_MS } } } };
    const { seen, sim } = await measure(spec, contender, { intervalMs: SCALE_INTERVAL_MS, measureMs: SCALE_MEASURE_MS }, nodeFlags);
    rows.push({
      workload: 'scale',
      contender: `${watches} watches${nodeFlags.length > 0 ? `, node ${nodeFlags.join(' ')}` : ''}`,
      metrics: {
        watches,
        pollsPerSecond: (seen.polls ?? 0) / (seen.wallMs / 1000),
        latenessP50Ms: seen.latenessP50Ms ?? Number.NaN,
        latenessP99Ms: seen.latenessP99Ms ?? Number.NaN,
        latenessMaxMs: seen.latenessMaxMs ?? Number.NaN,
        cpuShare: seen.cpuUs / (seen.wallMs * 1000),
        cpuUsPerPoll: seen.cpuUs / Math.max(1, seen.polls ?? 0),
        peakRssMb: seen.maxRssBytes / 2 ** 20,
        failedPolls: seen.failed,
        // the simulator runs in its own process on the same cores: at 100% it is the bottleneck, not runwatch
        simCpuShare: sim.cpuUs / (sim.wallMs * 1000),
      },
    });
    log(rows.at(-1)!);
    if (seen.errors.length > 0) process.stderr.write(`    failed polls: ${seen.errors.join('; ')}\n`);
  }
  return rows;
}

async function budget(): Promise<Row[]> {
  const spec: WorkloadSpec = { kind: 'budget', runs: RUNS, seed: SEED + 3, rateLimit: { requestsPerSecond: quick ? BUDGET_RPS / 4 : BUDGET_RPS } };
  const contenders: [string, Contender][] = [
    [`runwatch, budget set 5x too high (adaptive)`, { type: 'runwatch', maxRequestsPerSecond: 5 * (spec.rateLimit?.requestsPerSecond ?? 0), maxInFlight: 64 }],
    ['openai SDK poll, 1000 ms', sdk(1_000)],
    ['openai SDK poll, 5000 ms', sdk(5_000)],
  ];
  const rows: Row[] = [];
  for (const [name, contender] of contenders.filter(([n]) => n.includes(args.match))) {
    const { sim, seen, startedAtMs } = await measure(spec, contender);
    const after = sim.perSecond.filter(([second]) => second * 1000 >= startedAtMs + 10_000);
    const late = after.reduce((a, [, requests, limited]) => [a[0]! + requests, a[1]! + limited], [0, 0]);
    const lastSeen = Math.max(...seen.observedAtMs.map((t) => t ?? 0));
    rows.push({
      workload: 'budget',
      contender: name,
      metrics: {
        requestsPerRun: sim.retrieves.reduce((a, b) => a + b, 0) / spec.runs,
        rateLimitedShareAfter10s: late[1]! / Math.max(1, late[0]!),
        rateLimitedShareAll: sim.rateLimited / Math.max(1, sim.requests),
        failedRuns: seen.failed,
        timeToAllTerminalS: seen.failed === spec.runs ? Number.NaN : (lastSeen - startedAtMs) / 1000,
      },
    });
    log(rows.at(-1)!);
  }
  return rows;
}

/** A port free right now on loopback: the simulator posts its webhooks there, the contender listens on it. */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Push: background responses with heavy-tail durations, watched by polling, streams, or webhooks (some dropped). */
async function push(): Promise<Row[]> {
  const secret = `whsec_${Buffer.alloc(32, 42).toString('base64')}`;
  const base = { type: 'runwatch-push', ...OPEN_BUDGET, maxStreams: RUNS } as const;
  const contenders: [string, Contender, number | undefined][] = [
    ['runwatch default polling (push none)', { ...base, push: 'none' }, undefined],
    ['runwatch push stream (1 stream per job)', { ...base, push: 'stream' }, undefined],
    ['runwatch push webhook, 0 % dropped', { ...base, push: 'webhook' }, 0],
    ['runwatch push webhook, 5 % dropped', { ...base, push: 'webhook' }, 0.05],
  ];
  const rows: Row[] = [];
  for (const [name, contender, dropRate] of contenders.filter(([n]) => n.includes(args.match))) {
    const port = dropRate === undefined ? undefined : await freePort();
    const spec: WorkloadSpec = {
      kind: 'push',
      runs: RUNS,
      seed: SEED + 4,
      ...(port === undefined ? {} : { webhooks: { url: `http://127.0.0.1:${port}/hooks/openai`, secret, dropRate, seed: SEED } }),
    };
    const { sim, seen } = await measure(spec, port === undefined ? contender : { ...contender, hook: { port, secret } } as Contender);
    const lat = latencies(sim, seen);
    const dropped = new Set(sim.dropped ?? []);
    const droppedLate = [...dropped].flatMap((i) => (seen.observedAtMs[i] !== null && sim.terminalAtMs[i] !== null ? [seen.observedAtMs[i]! - sim.terminalAtMs[i]!] : [])).sort((a, b) => a - b);
    rows.push({
      workload: 'push',
      contender: name,
      metrics: {
        getsPerJob: sim.retrieves.reduce((a, b) => a + b, 0) / spec.runs,
        streamsPerJob: (sim.streams ?? []).reduce((a, b) => a + b, 0) / spec.runs,
        latencyP50Ms: percentile(lat, 50),
        latencyP99Ms: percentile(lat, 99),
        cpuMsPerJob: seen.cpuUs / 1000 / spec.runs,
        droppedWebhooks: dropped.size,
        droppedFoundP50S: droppedLate.length > 0 ? percentile(droppedLate, 50) / 1000 : Number.NaN,
        droppedFoundMaxS: droppedLate.length > 0 ? droppedLate.at(-1)! / 1000 : Number.NaN,
        failedRuns: seen.failed,
      },
    });
    log(rows.at(-1)!);
  }
  return rows;
}

function log(row: Row): void {
  const parts = Object.entries(row.metrics).map(([k, v]) => `${k}=${format(k, v)}`);
  process.stderr.write(`  ${row.workload} | ${row.contender} | ${parts.join(' ')}\n`);
}

function format(key: string, value: number): string {
  if (!Number.isFinite(value)) return 'n/a';
  if (key.startsWith('rateLimitedShare')) return `${(value * 100).toFixed(2)} %`;
  if (key === 'cpuShare' || key === 'simCpuShare') return `${(value * 100).toFixed(0)} %`;
  if (key === 'watches' || key === 'droppedWebhooks' || key.startsWith('failed')) return String(Math.round(value));
  if (key === 'requestsPerRun' || key === 'getsPerJob' || key === 'streamsPerJob' || key === 'cpuMsPerJob') return value.toFixed(2);
  return value >= 100 ? value.toFixed(0) : value.toFixed(1);
}

/** Median of each metric over the repetitions (the machine is noisy). */
function medians(runs: Row[][]): Row[] {
  return runs[0]!.map((row, index) => {
    const metrics: Record<string, number> = {};
    for (const key of Object.keys(row.metrics)) {
      const values = runs.map((r) => r[index]!.metrics[key]!).sort((a, b) => a - b);
      metrics[key] = values[Math.floor((values.length - 1) / 2)]!;
      if (values.length % 2 === 0) metrics[key] = (metrics[key] + values[values.length / 2]!) / 2;
    }
    return { ...row, metrics };
  });
}

const HEADERS: Record<string, string> = {
  requestsPerRun: 'requests/run',
  latencyMeanMs: 'latency mean ms',
  latencyP50Ms: 'latency p50 ms',
  latencyP99Ms: 'latency p99 ms',
  cpuUsPerRequest: 'CPU µs/request',
  peakRssMb: 'peak RSS MB',
  failedRuns: 'failed runs',
  watches: 'watches',
  pollsPerSecond: 'polls/s',
  latenessP50Ms: 'lateness p50 ms',
  latenessP99Ms: 'lateness p99 ms',
  latenessMaxMs: 'lateness max ms',
  cpuShare: 'CPU (one core)',
  cpuUsPerPoll: 'CPU µs/poll',
  failedPolls: 'failed polls',
  simCpuShare: 'simulator CPU (one core)',
  rateLimitedShareAfter10s: '429 share after 10 s',
  rateLimitedShareAll: '429 share, all',
  timeToAllTerminalS: 'all terminal seen after s',
  getsPerJob: 'GETs/job',
  streamsPerJob: 'streams/job',
  cpuMsPerJob: 'CPU ms/job',
  droppedWebhooks: 'webhooks dropped',
  droppedFoundP50S: 'dropped found after, p50 s',
  droppedFoundMaxS: 'dropped found after, max s',
};

function table(rows: Row[]): string {
  const keys = Object.keys(rows[0]!.metrics).filter((k) => k !== 'watches');
  const lines = [`| contender | ${keys.map((k) => HEADERS[k] ?? k).join(' | ')} |`, `|---|${keys.map(() => '---:').join('|')}|`];
  for (const row of rows) lines.push(`| ${row.contender} | ${keys.map((k) => format(k, row.metrics[k]!)).join(' | ')} |`);
  return lines.join('\n');
}

/** Requests per run against mean detection latency, one point per contender (heavy tail). */
function chart(rows: Row[]): string {
  const w = 640;
  const h = 400;
  const m = { left: 70, right: 30, top: 40, bottom: 60 };
  const xs = rows.map((r) => r.metrics.requestsPerRun!);
  const ys = rows.flatMap((r) => [r.metrics.latencyMeanMs!, r.metrics.latencyP99Ms!]);
  const xMax = Math.ceil(Math.max(...xs) * 1.15);
  const yMax = Math.ceil((Math.max(...ys) * 1.1) / 1000) * 1000;
  const x = (v: number): number => m.left + (v / xMax) * (w - m.left - m.right);
  const y = (v: number): number => h - m.bottom - (v / yMax) * (h - m.top - m.bottom);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" font-family="sans-serif" font-size="12">`,
    `<rect width="${w}" height="${h}" fill="white"/>`,
    `<text x="${w / 2}" y="20" text-anchor="middle" font-size="14">Heavy-tail workload: requests per run vs detection latency (lower left is better)</text>`,
    `<line x1="${m.left}" y1="${h - m.bottom}" x2="${w - m.right}" y2="${h - m.bottom}" stroke="black"/>`,
    `<line x1="${m.left}" y1="${m.top}" x2="${m.left}" y2="${h - m.bottom}" stroke="black"/>`,
    `<text x="${w / 2}" y="${h - 20}" text-anchor="middle">requests per run</text>`,
    `<text x="18" y="${h / 2}" text-anchor="middle" transform="rotate(-90 18 ${h / 2})">detection latency, ms (dot: mean, ring: p99)</text>`,
  ];
  for (let v = 0; v <= xMax; v += Math.max(1, Math.round(xMax / 8))) {
    parts.push(`<text x="${x(v)}" y="${h - m.bottom + 16}" text-anchor="middle">${v}</text>`, `<line x1="${x(v)}" y1="${h - m.bottom}" x2="${x(v)}" y2="${h - m.bottom + 4}" stroke="black"/>`);
  }
  for (let v = 0; v <= yMax; v += yMax / 5) {
    parts.push(`<text x="${m.left - 6}" y="${y(v) + 4}" text-anchor="end">${v.toFixed(0)}</text>`, `<line x1="${m.left}" y1="${y(v)}" x2="${w - m.right}" y2="${y(v)}" stroke="#ddd"/>`);
  }
  const colors = ['#d62728', '#1f77b4', '#2ca02c', '#9467bd', '#ff7f0e'];
  rows.forEach((row, i) => {
    const color = colors[i % colors.length]!;
    const cx = x(row.metrics.requestsPerRun!);
    parts.push(
      `<line x1="${cx}" y1="${y(row.metrics.latencyMeanMs!)}" x2="${cx}" y2="${y(row.metrics.latencyP99Ms!)}" stroke="${color}" stroke-dasharray="3 3"/>`,
      `<circle cx="${cx}" cy="${y(row.metrics.latencyMeanMs!)}" r="5" fill="${color}"/>`,
      `<circle cx="${cx}" cy="${y(row.metrics.latencyP99Ms!)}" r="5" fill="none" stroke="${color}"/>`,
    );
    // a legend, not labels by the points: close points would overprint each other
    const ly = m.top + 8 + i * 18;
    parts.push(`<circle cx="${w - m.right - 250}" cy="${ly}" r="5" fill="${color}"/>`, `<text x="${w - m.right - 240}" y="${ly + 4}">${escapeXml(row.contender)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n');
}

function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

const TITLES: Record<WorkloadName, string> = {
  fixed: `Fixed: ${RUNS} runs, queued 1 s then in_progress 11-13 s`,
  heavy: `Heavy tail: ${RUNS} runs, log-normal durations (median 4 s, p95 40 s, cut at ${HEAVY_MAX_MS / 1000} s)`,
  scale: `Scale: one RunWatcher, every watch polled each ${SCALE_INTERVAL_MS / 1000} s, measured over ${SCALE_MEASURE_MS / 1000} s`,
  budget: `Budget: ${RUNS} runs lasting 21-41 s, the API allows ${quick ? BUDGET_RPS / 4 : BUDGET_RPS} requests/s (429 beyond)`,
  push: `Push: ${RUNS} background responses created with stream: true, heavy-tail durations (median 4 s, p95 40 s, cut at ${HEAVY_MAX_MS / 1000} s); safety net 30 s doubling to 5 min`,
};

async function main(): Promise<void> {
  if (args.replot) {
    // redraw the chart from the last results, without measuring again
    const last = JSON.parse(readFileSync(path.join(RESULTS, 'latest.json'), 'utf8')) as { medians: Row[] };
    writeFileSync(path.join(RESULTS, 'heavy-tail.svg'), `${chart(last.medians.filter((row) => row.workload === 'heavy'))}\n`);
    return;
  }
  const machine = describeMachine();
  process.stderr.write(`runwatch bench on ${machine}; ${repeat} repetition(s)${quick ? ', quick' : ''}\n`);
  const suites: Record<WorkloadName, () => Promise<Row[]>> = { fixed, heavy, scale, budget, push };
  const repetitions: Row[][] = [];
  for (let r = 0; r < repeat; r += 1) {
    process.stderr.write(`repetition ${r + 1} of ${repeat}\n`);
    const rows: Row[] = [];
    for (const name of WORKLOADS) if (only.has(name)) rows.push(...(await suites[name]()));
    repetitions.push(rows);
  }
  const measured = medians(repetitions);
  // workloads not run this time keep their last results, each with where and when it was measured
  const latest = path.join(RESULTS, 'latest.json');
  const previous = existsSync(latest) ? (JSON.parse(readFileSync(latest, 'utf8')) as Partial<Results>) : {};
  const oldNote = `${(previous.date ?? '').slice(0, 10)} on ${previous.machine ?? 'unknown'}; ${previous.repeat === 1 ? 'one run' : `median of ${previous.repeat ?? 1} runs`}`;
  const note = `${new Date().toISOString().slice(0, 10)} on ${machine}; ${repeat === 1 ? 'one run' : `median of ${repeat} runs`}${quick ? ' (quick mode: smaller workloads)' : ''}`;
  const measuredOn: Record<string, string> = {};
  for (const name of WORKLOADS) if (!only.has(name) && (previous.medians ?? []).some((row) => row.workload === name)) measuredOn[name] = previous.measuredOn?.[name] ?? oldNote;
  for (const name of only) measuredOn[name] = note;
  const result = WORKLOADS.flatMap((name) => (only.has(name) ? measured : (previous.medians ?? [])).filter((row) => row.workload === name));
  const markdown: string[] = [];
  for (const name of WORKLOADS) {
    const rows = result.filter((row) => row.workload === name);
    if (rows.length === 0) continue;
    markdown.push(`### ${TITLES[name]}`, '', `Measured ${measuredOn[name]}.`, '', table(rows), '');
  }
  const text = markdown.join('\n');
  process.stdout.write(`\n${text}\n`);
  mkdirSync(RESULTS, { recursive: true });
  writeFileSync(path.join(RESULTS, 'latest.md'), text);
  // the repetitions of workloads not run stay too, side by side with this run's
  const kept = (previous.repetitions ?? []).map((rows) => rows.filter((row) => !only.has(row.workload)));
  const allRepetitions = Array.from({ length: Math.max(kept.length, repetitions.length) }, (_, r) => [...(kept[r] ?? []), ...(repetitions[r] ?? [])]);
  const results: Results = { machine, date: new Date().toISOString(), repeat, quick, measuredOn, medians: result, repetitions: allRepetitions };
  writeFileSync(latest, `${JSON.stringify(results, null, 2)}\n`);
  const heavyRows = result.filter((row) => row.workload === 'heavy');
  if (heavyRows.length > 0) writeFileSync(path.join(RESULTS, 'heavy-tail.svg'), `${chart(heavyRows)}\n`);
  process.stderr.write(`wrote ${path.relative(process.cwd(), RESULTS)}/latest.md, latest.json${heavyRows.length > 0 ? ', heavy-tail.svg' : ''}\n`);
}

await main();
