import { Redis } from 'ioredis';
import { DeliveryError } from '../errors.js';
import type { WatchEvent } from '../events.js';
import { idFieldsOf } from '../events.js';
import type { Sink } from './sink.js';

/** Options of a `RedisStreamSink`. */
export interface RedisStreamSinkOptions {
  /** Redis URL, e.g. `redis://:password@redis:6379/0` (a secret: from `RUNWATCH_REDIS_URL`). */
  readonly url: string;
  /** Stream key. @default 'runwatch:events' */
  readonly stream?: string;
  /** Approximate cap (`XADD MAXLEN ~`): older entries are trimmed. @default 1000000 */
  readonly maxLen?: number;
}

/**
 * Appends each event to a Redis Stream (capped), for consumers in any language reading with
 * consumer groups. Entry fields: `id`, `type`, `watch_id`, `thread_id`, `run_id`, `seq` and
 * `event` (the JSON). Delivery is at-least-once: a redelivered event is a second entry with
 * the same `id`, so consumers de-duplicate on it.
 */
export class RedisStreamSink implements Sink {
  readonly name = 'redis-stream';
  readonly #redis: Redis;
  readonly #stream: string;
  readonly #maxLen: number;

  constructor(options: RedisStreamSinkOptions) {
    this.#stream = options.stream ?? 'runwatch:events';
    this.#maxLen = options.maxLen ?? 1_000_000;
    // fail fast while Redis is away: the outbox keeps the event and retries with backoff
    this.#redis = new Redis(options.url, { lazyConnect: true, maxRetriesPerRequest: 1, enableOfflineQueue: false, connectTimeout: 5_000 });
    this.#redis.on('error', () => undefined);
  }

  /** Appends one entry. */
  async deliver(event: WatchEvent): Promise<void> {
    try {
      if (this.#redis.status === 'wait' || this.#redis.status === 'end') await this.#redis.connect();
      await this.#redis.xadd(
        this.#stream,
        'MAXLEN',
        '~',
        this.#maxLen,
        '*',
        'id',
        event.id,
        'type',
        event.type,
        'watch_id',
        event.watch_id,
        ...idFieldsOf(event).flat(),
        'seq',
        event.seq,
        'event',
        JSON.stringify(event),
      );
    } catch (error) {
      // the URL may carry a password: report only what failed
      throw new DeliveryError(`XADD to ${this.#stream} failed: ${(error as NodeJS.ErrnoException).code ?? (error as Error).name}`);
    }
  }

  /** Closes the connection. */
  async close(): Promise<void> {
    if (this.#redis.status === 'ready') await this.#redis.quit().catch(() => undefined);
    else this.#redis.disconnect();
  }
}
