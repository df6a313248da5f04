import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll } from 'vitest';
import { loadConfig } from '../src/daemon/config.js';
import type { DaemonSecrets } from '../src/daemon/daemon.js';
import { Daemon } from '../src/daemon/daemon.js';
import type { RunningSimulator, SimulatorOptions } from '../src/simulator.js';
import { startSimulator } from '../src/simulator.js';
import { REDIS_URL, removeKeys, testPrefix } from './redis.js';

/** Every status polled each 100 ms, without jitter: tests wait on events, not on the policy. */
export const FAST_POLICY = JSON.stringify({ jitter: 0, intervals: Object.fromEntries(['queued', 'in_progress', 'requires_action', 'cancelling', 'unknown'].map((s) => [s, { baseMs: 100, capMs: 100 }])) });

/** The store kinds a daemon test runs on; Redis ones are skipped (with a note) where no Redis answers. */
export function storeKinds(redisAvailable: boolean, kinds: ReadonlyArray<'memory' | 'sqlite' | 'redis'> = ['memory', 'sqlite', 'redis']) {
  return kinds.map((kind) => ({ kind, skip: kind === 'redis' && !redisAvailable }));
}

/** A daemon a describe block uses: filled in before its tests. */
export interface TestDaemon {
  sim: RunningSimulator;
  daemon: Daemon;
  /** `http://127.0.0.1:<port>` of the control API. */
  base: string;
  /** Its data dir: files a setting points at (modules) may be written there. */
  readonly dir: string;
  /** Stops the daemon (gracefully, as on SIGTERM). */
  stop(): Promise<void>;
  /** Starts it again on the same data dir or key prefix. */
  start(): Promise<void>;
  /** Both. */
  restart(): Promise<void>;
}

/**
 * A daemon in this process on one store kind, with a simulator, a data dir and a key prefix of
 * its own: started before the describe block's tests, stopped after (its Redis keys removed).
 * `settings` adds `path=value` overrides once the simulator is up.
 */
export function useDaemon(
  kind: 'memory' | 'sqlite' | 'redis',
  options: {
    readonly skip: boolean;
    readonly key: string;
    readonly secrets?: Partial<DaemonSecrets>;
    readonly settings?: (t: TestDaemon) => Array<[string, string]>;
    /** The simulator's options beside its key; `errorStyle: 'azure'` makes the daemon's provider azure. */
    readonly sim?: Omit<SimulatorOptions, 'apiKey'>;
  },
): TestDaemon {
  const prefix = testPrefix();
  let start: () => Promise<void> = () => Promise.resolve();
  const t = {
    dir: mkdtempSync(path.join(tmpdir(), `runwatch-${kind}-`)),
    stop: () => t.daemon.shutdown(),
    start: () => start(),
    restart: async () => {
      await t.stop();
      await start();
    },
  } as TestDaemon;
  beforeAll(async () => {
    if (options.skip) return;
    t.sim = await startSimulator({ ...options.sim, apiKey: options.key });
    const config = loadConfig({
      overrides: [
        ['daemon.port', '0'],
        ['daemon.dataDir', JSON.stringify(t.dir)],
        ['store.kind', JSON.stringify(kind)],
        ['store.prefix', JSON.stringify(prefix)],
        ['sinks.stdout.enabled', 'false'],
        ['watch.provider', options.sim?.errorStyle === 'azure' ? '"azure"' : '"openai"'],
        ['watch.baseUrl', JSON.stringify(t.sim.baseUrl)],
        ['watch.policy', FAST_POLICY],
        ...(options.settings?.(t) ?? []),
      ],
    });
    const secrets: DaemonSecrets = { credentials: { apiKey: options.key }, redisUrl: REDIS_URL, ...options.secrets };
    start = async () => {
      t.daemon = await Daemon.start(config, secrets, pino({ level: 'silent' }));
      t.base = `http://127.0.0.1:${t.daemon.address.port}`;
    };
    await start();
  });
  afterAll(async () => {
    if (options.skip) return;
    await t.daemon.shutdown();
    await t.sim.close();
    if (kind === 'redis') await removeKeys(prefix);
  });
  return t;
}
