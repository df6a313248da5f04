import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';

/** The Redis the tests use: `RUNWATCH_TEST_REDIS_URL`, default the local one. `.ci/run` makes sure one answers. */
export const REDIS_URL = process.env.RUNWATCH_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

/** True when a Redis answers PING at `REDIS_URL` within a second. */
export async function redisAvailable(): Promise<boolean> {
  const redis = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false, connectTimeout: 1_000, retryStrategy: () => null });
  redis.on('error', () => undefined);
  try {
    await redis.connect();
    return (await redis.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    redis.disconnect();
  }
}

/**
 * Decides whether Redis tests run: they are skipped, with a note, on a machine without Redis;
 * under CI a missing Redis is an error, since .ci/run starts one.
 */
export async function requireRedis(): Promise<boolean> {
  const available = await redisAvailable();
  if (!available && process.env.CI) throw new Error(`no Redis answers at ${REDIS_URL}; .ci/run should have started one`);
  if (!available) process.stderr.write(`note: Redis tests skipped, nothing answers at ${REDIS_URL} (set RUNWATCH_TEST_REDIS_URL)\n`);
  return available;
}

/** A key prefix no other test uses. */
export function testPrefix(): string {
  return `rwtest:${randomBytes(6).toString('hex')}:`;
}

/** Deletes the keys under `prefix`, and only those. */
export async function removeKeys(prefix: string): Promise<void> {
  const redis = new Redis(REDIS_URL);
  try {
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
      if (keys.length > 0) await redis.del(...keys);
      cursor = next;
    } while (cursor !== '0');
  } finally {
    redis.disconnect();
  }
}
