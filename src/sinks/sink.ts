import { pino } from 'pino';
import type { Logger } from 'pino';
import type { WatchEvent } from '../events.js';

/** What the daemon passes along with an event. */
export interface DeliveryContext {
  /** Aborted when the daemon shuts down; stop waiting and throw. */
  readonly signal?: AbortSignal;
  /** For the `callback` sink: the watch's `callback_url`. */
  readonly url?: string;
}

/**
 * Where events go. Implement `deliver` (and `close` if you hold resources); runwatch calls
 * `deliver` for one event at a time per sink, in order, and never lets a failure in one
 * sink stop polling or other sinks.
 *
 * @example
 * const sink: Sink = { name: 'console', deliver: (event) => console.log(event.type) };
 */
export interface Sink {
  /** Names the sink in logs and metrics. */
  readonly name: string;
  /**
   * Delivers one event; a rejection counts as a failed delivery and is retried (throw a
   * `DeliveryError` with `permanent: true` to dead-letter it at once).
   */
  deliver(event: WatchEvent, context?: DeliveryContext): Promise<void> | void;
  /** Flushes and releases what the sink holds. */
  close?(): Promise<void> | void;
}

/** Reported when a sink fails to take an event. */
export interface SinkFailure {
  readonly sink: string;
  readonly event: WatchEvent;
  readonly error: unknown;
}

/** Options of a `SinkDispatcher`. */
export interface SinkDispatcherOptions {
  /**
   * Operational log for failures.
   * @default a silent logger
   */
  readonly logger?: Logger;
  /** Called when a sink fails to take an event. */
  readonly onFailure?: (failure: SinkFailure) => void;
}

/**
 * Fans events out to sinks: each sink has its own queue, so a slow sink delays only itself,
 * and each receives events in the order they were dispatched.
 */
export class SinkDispatcher {
  readonly #sinks: readonly Sink[];
  readonly #tails = new Map<Sink, Promise<void>>();
  readonly #logger: Logger;
  readonly #onFailure: ((failure: SinkFailure) => void) | undefined;
  #closing: Promise<void> | null = null;

  constructor(sinks: readonly Sink[], options: SinkDispatcherOptions = {}) {
    this.#sinks = sinks;
    this.#logger = options.logger ?? pino({ level: 'silent' });
    this.#onFailure = options.onFailure;
  }

  /** Queues an event for every sink; returns at once. */
  dispatch(event: WatchEvent): void {
    for (const sink of this.#sinks) {
      const tail = this.#tails.get(sink) ?? Promise.resolve();
      this.#tails.set(sink, tail.then(() => this.#deliver(sink, event)));
    }
  }

  async #deliver(sink: Sink, event: WatchEvent): Promise<void> {
    try {
      await sink.deliver(event);
    } catch (error) {
      this.#logger.error({ err: error, sink: sink.name, eventId: event.id }, 'sink failed to deliver an event');
      this.#onFailure?.({ sink: sink.name, event, error });
    }
  }

  /** Resolves when every event dispatched so far was handed to every sink. */
  async flush(): Promise<void> {
    await Promise.all(this.#tails.values());
  }

  /** Flushes, then closes every sink (each even if another fails). Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.flush();
      const results = await Promise.allSettled(this.#sinks.map(async (sink) => sink.close?.()));
      results.forEach((result, i) => {
        if (result.status === 'rejected') this.#logger.error({ err: result.reason, sink: this.#sinks[i]?.name }, 'sink failed to close');
      });
    })();
    return this.#closing;
  }
}
