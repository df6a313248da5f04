/**
 * Every Redis key runwatch uses, in one place (as BullMQ's `QueueKeys`): no other module builds
 * a key by concatenation. All live under one prefix (`store.prefix`), BullMQ's under `<prefix>bull`.
 */
export class RedisKeys {
  /** The prefix every key starts with, e.g. `runwatch:`. */
  readonly prefix: string;

  constructor(prefix: string) {
    this.prefix = prefix;
  }

  /** Hash of one watch (its target, fields and progress). */
  watch(id: string): string {
    return `${this.prefix}watch:${id}`;
  }

  /** Prefix of the watch hashes, for the create script (which builds the key of a new id). */
  get watchPrefix(): string {
    return this.watch('');
  }

  /** Hash: target key -> watch id, one watch per run or response (the name predates responses). */
  get targets(): string {
    return `${this.prefix}runs`;
  }

  /** Sorted set of every watch by creation order. */
  get watches(): string {
    return `${this.prefix}watches`;
  }

  /** Counter of the creation order. */
  get order(): string {
    return `${this.prefix}order`;
  }

  /** Set of the active watches' ids. */
  get active(): string {
    return `${this.prefix}active`;
  }

  /** Hash: last status (`none` before the first poll) -> active watches in it, for the gauges. */
  get statusCounts(): string {
    return `${this.prefix}status-counts`;
  }

  /** Counter of event positions. */
  get position(): string {
    return `${this.prefix}pos`;
  }

  /** Stream of every event, entry id `<pos>-0` (SSE resumes by position). */
  get log(): string {
    return `${this.prefix}log`;
  }

  /** Outbox stream of one partition, read by each sink's consumer group. */
  partition(partition: number): string {
    return `${this.prefix}part:${partition}`;
  }

  /** Lease of a (sink, partition): which replica delivers it. */
  lease(sink: string, partition: number): string {
    return `${this.prefix}lease:${sink}:${partition}`;
  }

  /** Stream of a sink's dead letters. */
  dead(sink: string): string {
    return `${this.prefix}dead:${sink}`;
  }

  /** Hash of the fleet's request budget (token bucket, rate, pause). */
  get budget(): string {
    return `${this.prefix}budget`;
  }

  /** BullMQ's prefix: its own keys (the `polls` queue) live below it. */
  get bullPrefix(): string {
    return `${this.prefix}bull`;
  }
}
