import type { Logger } from 'pino';
import { backoffDelayMs } from '../backoff.js';
import { DeliveryError } from '../errors.js';
import type { WatchEvent } from '../events.js';
import type { Sink } from '../sinks/sink.js';
import type { DeliveryLog, PendingDelivery, SinkStats } from '../store/store.js';

/** How one delivery attempt ended. */
export type DeliveryOutcome = 'delivered' | 'retry' | 'dead';

/** How both outboxes treat failed deliveries. */
export interface DeliveryPolicy {
  /** Keep retrying an event this long after its first failure, then dead-letter it. */
  readonly retryForMs: number;
  /** Backoff between attempts: `baseMs * 2^(attempts-1)`, capped, half jittered, never sooner than the receiver's `retry-after`. */
  readonly backoff: { readonly baseMs: number; readonly capMs: number };
  /** Bound to the sink (`logger.child({ sink })`, as the daemon gives it): lines name the sink from there, once. */
  readonly logger: Logger;
  /**
   * Draws the backoff's jitter, in [0, 1).
   * @default Math.random
   */
  readonly random?: (() => number) | undefined;
  /** Called after every attempt (metrics). */
  readonly onOutcome?: (sink: string, outcome: DeliveryOutcome) => void;
}

/** What a failed delivery becomes: dead-lettered now, or retried after `delayMs`. */
export type FailureDecision = { readonly dead: true; readonly message: string } | { readonly dead: false; readonly delayMs: number; readonly message: string };

/**
 * Decides, logs and reports what a failed delivery becomes: dead when the sink said it is
 * permanent or the event has failed for `retryForMs`, else a retry after the backoff (never
 * sooner than the receiver's `retry-after`). `priorFailures` counts the failures before this one.
 */
export function settleFailure(
  policy: DeliveryPolicy,
  failure: { readonly sink: string; readonly eventId: string | undefined; readonly error: unknown; readonly priorFailures: number; readonly firstFailureMs: number },
  nowMs: number,
): FailureDecision {
  const { sink, eventId, error, priorFailures } = failure;
  const message = error instanceof Error ? error.message : String(error);
  const permanent = error instanceof DeliveryError && error.permanent;
  const attempts = priorFailures + 1;
  if (permanent || nowMs - failure.firstFailureMs >= policy.retryForMs) {
    policy.logger.error({ eventId, attempts, permanent }, `dead-lettered an event: ${message}`);
    policy.onOutcome?.(sink, 'dead');
    return { dead: true, message };
  }
  // half jitter: spread the retries of one outage, but keep each wait at least half the nominal
  const backoff = { ...policy.backoff, growth: 2, jitter: 0.5 };
  const delayMs = backoffDelayMs(backoff, { attempt: attempts, floorMs: error instanceof DeliveryError ? error.retryAfterMs : undefined }, policy.random);
  policy.logger[priorFailures === 0 ? 'warn' : 'debug']({ eventId, attempts, retryInMs: delayMs }, `delivery failed: ${message}`);
  policy.onOutcome?.(sink, 'retry');
  return { dead: false, delayMs, message };
}

/**
 * Delivers one sink's events from a store's outbox, at least once and in order per run or
 * response: `OutboxWorker` for the memory and SQLite stores, `PartitionedOutbox` for Redis.
 */
export interface Outbox {
  readonly sink: Sink;
  /** Starts delivering. */
  start(): void;
  /** Events were committed in this process: look now rather than at the next round. */
  notify(): void;
  /** Delivers what it can for up to `flushTimeoutMs`, then stops (what is left stays for the next start). Idempotent. */
  stop(flushTimeoutMs: number): Promise<void>;
  /** Deliveries not yet made and given up on, for the gauges. */
  stats(): Promise<Omit<SinkStats, 'sink'>>;
}

/** Options of an `OutboxWorker`. */
export interface OutboxWorkerOptions extends DeliveryPolicy {
  /** Runs delivered in parallel (events of one run are always delivered one after another). @default 8 */
  readonly concurrency?: number;
  /** Rows read per round. @default 500 */
  readonly batchSize?: number;
}

/**
 * Delivers a sink's pending outbox rows: in log order, one run's events strictly in seq order
 * (a failed event holds back the later events of its run only), retries persisted in the
 * store so a restart keeps the schedule, and dead letters after `retryForMs`.
 */
export class OutboxWorker implements Outbox {
  readonly sink: Sink;
  readonly #store: DeliveryLog;
  readonly #options: OutboxWorkerOptions;
  readonly #stop = new AbortController();
  #wake: (() => void) | null = null;
  #pendingWake = false;
  #loop: Promise<void> | null = null;
  #flushUntilMs = Infinity;

