// A simulator in its own process, so the contender's CPU and memory are its own.
// Driven over IPC by bench.ts: `start` (a workload), then `collect`, then disconnect.
import { startSimulator } from '../dist/simulator.js';
import type { RunningSimulator } from '../dist/simulator.js';
import type { WorkloadSpec } from './workloads.ts';
import { buildRuns, runIds } from './workloads.ts';

/** Messages from bench.ts. */
export type SimRequest = { readonly type: 'start'; readonly spec: WorkloadSpec } | { readonly type: 'collect' };

/** What the simulator saw, per run and in all. */
export interface SimReport {
  readonly type: 'report';
  /** Retrieve requests per run (answered or not). */
  readonly retrieves: number[];
  /** True time of each run's terminal status (epoch ms), `null` if it never got there. */
  readonly terminalAtMs: (number | null)[];
  readonly requests: number;
  readonly rateLimited: number;
  /** [epoch second, requests, 429s]. */
  readonly perSecond: [number, number, number][];
}

let sim: RunningSimulator | null = null;
let spec: WorkloadSpec | null = null;

process.on('message', (message: SimRequest) => {
  void (async () => {
    if (message.type === 'start') {
      spec = message.spec;
      sim = await startSimulator({ runs: buildRuns(spec), rateLimit: spec.rateLimit, recordRequests: false });
      process.send?.({ type: 'ready', baseUrl: sim.baseUrl });
      return;
    }
    if (!sim || !spec) throw new Error('collect before start');
    const retrieves: number[] = [];
    const terminalAtMs: (number | null)[] = [];
    for (let i = 0; i < spec.runs; i += 1) {
      const { runId } = runIds(i);
      retrieves.push(sim.retrieveCount(runId));
      const last = sim.transitions(runId).at(-1);
      terminalAtMs.push(last?.status === 'completed' ? last.atMs : null);
    }
    const stats = sim.stats();
    const report: SimReport = {
      type: 'report',
      retrieves,
      terminalAtMs,
      requests: stats.requests,
      rateLimited: stats.rateLimited,
      perSecond: [...stats.perSecond].map(([second, b]) => [second, b.requests, b.rateLimited]),
    };
    process.send?.(report);
  })();
});
process.on('disconnect', () => void sim?.close().finally(() => process.exit(0)));
