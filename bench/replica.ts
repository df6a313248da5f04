// What the fleet benchmarks (bench/replicas.ts, bench/shards.ts) share: a Redis-mode replica
// started from the build, and the poll lateness read from the replicas' metrics.
import type { ChildProcess } from 'node:child_process';
import { startDaemon } from './daemon.ts';

/**
 * A Redis-mode replica of the build polling the simulator at `simUrl`, every in-progress run
 * about once a second, with `settings` (`path=value`) added; resolves once it listens.
 */
export async function startReplica(simUrl: string, redisUrl: string, apiKey: string, settings: readonly string[]): Promise<{ child: ChildProcess; port: number }> {
  const all = [
    'store.kind="redis"',
    'watch.provider="openai"',
    `watch.baseUrl=${JSON.stringify(simUrl)}`,
    'watch.maxRequestsPerSecond=100000',
    'watch.maxInFlight=64',
    'watch.policy={"jitter":0.2,"intervals":{"in_progress":{"baseMs":1000,"capMs":1000}}}',
    'sinks.stdout.enabled=false',
    ...settings,
  ];
  const { child, port } = await startDaemon({ settings: all, env: { OPENAI_API_KEY: apiKey, RUNWATCH_REDIS_URL: redisUrl } });
  return { child, port };
}

/** Lateness quantile from the summed histogram buckets of every replica (upper bucket bound). */
export function quantile(buckets: Map<number, number>, q: number): number {
  const bounds = [...buckets.keys()].sort((a, b) => a - b);
  const total = buckets.get(Infinity) ?? 0;
  for (const bound of bounds) if ((buckets.get(bound) ?? 0) >= q * total) return bound;
  return Infinity;
}

/** The replicas' `runwatch_poll_lateness_seconds` buckets, added up. */
export async function latenessBuckets(ports: number[]): Promise<Map<number, number>> {
  const sums = new Map<number, number>();
  for (const port of ports) {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    for (const match of text.matchAll(/^runwatch_poll_lateness_seconds_bucket\{le="([^"]+)"\} (\d+)$/gm)) {
      const bound = match[1] === '+Inf' ? Infinity : Number(match[1]);
      sums.set(bound, (sums.get(bound) ?? 0) + Number(match[2]));
    }
  }
  return sums;
}

/** Bucket counts gained between two readings. */
export function diff(after: Map<number, number>, before: Map<number, number>): Map<number, number> {
  return new Map([...after].map(([bound, count]) => [bound, count - (before.get(bound) ?? 0)]));
}
