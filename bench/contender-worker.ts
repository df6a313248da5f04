// One contender in its own process: watches every run of a workload to its end (or, for the
// scale workload, holds N watches for a measurement window) and reports what it saw and cost.
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { ApiClient, OpenAIHookReceiver, RunWatcher } from '../dist/index.js';
import { RUN_KIND } from '../dist/resource.js';
import type { PartialPollPolicy, PushMode, RunRef } from '../dist/index.js';
import { responseId, runIds } from './workloads.ts';

/** Who polls. */
export type Contender =
  | { readonly type: 'runwatch'; readonly policy?: PartialPollPolicy; readonly maxRequestsPerSecond: number; readonly maxInFlight: number }
  /** Background responses with a push signal; `webhook` listens on `hookPort` for the simulator's webhooks. */
  | { readonly type: 'runwatch-push'; readonly push: PushMode; readonly maxRequestsPerSecond: number; readonly maxInFlight: number; readonly maxStreams: number; readonly hook?: { readonly port: number; readonly secret: string } }
  | { readonly type: 'sdk'; readonly pollIntervalMs: number }
  /** Our HTTP client alone in a fixed-interval loop: the client's share of our cost. */
  | { readonly type: 'client-only'; readonly intervalMs: number }
  /** Node's fetch (undici) in the same loop. */
  | { readonly type: 'fetch-only'; readonly intervalMs: number }
  /** got (tuned: no retries, redirects, decompression) in the same loop: what the client cost before it moved to node:http. */
  | { readonly type: 'got-only'; readonly intervalMs: number };

/** Messages from bench.ts. */
export interface ContenderRequest {
  readonly contender: Contender;
  readonly baseUrl: string;
  readonly runs: number;
  /** Scale mode: spread the watches over one interval, then measure this long. */
  readonly scale?: { readonly intervalMs: number; readonly measureMs: number };
}

/** What the contender reports. */
export interface ContenderReport {
  /** When each run's terminal status was seen (epoch ms), `null` if its watch failed. */
  readonly observedAtMs: (number | null)[];
  /** Error messages of failed watches (first few). */
  readonly errors: string[];
  readonly failed: number;
  /** Process CPU (user + system) over the workload, µs. */
  readonly cpuUs: number;
  readonly wallMs: number;
  /** Peak resident set of the process, bytes. */
  readonly maxRssBytes: number;
  /** runwatch only: polls in the measurement window, and their lateness percentiles. */
  readonly polls?: number;
  readonly latenessP50Ms?: number;
  readonly latenessP99Ms?: number;
  readonly latenessMaxMs?: number;
}

const API_KEY = 'sk-bench-not-a-secret';

/** The runwatch contender: one RunWatcher with the contender's policy and budget. */
function runwatchFor(baseUrl: string, contender: Extract<Contender, { type: 'runwatch' | 'runwatch-push' }>): RunWatcher {
  return new RunWatcher({
    provider: 'openai',
    baseUrl,
    credentials: { apiKey: API_KEY },
    policy: contender.type === 'runwatch' ? contender.policy : undefined,
    streams: contender.type === 'runwatch-push' ? { maxStreams: contender.maxStreams } : undefined,
    maxRequestsPerSecond: contender.maxRequestsPerSecond,
    maxInFlight: contender.maxInFlight,
    maxSockets: contender.maxInFlight,
  });
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))]!;
}

