import { Cluster, Redis } from 'ioredis';
import type { RedisOptions } from 'ioredis';
import { ConfigError } from '../errors.js';
import type { RedisClient } from '../store/redis.js';

const INVALID = 'invalid RUNWATCH_REDIS_URL: expected redis://[:password@]host[:port][/db] (or rediss://), or several comma-separated for a Redis Cluster';

/**
 * The URLs of `RUNWATCH_REDIS_URL`: one, or several comma-separated (a Redis Cluster's seed
 * nodes), each `redis://` or `rediss://` with a host and a numeric port. Throws `ConfigError`
 * naming the setting, never its value (it may carry a password).
 */
export function redisSeeds(raw: string): URL[] {
  return raw.split(',').map((part) => {
    let url: URL | undefined;
    try {
      url = new URL(part.trim());
    } catch {
      url = undefined;
    }
    if (!url || (url.protocol !== 'redis:' && url.protocol !== 'rediss:') || url.hostname === '' || (url.port !== '' && !/^\d+$/.test(url.port))) throw new ConfigError(INVALID);
    return url;
  });
}

/** True when the URL names a Redis Cluster: several seeds, or `store.cluster`. */
export function isClusterUrl(raw: string, cluster: boolean): boolean {
  return cluster || raw.includes(',');
}

/** Password, user and TLS of a seed, for every node of a cluster (ioredis takes them per node). */
function nodeOptions(url: URL): RedisOptions {
  return {
    ...(url.username ? { username: decodeURIComponent(url.username) } : {}),
    ...(url.password ? { password: decodeURIComponent(url.password) } : {}),
    ...(url.protocol === 'rediss:' ? { tls: {} } : {}),
  };
}

/**
 * A connection to the Redis at `raw`, or to the Redis Cluster its seeds belong to (`cluster`).
 * `options` apply to every node. A cluster has one database: a URL naming another throws `ConfigError`.
 */
export function connectRedis(raw: string, cluster: boolean, options: RedisOptions): RedisClient {
  if (!isClusterUrl(raw, cluster)) return new Redis(raw, options);
  const seeds = redisSeeds(raw);
  if (seeds.some((url) => url.pathname !== '' && url.pathname !== '/' && url.pathname !== '/0')) throw new ConfigError('a Redis Cluster has only database 0: drop the /db of RUNWATCH_REDIS_URL');
  const { enableOfflineQueue, ...perNode } = options;
  return new Cluster(
    seeds.map((url) => ({ host: url.hostname, port: Number(url.port || 6379) })),
    { redisOptions: { ...nodeOptions(seeds[0]!), ...perNode }, ...(enableOfflineQueue === undefined ? {} : { enableOfflineQueue }) },
  );
}