  constructor(store: DeliveryLog, sink: Sink, options: OutboxWorkerOptions) {
    this.#store = store;
    this.sink = sink;
    this.#options = options;
  }

  /** Starts the delivery loop. */
  start(): void {
    this.#loop ??= this.#run();
  }

  /** New rows were written: deliver them now. */
  notify(): void {
    this.#pendingWake = true;
    this.#wake?.();
  }

  /**
   * Delivers what it can for up to `flushTimeoutMs`, then aborts deliveries in flight (they
   * stay pending and are redelivered after a restart) and stops. Idempotent.
   */
  stop(flushTimeoutMs: number): Promise<void> {
    this.#stopping ??= (async () => {
      this.#flushUntilMs = Date.now() + flushTimeoutMs;
      const timer = setTimeout(() => this.#stop.abort(), flushTimeoutMs);
      this.notify();
      try {
        await this.#loop;
      } finally {
        clearTimeout(timer);
        this.#stop.abort();
      }
    })();
    return this.#stopping;
  }

  #stopping: Promise<void> | null = null;

  async stats(): Promise<Omit<SinkStats, 'sink'>> {
    const row = (await this.#store.sinkStats()).find((stats) => stats.sink === this.sink.name);
    return { pending: row?.pending ?? 0, dead: row?.dead ?? 0 };
  }

  async #run(): Promise<void> {
    while (!this.#stop.signal.aborted) {
      const { progressed, nextDueMs } = await this.#round();
      // while stopping, flush only what is deliverable right now
      if (this.#stopping && (!progressed || Date.now() >= this.#flushUntilMs)) return;
      if (progressed) continue;
      const waitMs = Math.max(10, Math.min(nextDueMs - Date.now(), 1_000));
      await this.#sleep(this.#stopping ? Math.min(waitMs, 50) : waitMs);
    }
  }

  #sleep(ms: number): Promise<void> {
    if (this.#pendingWake) {
      this.#pendingWake = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#stop.signal.removeEventListener('abort', done);
        this.#wake = null;
        this.#pendingWake = false;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#stop.signal.addEventListener('abort', done, { once: true });
      this.#wake = done;
    });
  }

  async #round(): Promise<{ progressed: boolean; nextDueMs: number }> {
    this.#pendingWake = false;
    const rows = await this.#store.pendingDeliveries(this.sink.name, this.#options.batchSize ?? 500);
    const byWatch = new Map<string, PendingDelivery[]>();
    for (const row of rows) {
      const list = byWatch.get(row.watch_id);
      if (list) list.push(row);
      else byWatch.set(row.watch_id, [row]);
    }
    const groups = [...byWatch.values()];
    let progressed = false;
    let nextDueMs = Infinity;
    const worker = async (): Promise<void> => {
      for (let group = groups.shift(); group; group = groups.shift()) {
        for (const row of group) {
          if (this.#stop.signal.aborted) return;
          const now = Date.now();
          if (row.next_attempt_at > now) {
            nextDueMs = Math.min(nextDueMs, row.next_attempt_at);
            break;
          }
          const outcome = await this.#attempt(row);
          if (outcome === 'aborted') return;
          if (outcome === 'retry') {
            nextDueMs = Math.min(nextDueMs, Date.now() + this.#options.backoff.baseMs);
            break;
          }
          progressed = true;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.#options.concurrency ?? 8, groups.length) }, worker));
    return { progressed, nextDueMs };
  }

  async #attempt(row: PendingDelivery): Promise<DeliveryOutcome | 'aborted'> {
    const sink = this.sink.name;
    try {
      await this.sink.deliver(JSON.parse(row.payload) as WatchEvent, { signal: this.#stop.signal, url: row.callback_url ?? undefined });
      await this.#store.markDelivered(sink, row.pos, Date.now());
      this.#options.onOutcome?.(sink, 'delivered');
      return 'delivered';
    } catch (error) {
      if (this.#stop.signal.aborted) return 'aborted';
      const now = Date.now();
      const decision = settleFailure(this.#options, { sink, eventId: row.event_id, error, priorFailures: row.attempts, firstFailureMs: row.first_attempt_at ?? now }, now);
      if (decision.dead) {
        await this.#store.markDead(sink, row.pos, decision.message, now);
        return 'dead';
      }
      await this.#store.markRetry(sink, row.pos, now + decision.delayMs, decision.message, now);
      return 'retry';
    }
  }
}
