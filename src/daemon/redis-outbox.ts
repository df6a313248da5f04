import type { WatchEvent } from '../events.js';
import type { Sink } from '../sinks/sink.js';
import { pairs } from '../store/redis.js';
import type { RedisClient } from '../store/redis.js';
import type { RedisKeys } from '../store/redis-keys.js';
import type { SinkStats } from '../store/store.js';
import type { DeliveryOutcome, DeliveryPolicy, Outbox } from './outbox.js';
import { settleFailure } from './outbox.js';
import { leases } from './redis-lease.js';

/** Options of a `PartitionedOutbox`. */
export interface PartitionedOutboxOptions extends DeliveryPolicy {
  /** The store's keys (partition streams, leases, dead letters). */
  readonly keys: RedisKeys;
  /** How many partition streams there are (`store.partitions`). */
  readonly partitions: number;
  /** This replica's name (the consumer name in every group). */
  readonly replicaId: string;
  /** A partition's lease lasts this long unless renewed; a dead replica's partitions move after it. */
  readonly leaseMs: number;
  /** Called when a lease is taken with deliveries its previous holder read but did not acknowledge (metrics). */
  readonly onTakeover?: (() => void) | undefined;
}


interface Held {
  /**
   * Deliver only before this: half a lease after the last confirmed renewal, so this replica
   * stops well before Redis lets the lease (and the pending entries) go to another one.
   */
  validUntilMs: number;
  /** Aborted when the lease is lost or unconfirmed: stops the delivery in flight. */
  readonly lost: AbortController;
  /** The previous holder's pending entries were claimed. */
  claimed: boolean;
  /** A failed entry holds the partition until then. */
  blockedUntilMs: number;
  attempts: Map<string, { count: number; firstMs: number }>;
}

/**
 * Delivers one sink's events from the shared outbox in Redis. Events are spread over
 * partition streams by run; each (sink, partition) has one consumer at a time (a lease in
 * Redis), so one run's events reach the sink in seq order whichever replica recorded them.
 * A new holder first claims and delivers what the last one left pending (at-least-once), and
 * a failing event holds back its partition until it is delivered or dead-lettered.
 */
export class PartitionedOutbox implements Outbox {
  readonly sink: Sink;
  readonly #redis: RedisClient;
  readonly #options: PartitionedOutboxOptions;
  readonly #held = new Map<number, Held>();
  readonly #stop = new AbortController();
  #loop: Promise<void> | null = null;
  #wake: (() => void) | null = null;
  #leaseTimer: NodeJS.Timeout | null = null;
  #renewing = false;

  constructor(redis: RedisClient, sink: Sink, options: PartitionedOutboxOptions) {
    this.#redis = redis;
    this.sink = sink;
    this.#options = options;
  }

