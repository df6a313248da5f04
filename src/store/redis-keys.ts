/**
 * Every Redis key runwatch uses, in one place (as BullMQ's `QueueKeys`): no other module builds
 * a key by concatenation. All live under one prefix (`store.prefix`), BullMQ's under `<prefix>bull`.
 */
export class RedisKeys {
  /** Hash: target key -> watch id, one watch per run or response (the name predates responses). */
  readonly targets: string;
  /** Sorted set of every watch by creation order. */
  readonly watches: string;
  /** Counter of the creation order. */
  readonly order: string;
  /** Set of the active watches' ids. */
  readonly active: string;
  /** Hash: last status (`none` before the first poll) -> active watches in it, for the gauges. */
  readonly statusCounts: string;
  /** Counter of event positions. */
  readonly position: string;
  /** Stream of every event, entry id `<pos>-0` (SSE resumes by position). */
  readonly log: string;
  /** Hash of the fleet's request budget (token bucket, rate, pause). */
  readonly budget: string;
  /** BullMQ's prefix: its own keys (the `polls` queue) live below it. */
  readonly bullPrefix: string;
  /** Prefix of the watch hashes, for the create script (which builds the key of a new id). */
  readonly watchPrefix: string;

  /** @param prefix - what every key starts with, e.g. `runwatch:` */
  constructor(readonly prefix: string) {
    this.targets = `${prefix}runs`;
    this.watches = `${prefix}watches`;
    this.order = `${prefix}order`;
    this.active = `${prefix}active`;
    this.statusCounts = `${prefix}status-counts`;
    this.position = `${prefix}pos`;
    this.log = `${prefix}log`;
    this.budget = `${prefix}budget`;
    this.bullPrefix = `${prefix}bull`;
    this.watchPrefix = `${prefix}watch:`;
  }

  /** Hash of one watch (its target, fields and progress). */
  watch(id: string): string {
    return `${this.watchPrefix}${id}`;
  }

  /** Outbox stream of one partition, read by each sink's consumer group. */
  partition(partition: number): string {
    return `${this.prefix}part:${partition}`;
  }

  /** Lease of a (sink, partition): which replica delivers it. */
  lease(sink: string, partition: number): string {
    return `${this.prefix}lease:${sink}:${partition}`;
  }

  /** Marker of an inbound webhook id already taken (dedupe across replicas), with a TTL. */
  webhook(webhookId: string): string {
    return `${this.prefix}hook:${webhookId}`;
  }

  /** Stream of a sink's dead letters. */
  dead(sink: string): string {
    return `${this.prefix}dead:${sink}`;
  }
}
