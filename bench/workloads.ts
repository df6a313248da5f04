// The benchmark's workloads: seeded timelines for the simulator, shared by the simulator
// worker (which serves them) and the contender worker (which derives the same ids).
import { seededRandom } from '../dist/simulator.js';
import type { RateLimit, SimulatedResponse, SimulatedRun, SimulatedWebhooks } from '../dist/simulator.js';

/** What a simulator worker serves. */
export interface WorkloadSpec {
  /** Timeline family. */
  readonly kind: 'fixed' | 'heavy' | 'scale' | 'budget' | 'push';
  /** Number of runs. */
  readonly runs: number;
  /** PRNG seed: the same seed gives the same timelines. */
  readonly seed: number;
  /** Fleet-wide rate limit of the simulated API. */
  readonly rateLimit?: RateLimit;
  /** Push: where and how the simulator sends its webhooks. */
  readonly webhooks?: SimulatedWebhooks;
}

/** Heavy tail: log-normal total duration, median 4 s, p95 40 s, cut at this bound. */
export const HEAVY_MAX_MS = 60_000;
const HEAVY_MEDIAN_MS = 4_000;
const HEAVY_SIGMA = Math.log(10) / 1.645;

function gaussian(random: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
}

/** The ids of run `i`; both workers derive them the same way. */
export function runIds(i: number): { threadId: string; runId: string } {
  return { threadId: `thread_b${i}`, runId: `run_b${i}` };
}

/** The id of background response `i` (push workload). */
export function responseId(i: number): string {
  return `resp_b${i}`;
}

/** Heavy tail: one log-normal total duration, median 4 s, p95 40 s, cut at `HEAVY_MAX_MS`. */
function heavyTotalMs(random: () => number): number {
  return Math.min(HEAVY_MAX_MS, Math.max(500, HEAVY_MEDIAN_MS * Math.exp(HEAVY_SIGMA * gaussian(random))));
}

/** Push: background responses created with stream: true, heavy-tail durations; each starts at its first request. */
export function buildResponses(spec: WorkloadSpec): SimulatedResponse[] {
  const random = seededRandom(spec.seed);
  return Array.from({ length: spec.runs }, (_, i) => {
    const totalMs = heavyTotalMs(random);
    const queuedMs = Math.min(totalMs / 4, 200 + random() * 800);
    return { responseId: responseId(i), stream: true, start: 'first_request', timeline: [{ status: 'queued', durationMs: queuedMs }, { status: 'in_progress', durationMs: totalMs - queuedMs }, { status: 'completed' }] };
  });
}

/** The simulated runs of a workload; each timeline starts at its first request. */
export function buildRuns(spec: WorkloadSpec): SimulatedRun[] {
  const random = seededRandom(spec.seed);
  const runs: SimulatedRun[] = [];
  for (let i = 0; i < spec.runs; i += 1) {
    let timeline: SimulatedRun['timeline'];
    if (spec.kind === 'fixed') {
      timeline = [{ status: 'queued', durationMs: 1_000 }, { status: 'in_progress', durationMs: 11_000 + random() * 2_000 }, { status: 'completed' }];
    } else if (spec.kind === 'heavy') {
      const totalMs = heavyTotalMs(random);
      const queuedMs = Math.min(totalMs / 4, 200 + random() * 800);
      timeline = [{ status: 'queued', durationMs: queuedMs }, { status: 'in_progress', durationMs: totalMs - queuedMs }, { status: 'completed' }];
    } else if (spec.kind === 'budget') {
      timeline = [{ status: 'queued', durationMs: 1_000 }, { status: 'in_progress', durationMs: 20_000 + random() * 20_000 }, { status: 'completed' }];
    } else {
      // scale: runs outlive the measurement
      timeline = [{ status: 'in_progress', durationMs: 3_600_000 }, { status: 'completed' }];
    }
    runs.push({ ...runIds(i), timeline, start: 'first_request', expiresInMs: 7_200_000 });
  }
  return runs;
}
