// A simulator in its own process, so the contender's CPU and memory are its own.
// Driven over IPC by bench.ts: `start` (a workload), then `collect`, then disconnect.
import { startSimulator } from '../dist/simulator.js';
import type { RunningSimulator } from '../dist/simulator.js';
import type { WorkloadSpec } from './workloads.ts';
import { buildResponses, buildRuns, responseId, runIds } from './workloads.ts';

/** Messages from bench.ts. */
export type SimRequest = { readonly type: 'start'; readonly spec: WorkloadSpec } | { readonly type: 'collect' };

/** What the simulator saw, per run and in all. */
export interface SimReport {
  readonly type: 'report';
  /** Retrieve requests per run (answered or not). */
  readonly retrieves: number[];
  /** True time of each run's terminal status (epoch ms), `null` if it never got there. */
  readonly terminalAtMs: (number | null)[];
  /** Each run's or response's status now (its last true transition), `null` before its first request. */
  readonly lastStatus: (string | null)[];
  readonly requests: number;
  readonly rateLimited: number;
  /** Push: stream connections per response. */
  readonly streams?: number[];
  /** Push: indexes of the responses whose webhook was dropped on purpose. */
  readonly dropped?: number[];
  /** [epoch second, requests, 429s]. */
  readonly perSecond: [number, number, number][];
  /** The simulator process's CPU (user + system) from `start` to `collect`, µs, and the wall time it took, ms. */
  readonly cpuUs: number;
  readonly wallMs: number;
}

let sim: RunningSimulator | null = null;
let spec: WorkloadSpec | null = null;
let cpuAtStart: NodeJS.CpuUsage | undefined;
let startedAtMs = 0;

process.on('message', (message: SimRequest) => {
  void (async () => {
    if (message.type === 'start') {
      spec = message.spec;
      cpuAtStart = process.cpuUsage();
      startedAtMs = performance.now();
      sim =
        spec.kind === 'push'
          ? await startSimulator({ responses: buildResponses(spec), webhooks: spec.webhooks, recordRequests: false })
          : await startSimulator({ runs: buildRuns(spec), rateLimit: spec.rateLimit, recordRequests: false });
      process.send?.({ type: 'ready', baseUrl: sim.baseUrl });
      return;
    }
    if (!sim || !spec) throw new Error('collect before start');
    const cpu = process.cpuUsage(cpuAtStart);
    const wallMs = performance.now() - startedAtMs;
    const retrieves: number[] = [];
    const terminalAtMs: (number | null)[] = [];
    const lastStatus: (string | null)[] = [];
    const push = spec.kind === 'push';
    const streams: number[] = [];
    for (let i = 0; i < spec.runs; i += 1) {
      const runId = push ? responseId(i) : runIds(i).runId;
      if (push) streams.push(sim.streamCount(runId));
      retrieves.push(sim.retrieveCount(runId));
      const last = sim.transitions(runId).at(-1);
      terminalAtMs.push(last?.status === 'completed' ? last.atMs : null);
      lastStatus.push(last?.status ?? null);
    }
    const stats = sim.stats();
    const report: SimReport = {
      type: 'report',
      retrieves,
      terminalAtMs,
      lastStatus,
      requests: stats.requests,
      rateLimited: stats.rateLimited,
      ...(push ? { streams, dropped: sim.droppedWebhooks().map((id) => Number(id.slice('resp_b'.length))) } : {}),
      perSecond: [...stats.perSecond].map(([second, b]) => [second, b.requests, b.rateLimited]),
      cpuUs: cpu.user + cpu.system,
      wallMs,
    };
    process.send?.(report);
  })();
});
process.on('disconnect', () => void sim?.close().finally(() => process.exit(0)));
