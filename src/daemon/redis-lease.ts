import type { RedisClient } from '../store/redis.js';

/** Renews a lease only while this replica holds it: 1 when renewed, 0 when another holds it (or none). */
const RENEW = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end`;
/** Deletes a lease only while this replica holds it. */
const RELEASE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end`;

/**
 * Leases in Redis, on Redis's clock (`SET NX PX`): what the outbox holds its (sink, partition)
 * pairs with, and the engine its watch partitions. A holder that cannot confirm a renewal for
 * half a lease gives the lease up on its own, well before Redis lets another replica take it.
 */
export const leases = {
  /** Takes a free lease; true when this replica holds it now. */
  async acquire(redis: RedisClient, key: string, holder: string, leaseMs: number): Promise<boolean> {
    return (await redis.set(key, holder, 'PX', leaseMs, 'NX')) === 'OK';
  },
  /** Renews held leases in one round trip; true at each one still held. Throws when Redis did not answer (nothing is known then). */
  async renew(redis: RedisClient, keys: readonly string[], holder: string, leaseMs: number): Promise<boolean[]> {
    if (keys.length === 0) return [];
    const pipeline = redis.pipeline();
    for (const key of keys) pipeline.eval(RENEW, 1, key, holder, leaseMs);
    const replies = (await pipeline.exec()) ?? [];
    const failed = replies.find(([error]) => error !== null)?.[0];
    if (failed) throw failed;
    return keys.map((_, i) => replies[i]?.[1] === 1);
  },
  /** Hands leases back (only those this replica still holds), in one round trip. */
  async release(redis: RedisClient, keys: readonly string[], holder: string): Promise<void> {
    if (keys.length === 0) return;
    const pipeline = redis.pipeline();
    for (const key of keys) pipeline.eval(RELEASE, 1, key, holder);
    await pipeline.exec();
  },
} as const;
