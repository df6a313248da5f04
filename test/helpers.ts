import FakeTimers from '@sinonjs/fake-timers';
import type { Clock } from '@sinonjs/fake-timers';
import type { PollClient, PollFailure, PollOutcome, PollSuccess, RequestContext } from '../src/client.js';
import type { ErrorCode } from '../src/errors.js';
import type { ServerHints } from '../src/schedule.js';
import type { Snapshot } from '../src/resource.js';

/** A fixed start time, so event timestamps are predictable. */
export const T0 = Date.UTC(2026, 0, 1);

/** Installs fake timers for what the engine uses (timers and Date) starting at `T0`. */
export function installClock(): Clock {
  return FakeTimers.install({ now: T0, toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] });
}

/** A successful poll answer. */
export function ok(status: string, extra: Record<string, unknown> = {}, hints: ServerHints = {}): PollSuccess<Snapshot> {
  return { ok: true, snapshot: { id: 'run_1', object: 'thread.run', status, ...extra }, hints, httpStatus: 200 };
}

/** A failed poll answer. */
export function failure(httpStatus: number | undefined, code: ErrorCode, hints: ServerHints = {}): PollFailure {
  return { ok: false, retryable: code === 'transient', code, message: httpStatus ? `HTTP ${httpStatus}` : 'network error ECONNRESET', httpStatus, hints };
}

/** One scripted answer: an outcome, or `hang` (answers only when aborted). */
export type ScriptStep = PollOutcome<Snapshot> | 'hang';

/** A request the scripted client saw. */
export interface ScriptedCall {
  readonly atMs: number;
  readonly context: RequestContext;
}

/** A client that answers from a script, per run (the last step repeats), and records when it was called. */
export function scriptedClient(script: readonly ScriptStep[]): PollClient & { calls: ScriptedCall[]; closed: number } {
  const calls: ScriptedCall[] = [];
  const perRun = new Map<string, number>();
  const client = {
    calls,
    closed: 0,
    retrieve<TSnapshot extends Snapshot>(_kind: unknown, ref: object, context: RequestContext): Promise<PollOutcome<TSnapshot>> {
      calls.push({ atMs: Date.now(), context });
      const key = JSON.stringify(ref);
      const n = perRun.get(key) ?? 0;
      perRun.set(key, n + 1);
      const step = script[Math.min(n, script.length - 1)]!;
      if (step === 'hang') {
        return new Promise((resolve) => {
          context.signal?.addEventListener('abort', () => resolve({ ok: false, retryable: false, code: 'aborted', message: 'request aborted', hints: {}, aborted: true }), { once: true });
        });
      }
      return Promise.resolve(step as PollOutcome<TSnapshot>);
    },
    close(): void {
      client.closed += 1;
    },
  };
  return client;
}

/** Times of calls relative to `T0`. */
export function offsets(calls: readonly ScriptedCall[]): number[] {
  return calls.map((c) => c.atMs - T0);
}
