// The benchmark's workloads: seeded timelines for the simulator, shared by the simulator
// worker (which serves them) and the contender worker (which derives the same ids).
import { seededRandom } from '../dist/simulator.js';
import type { RateLimit, SimulatedResponse, SimulatedRun, SimulatedWebhooks } from '../dist/simulator.js';

/** What a simulator worker serves. */
export interface WorkloadSpec {
  /** Timeline family. */
  readonly kind: 'fixed' | 'heavy' | 'scale' | 'budget' | 'push' | 'soak';
  /** Number of runs. */
  readonly runs: number;
  /** PRNG seed: the same seed gives the same timelines. */
  readonly seed: number;
  /** Fleet-wide rate limit of the simulated API. */
  readonly rateLimit?: RateLimit;
  /** Push: where and how the simulator sends its webhooks. */
  readonly webhooks?: SimulatedWebhooks;
  /** Soak: each run lasts between these (uniform), whatever its end. */
  readonly durationMs?: { readonly min: number; readonly max: number };
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

/** Soak: how a run ends and the share of runs that end so (the rest complete); `tools` waits for tool outputs first, `faults` sees 500s and a reset on its way. */
const SOAK_ENDS: readonly (readonly [string, number])[] = [['tools', 0.12], ['failed', 0.1], ['cancelled', 0.05], ['expired', 0.04], ['incomplete', 0.04], ['faults', 0.05]];

/** Soak: one run's timeline of about `totalMs`, every end and event kind in `SOAK_ENDS` shares. */
function soakTimeline(random: () => number, totalMs: number): Pick<SimulatedRun, 'timeline' | 'faults'> {
  const queuedMs = 500 + random() * 4_000;
  const workMs = Math.max(0, totalMs - queuedMs);
  let draw = random();
  const end = SOAK_ENDS.find(([, share]) => (draw -= share) < 0)?.[0] ?? 'completed';
  const queued = { status: 'queued', durationMs: queuedMs };
  if (end === 'tools') {
    // the daemon's tool handler answers at once: the run waits in requires_action only until then
    return { timeline: [queued, { status: 'in_progress', durationMs: workMs / 2 }, { status: 'requires_action' }, { status: 'in_progress', durationMs: workMs / 2 }, { status: 'completed' }] };
  }
  const timeline = [queued, { status: 'in_progress', durationMs: workMs }, { status: end === 'faults' ? 'completed' : end }];
  return end === 'faults' ? { timeline, faults: [{ type: 'status', status: 500, from: 2, to: 3 }, { type: 'reset', from: 5 }] } : { timeline };
}

/** The simulated runs of a workload; each timeline starts at its first request. */
export function buildRuns(spec: WorkloadSpec): SimulatedRun[] {
  const random = seededRandom(spec.seed);
  if (spec.kind === 'soak') {
    const { min, max } = spec.durationMs ?? { min: 60_000, max: 600_000 };
    return Array.from({ length: spec.runs }, (_, i) => ({ ...runIds(i), ...soakTimeline(random, min + random() * (max - min)), start: 'first_request' as const, expiresInMs: 7_200_000 }));
  }
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