async function watchAll(request: ContenderRequest): Promise<Pick<ContenderReport, 'observedAtMs' | 'errors' | 'failed'>> {
  const { contender, baseUrl, runs } = request;
  const observedAtMs: (number | null)[] = new Array<number | null>(runs).fill(null);
  const errors: string[] = [];
  const fail = (error: unknown): void => {
    if (errors.length < 5) errors.push(error instanceof Error ? error.message : String(error));
  };
  const ids = Array.from({ length: runs }, (_, i) => runIds(i));
  if (contender.type === 'sdk') {
    // imported here, not at the top: a contender's memory must not include the others' libraries
    const { default: OpenAI } = await import('openai');
    const client = new OpenAI({ apiKey: API_KEY, baseURL: baseUrl });
    await Promise.all(
      ids.map(async ({ threadId, runId }, i) => {
        try {
          await client.beta.threads.runs.poll(runId, { thread_id: threadId }, { pollIntervalMs: contender.pollIntervalMs });
          observedAtMs[i] = Date.now();
        } catch (error) {
          fail(error);
        }
      }),
    );
  } else if (contender.type === 'runwatch-push') {
    const watcher = runwatchFor(baseUrl, contender);
    let server: http.Server | undefined;
    if (contender.hook) {
      // the library user's own server, as the README shows it
      const receiver = new OpenAIHookReceiver([contender.hook.secret], { wakeResponse: (id) => watcher.wakeResponse(id) > 0 });
      server = http.createServer((req, res) => {
        const chunks: Buffer[] = [];
        req.on('data', (chunk: Buffer) => chunks.push(chunk));
        req.on('end', () => {
          void receiver.receive(req.headers, Buffer.concat(chunks).toString('utf8')).then((answer) => res.writeHead(answer.status, { 'content-type': 'application/json' }).end(JSON.stringify(answer.body)));
        });
      });
      await new Promise<void>((resolve) => server!.listen(contender.hook!.port, '127.0.0.1', resolve));
    }
    await Promise.all(
      ids.map(async (_, i) => {
        try {
          await watcher.watchResponse({ responseId: responseId(i), watchId: responseId(i), push: contender.push }).promise;
          observedAtMs[i] = Date.now();
        } catch (error) {
          fail(error);
        }
      }),
    );
    await watcher.close();
    server?.closeAllConnections();
    await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)));
  } else if (contender.type === 'runwatch') {
    const watcher = runwatchFor(baseUrl, contender);
    await Promise.all(
      ids.map(async ({ threadId, runId }, i) => {
        try {
          await watcher.watchRun({ threadId, runId, watchId: runId }).promise;
          observedAtMs[i] = Date.now();
        } catch (error) {
          fail(error);
        }
      }),
    );
    await watcher.close();
  } else {
    const client = new ApiClient({ provider: 'openai', baseUrl, credentials: { apiKey: API_KEY }, maxSockets: 256 });
    const headers = { authorization: `Bearer ${API_KEY}`, 'openai-beta': 'assistants=v2', accept: 'application/json' };
    const { default: got } = await import('got');
    const gotClient = got.extend({ retry: { limit: 0 }, throwHttpErrors: false, followRedirect: false, decompress: false, responseType: 'text', agent: { http: new http.Agent({ keepAlive: true, maxSockets: 256 }) } });
    const retrieve =
      contender.type === 'client-only'
        ? async (ref: RunRef): Promise<string | null> => {
            const outcome = await client.retrieve(RUN_KIND, ref, { watchId: ref.run_id });
            return outcome.ok ? outcome.snapshot.status : null;
          }
        : contender.type === 'got-only'
          ? async (ref: RunRef): Promise<string | null> => {
              const response = await gotClient.get(`${baseUrl}/threads/${ref.thread_id}/runs/${ref.run_id}`, { headers });
              return response.statusCode === 200 ? ((JSON.parse(response.body) as { status?: string }).status ?? null) : null;
            }
          : async (ref: RunRef): Promise<string | null> => {
            const response = await fetch(`${baseUrl}/threads/${ref.thread_id}/runs/${ref.run_id}`, { headers });
            const body = (await response.json()) as { status?: string };
            return response.ok ? (body.status ?? null) : null;
          };
    await Promise.all(
      ids.map(async ({ threadId, runId }, i) => {
        for (;;) {
          const status = await retrieve({ thread_id: threadId, run_id: runId });
          if (status === 'completed' || status === 'failed' || status === 'cancelled' || status === 'expired' || status === 'incomplete') break;
          await sleep(contender.intervalMs);
        }
        observedAtMs[i] = Date.now();
      }),
    );
    client.close();
  }
  return { observedAtMs, errors, failed: observedAtMs.filter((t) => t === null).length };
}

/** Scale: N long watches spread over one interval; counts polls and lateness in a window. */
async function holdMany(request: ContenderRequest): Promise<Omit<ContenderReport, 'maxRssBytes'>> {
  const { contender, baseUrl, runs } = request;
  const scale = request.scale!;
  if (contender.type !== 'runwatch') throw new Error('the scale workload is for runwatch');
  const watcher = runwatchFor(baseUrl, contender);
  let measuring = false;
  const lateness: number[] = [];
  let failedPolls = 0;
  const failures = new Map<string, number>();
  watcher.on('poll', (report) => {
    if (!measuring) return;
    lateness.push(report.latenessMs);
    if (report.outcome === 'ok') return;
    failedPolls += 1;
    const message = report.message ?? report.outcome;
    failures.set(message, (failures.get(message) ?? 0) + 1);
  });
  // spread the starts over one interval, in 100 slices, as watches arrive in a real fleet
  const slices = 100;
  for (let s = 0; s < slices; s += 1) {
    for (let i = Math.floor((s * runs) / slices); i < Math.floor(((s + 1) * runs) / slices); i += 1) {
      const { threadId, runId } = runIds(i);
      watcher.watchRun({ threadId, runId, watchId: runId });
    }
    await sleep(scale.intervalMs / slices);
  }
  await sleep(2_000);
  measuring = true;
  const cpu = process.cpuUsage();
  const startedAtMs = performance.now();
  await sleep(scale.measureMs);
  measuring = false;
  const used = process.cpuUsage(cpu);
  const wallMs = performance.now() - startedAtMs;
  await watcher.close();
  lateness.sort((a, b) => a - b);
  return {
    observedAtMs: [],
    errors: [...failures].slice(0, 5).map(([message, count]) => `${count} polls: ${message}`),
    failed: failedPolls,
    cpuUs: used.user + used.system,
    wallMs,
    polls: lateness.length,
    latenessP50Ms: percentile(lateness, 50),
    latenessP99Ms: percentile(lateness, 99),
    latenessMaxMs: lateness.at(-1) ?? 0,
  };
}

process.once('message', (request: ContenderRequest) => {
  void (async () => {
    let report: ContenderReport;
    if (request.scale) {
      report = { ...(await holdMany(request)), maxRssBytes: process.resourceUsage().maxRSS * 1024 };
    } else {
      const cpu = process.cpuUsage();
      const startedAtMs = performance.now();
      const seen = await watchAll(request);
      const used = process.cpuUsage(cpu);
      report = { ...seen, cpuUs: used.user + used.system, wallMs: performance.now() - startedAtMs, maxRssBytes: process.resourceUsage().maxRSS * 1024 };
    }
    process.send?.(report, () => process.disconnect());
  })();
});