  #leaseKey(partition: number): string {
    return this.#options.keys.lease(this.sink.name, partition);
  }

  /** Starts delivering. */
  start(): void {
    // leases are kept on their own clock: a slow delivery round must not let one lapse unnoticed
    this.#leaseTimer ??= setInterval(() => void this.#leases(), Math.max(50, Math.floor(this.#options.leaseMs / 5)));
    this.#loop ??= this.#run();
  }

  /** Events were committed here: look now rather than at the next tick. */
  notify(): void {
    this.#wake?.();
  }

  /**
   * Stops after the delivery in flight, and hands the leases back; what is pending stays for
   * the next holder (the flush timeout does not apply: leases move within `leaseMs`).
   */
  async stop(): Promise<void> {
    if (this.#leaseTimer) clearInterval(this.#leaseTimer);
    this.#stop.abort();
    this.#wake?.();
    await this.#loop;
    await leases.release(this.#redis, [...this.#held.keys()].map((p) => this.#leaseKey(p)), this.#options.replicaId).catch(() => undefined);
  }

  async #run(): Promise<void> {
    const groups = Array.from({ length: this.#options.partitions }, (_, p) =>
      this.#redis.xgroup('CREATE', this.#options.keys.partition(p), this.sink.name, '0', 'MKSTREAM').catch((error: Error) => {
        if (!error.message.includes('BUSYGROUP')) throw error;
      }),
    );
    while (!this.#stop.signal.aborted) {
      try {
        await Promise.all(groups);
        if (this.#held.size === 0) await this.#leases();
        let delivered = 0;
        for (const [partition, held] of this.#held) delivered += await this.#drain(partition, held);
        if (delivered === 0) await this.#sleep(200);
      } catch (error) {
        // Redis away or a command failed: keep the leases we have, try again shortly
        this.#options.logger.warn({ err: error }, 'outbox round failed');
        await this.#sleep(1_000);
      }
    }
  }

  async #leases(): Promise<void> {
    if (this.#renewing || this.#stop.signal.aborted) return;
    this.#renewing = true;
    const me = this.#options.replicaId;
    const { leaseMs } = this.#options;
    try {
      for (let p = 0; p < this.#options.partitions; p++) {
        const key = this.#leaseKey(p);
        // validity counts from before the command: the reply may come late
        const sentAtMs = Date.now();
        const held = this.#held.get(p);
        if (held) {
          const [renewed] = await leases.renew(this.#redis, [key], me, leaseMs);
          if (renewed) held.validUntilMs = sentAtMs + leaseMs / 2;
          else this.#drop(p, held);
        } else if (await leases.acquire(this.#redis, key, me, leaseMs)) {
          this.#held.set(p, { validUntilMs: sentAtMs + leaseMs / 2, lost: new AbortController(), claimed: false, blockedUntilMs: 0, attempts: new Map() });
        }
      }
    } catch (error) {
      this.#options.logger.debug({ err: error }, 'lease renewal failed');
    } finally {
      // Redis away or slow: what could not be confirmed in time is given up before it expires
      for (const [p, held] of this.#held) if (Date.now() >= held.validUntilMs) this.#drop(p, held);
      this.#renewing = false;
    }
  }

  #drop(partition: number, held: Held): void {
    held.lost.abort();
    if (this.#held.get(partition) === held) this.#held.delete(partition);
  }

  /** Delivers what is due in one partition; returns how many entries were settled. */
  async #drain(partition: number, held: Held): Promise<number> {
    if (Date.now() < held.blockedUntilMs || Date.now() >= held.validUntilMs) return 0;
    const stream = this.#options.keys.partition(partition);
    const group = this.sink.name;
    const me = this.#options.replicaId;
    if (!held.claimed) {
      // take over whatever the previous holder read but did not acknowledge
      let cursor = '0-0';
      let claimed = 0;
      do {
        const reply = (await this.#redis.xautoclaim(stream, group, me, 0, cursor, 'COUNT', 500, 'JUSTID')) as [string, unknown[], ...unknown[]];
        cursor = reply[0];
        claimed += reply[1].length;
      } while (cursor !== '0-0');
      held.claimed = true;
      // a replica id is new with every process, so whatever was pending was another holder's
      if (claimed > 0) {
        this.#options.logger.info({ sink: this.sink.name, partition, claimed }, 'took over a partition with deliveries its last holder did not acknowledge');
        this.#options.onTakeover?.();
      }
    }
    // own pending entries first (earlier failures, claimed ones), then new ones
    let entries = await this.#read(stream, group, me, '0');
    if (entries.length === 0) entries = await this.#read(stream, group, me, '>');
    let settled = 0;
    for (const [id, flat] of entries) {
      if (this.#stop.signal.aborted) break;
      if (Date.now() >= held.validUntilMs || held.lost.signal.aborted) {
        // not confirmed lately: another replica may take over; leave the rest pending for it
        this.#drop(partition, held);
        break;
      }
      const fields = pairs(flat);
      const outcome = await this.#deliver(id, fields, held);
      if (outcome === 'retry') break;
      await this.#redis.xack(stream, group, id);
      settled += 1;
    }
    return settled;
  }

  async #read(stream: string, group: string, me: string, from: string): Promise<Array<[string, string[]]>> {
    const reply = (await this.#redis.xreadgroup('GROUP', group, me, 'COUNT', 100, 'STREAMS', stream, from)) as Array<[string, Array<[string, string[]]>]> | null;
    return reply?.[0]?.[1] ?? [];
  }

  async #deliver(id: string, fields: Record<string, string>, held: Held): Promise<DeliveryOutcome> {
    const sink = this.sink.name;
    if (sink === 'callback' && !fields.callback_url) return 'delivered';
    try {
      const signal = AbortSignal.any([this.#stop.signal, held.lost.signal]);
      await this.sink.deliver(JSON.parse(fields.payload ?? 'null') as WatchEvent, { signal, url: fields.callback_url || undefined });
      held.attempts.delete(id);
      this.#options.onOutcome?.(sink, 'delivered');
      return 'delivered';
    } catch (error) {
      const now = Date.now();
      const attempt = held.attempts.get(id) ?? { count: 0, firstMs: now };
      attempt.count += 1;
      held.attempts.set(id, attempt);
      // stopped, or the lease went: the entry stays pending for whoever holds the partition next
      if (this.#stop.signal.aborted || held.lost.signal.aborted) return 'retry';
      const decision = settleFailure(this.#options, { sink, eventId: fields.event_id, error, priorFailures: attempt.count - 1, firstFailureMs: attempt.firstMs }, now);
      if (decision.dead) {
        await this.#redis.xadd(this.#options.keys.dead(sink), 'MAXLEN', '~', 100_000, '*', 'event_id', fields.event_id ?? '', 'error', decision.message, 'payload', fields.payload ?? '');
        held.attempts.delete(id);
        return 'dead';
      }
      held.blockedUntilMs = now + decision.delayMs;
      return 'retry';
    }
  }

  /** The fleet's figures: what every consumer group of this sink has not acknowledged, and its dead letters. */
  async stats(): Promise<Omit<SinkStats, 'sink'>> {
    let pending = 0;
    for (let p = 0; p < this.#options.partitions; p++) {
      const groups = (await this.#redis.xinfo('GROUPS', this.#options.keys.partition(p)).catch(() => [])) as unknown[][];
      for (const group of groups) {
        const info = pairs(group.map(String));
        if (info.name === this.sink.name) pending += Number(info.pending ?? 0) + Number(info.lag ?? 0);
      }
    }
    return { pending, dead: await this.#redis.xlen(this.#options.keys.dead(this.sink.name)) };
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#wake = null;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#wake = done;
    });
  }
}
