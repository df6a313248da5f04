import type { Logger } from 'pino';
import { DeliveryError } from '../errors.js';
import type { WatchEvent } from '../events.js';
import type { Sink } from '../sinks/sink.js';
import type { PendingDelivery, Store } from '../store/store.js';

/** How one delivery attempt ended. */
export type DeliveryOutcome = 'delivered' | 'retry' | 'dead';

/** Options of an `OutboxWorker`. */
export interface OutboxWorkerOptions {
  /** Keep retrying an event this long after its first failure, then dead-letter it. */
  readonly retryForMs: number;
  /** Backoff between attempts: `baseMs * 2^(attempts-1)`, capped, half jittered. */
  readonly backoff: { readonly baseMs: number; readonly capMs: number };
  /** Runs delivered in parallel (events of one run are always delivered one after another). @default 8 */
  readonly concurrency?: number;
  /** Rows read per round. @default 500 */
  readonly batchSize?: number;
  readonly logger: Logger;
  /** Called after every attempt (metrics). */
  readonly onOutcome?: (sink: string, outcome: DeliveryOutcome) => void;
}

/**
 * Delivers a sink's pending outbox rows: in log order, one run's events strictly in seq order
 * (a failed event holds back the later events of its run only), retries persisted in the
 * store so a restart keeps the schedule, and dead letters after `retryForMs`.
 */
export class OutboxWorker {
  readonly sink: Sink;
  readonly #store: Store;
  readonly #options: OutboxWorkerOptions;
  readonly #stop = new AbortController();
  #wake: (() => void) | null = null;
  #pendingWake = false;
  #loop: Promise<void> | null = null;
  #flushUntilMs = Infinity;

  constructor(store: Store, sink: Sink, options: OutboxWorkerOptions) {
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
    const rows = this.#store.pendingDeliveries(this.sink.name, this.#options.batchSize ?? 500);
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
      this.#store.markDelivered(sink, row.pos, Date.now());
      this.#options.onOutcome?.(sink, 'delivered');
      return 'delivered';
    } catch (error) {
      if (this.#stop.signal.aborted) return 'aborted';
      const now = Date.now();
      const message = error instanceof Error ? error.message : String(error);
      const permanent = error instanceof DeliveryError && error.permanent;
      const firstFailureMs = row.first_attempt_at ?? now;
      if (permanent || now - firstFailureMs >= this.#options.retryForMs) {
        this.#store.markDead(sink, row.pos, message, now);
        this.#options.logger.error({ sink, eventId: row.event_id, attempts: row.attempts + 1, permanent }, `dead-lettered an event: ${message}`);
        this.#options.onOutcome?.(sink, 'dead');
        return 'dead';
      }
      const { baseMs, capMs } = this.#options.backoff;
      const backoffMs = Math.min(capMs, baseMs * 2 ** Math.min(row.attempts, 30));
      const delayMs = Math.max(backoffMs / 2 + (Math.random() * backoffMs) / 2, error instanceof DeliveryError ? (error.retryAfterMs ?? 0) : 0);
      this.#store.markRetry(sink, row.pos, now + delayMs, message, now);
      this.#options.logger[row.attempts === 0 ? 'warn' : 'debug']({ sink, eventId: row.event_id, attempts: row.attempts + 1, retryInMs: Math.round(delayMs) }, `delivery failed: ${message}`);
      this.#options.onOutcome?.(sink, 'retry');
      return 'retry';
    }
  }
}
