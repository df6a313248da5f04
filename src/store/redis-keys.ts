/**
 * The prefix of one shard's keys (several shards, or a Redis Cluster): `<prefix>{s<shard>}:`, a
 * hash tag, so every key of a shard (and every script over them) lives in one Cluster slot. One
 * shard on one Redis keeps the prefix itself (the layout of earlier versions).
 */
export function shardPrefix(prefix: string, shard: number): string {
  return `${prefix}{s${shard}}:`;
}

/**
 * The fleet budget's hash when the keys are sharded: under a hash tag of its own
 * (`<prefix>{fleet}:budget`), shared by every shard's engine: one bucket for the fleet.
 */
export function fleetBudgetKey(prefix: string): string {
  return `${prefix}{fleet}:budget`;
}

/**
 * Every Redis key runwatch uses, in one place (as BullMQ's `QueueKeys`): no other module builds
 * a key by concatenation. All live under one prefix (`store.prefix`, or a shard's, see
 * `shardPrefix`: every key of a shard, its watch partitions' included, in one Cluster slot);
 * only the budget may be given another key.
 */
export class RedisKeys {
  /** Hash: target key -> watch id, one watch per run or response (the name predates responses). */
  readonly targets: string;
  /** Sorted set of every watch by creation order. */
  readonly watches: string;
  /** Counter of the creation order. */
  readonly order: string;
  /** Set of the active watches' ids, as versions before watch partitions kept them: moved into `activeIn` at start. */
  readonly active: string;
  /** Hash: last status (`none` before the first poll) -> active watches in it, for the gauges. */
  readonly statusCounts: string;
  /** Counter of event positions. */
  readonly position: string;
  /** Stream of every event, entry id `<pos>-0` (SSE resumes by position). */
  readonly log: string;
  /** Hash of the fleet's request budget (token bucket, rate, pause). */
  readonly budget: string;
  /** Where versions that ran each watch as a BullMQ job kept their queue (`<prefix>bull:polls:*`), deleted at start. */
  readonly bullPrefix: string;
  /** Hash: replica id -> `<expires at ms>:<watches it polls>`, each replica's heartbeat (the fair share counts the live ones). */
  readonly replicas: string;
  /** Pub/sub channel of notices to the owner of a watch (added, changed elsewhere, woken). */
  readonly notices: string;
  /** Hash: watch partition -> the replica that took it and has not handed it back (a takeover finds another's name). */
  readonly owners: string;
  /** Prefix of the watch hashes, for the create script (which builds the key of a new id). */
  readonly watchPrefix: string;

  /**
   * @param prefix - what every key starts with, e.g. `runwatch:`
   * @param budgetKey - the fleet budget's hash (one for every shard) @default `<prefix>budget`
   */
  constructor(
    readonly prefix: string,
    budgetKey?: string,
  ) {
    this.targets = `${prefix}runs`;
    this.watches = `${prefix}watches`;
    this.order = `${prefix}order`;
    this.active = `${prefix}active`;
    this.statusCounts = `${prefix}status-counts`;
    this.position = `${prefix}pos`;
    this.log = `${prefix}log`;
    this.budget = budgetKey ?? `${prefix}budget`;
    this.bullPrefix = `${prefix}bull`;
    this.replicas = `${prefix}replicas`;
    this.notices = `${prefix}notices`;
    this.owners = `${prefix}owners`;
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

  /** Set of the ids of the active watches of one watch partition (`partitionOf(watch id)`). */
  activeIn(partition: number): string {
    return `${this.prefix}active:${partition}`;
  }

  /** Lease of a watch partition: which replica polls its watches. */
  owner(partition: number): string {
    return `${this.prefix}owner:${partition}`;
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
