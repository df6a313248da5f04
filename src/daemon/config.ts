import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { DEFAULT_BUDGET } from '../budget.js';
import { API_VERSION_PATTERN, DEFAULT_AZURE_API_VERSION, DEFAULT_BASE_URLS, DEFAULT_CLIENT, normalizeBaseUrl, PROVIDERS } from '../client.js';
import { describeIssue } from '../config.js';
import { ConfigError } from '../errors.js';
import { LOG_LEVELS } from '../logger.js';
import type { PartialPollPolicy } from '../schedule.js';
import { DEFAULT_DEADLINES, DEFAULT_POLL_POLICY, resolvePollPolicy } from '../schedule.js';
import type { FsyncPolicy } from '../sinks/file.js';

const DAY_MS = 86_400_000;
// widened on purpose: a config file may override any part of the policy or the fsync mode
const defaultPolicy: PartialPollPolicy = DEFAULT_POLL_POLICY;
const defaultFsync: FsyncPolicy = 'interval';
/** Where the daemon keeps its state. */
export type StoreKind = 'sqlite' | 'redis' | 'memory';

/** Every setting with its default; `config/default.json` is this object (a test checks it). */
export const DEFAULT_CONFIG = Object.freeze({
  watch: { ...DEFAULT_CLIENT, baseUrl: null as string | null, apiVersion: DEFAULT_AZURE_API_VERSION, ...DEFAULT_DEADLINES, ...DEFAULT_BUDGET, policy: defaultPolicy },
  daemon: {
    host: '127.0.0.1',
    port: 8080,
    dataDir: './data',
    logLevel: 'info',
    shutdownTimeoutMs: 10_000,
    maxBodyBytes: 65_536,
    stallThresholdMs: 600_000,
    cancelAfterStallMs: null as number | null,
    toolHandler: null as { path: string; options?: Record<string, unknown> } | null,
    callbackHosts: [] as string[],
  },
  sinks: {
    stdout: { enabled: true },
    file: { enabled: false, path: './data/events.ndjson', fsync: defaultFsync, fsyncIntervalMs: 1_000 },
    webhook: { url: null as string | null, timeoutMs: 10_000, quickRetries: 2 },
    redisStream: { enabled: false, stream: 'runwatch:events', maxLen: 1_000_000 },
    callback: { timeoutMs: 10_000, quickRetries: 2 },
    modules: [] as Array<{ path: string; options?: Record<string, unknown> }>,
    delivery: { retryForMs: DAY_MS, backoffBaseMs: 1_000, backoffCapMs: 300_000, concurrency: 8 },
  },
  retention: { eventsMs: 7 * DAY_MS, watchesMs: 7 * DAY_MS, pruneIntervalMs: 600_000 },
  store: {
    // widened on purpose (the linter cannot see that the config type derives from this object)
    // eslint-disable-next-line @typescript-eslint/no-unnecessary-type-assertion
    kind: 'sqlite' as StoreKind,
    prefix: 'runwatch:',
    partitions: 8,
    lockDurationMs: 10_000,
    stalledIntervalMs: 5_000,
    leaseMs: 10_000,
  },
});

const positiveInt = z.number().int().positive();
const durationMs = z.number().int().positive().max(2 ** 31 - 1);
const url = z.string().url().refine((u) => /^https?:/.test(u), 'must be an http(s) URL');

const schema = z
  .object({
    watch: z
      .object({
        provider: z.enum(PROVIDERS as [string, ...string[]]),
        baseUrl: z.string().nullable(),
        apiVersion: z.string().regex(API_VERSION_PATTERN, `expected an api-version such as ${DEFAULT_AZURE_API_VERSION}`),
        requestTimeoutMs: durationMs,
        maxSockets: positiveInt,
        traceId: z.boolean(),
        defaultTimeoutMs: durationMs,
        expiresGraceMs: durationMs,
        maxInFlight: positiveInt,
        maxRequestsPerSecond: z.number().positive(),
        policy: z.record(z.string(), z.unknown()),
      })
      .strict(),
    daemon: z
      .object({
        host: z.string().min(1),
        port: z.number().int().min(0).max(65_535),
        dataDir: z.string().min(1),
        logLevel: z.enum(LOG_LEVELS as unknown as [string, ...string[]]),
        shutdownTimeoutMs: durationMs,
        maxBodyBytes: positiveInt.max(10_000_000),
        stallThresholdMs: durationMs,
        cancelAfterStallMs: durationMs.nullable(),
        toolHandler: z.object({ path: z.string().min(1), options: z.record(z.string(), z.unknown()).optional() }).strict().nullable(),
        callbackHosts: z.array(z.string().min(1)),
      })
      .strict(),
    sinks: z
      .object({
        stdout: z.object({ enabled: z.boolean() }).strict(),
        file: z.object({ enabled: z.boolean(), path: z.string().min(1), fsync: z.enum(['always', 'interval', 'never']), fsyncIntervalMs: durationMs }).strict(),
        webhook: z.object({ url: url.nullable(), timeoutMs: durationMs, quickRetries: z.number().int().min(0).max(10) }).strict(),
        redisStream: z.object({ enabled: z.boolean(), stream: z.string().min(1).max(256), maxLen: positiveInt }).strict(),
        callback: z.object({ timeoutMs: durationMs, quickRetries: z.number().int().min(0).max(10) }).strict(),
        modules: z.array(z.object({ path: z.string().min(1), options: z.record(z.string(), z.unknown()).optional() }).strict()),
        delivery: z.object({ retryForMs: durationMs, backoffBaseMs: durationMs, backoffCapMs: durationMs, concurrency: positiveInt.max(256) }).strict(),
      })
      .strict(),
    retention: z.object({ eventsMs: z.number().int().positive(), watchesMs: z.number().int().positive(), pruneIntervalMs: durationMs }).strict(),
    store: z
      .object({
        kind: z.enum(['sqlite', 'redis', 'memory']),
        prefix: z.string().min(1).max(64),
        partitions: z.number().int().min(1).max(256),
        lockDurationMs: durationMs,
        stalledIntervalMs: durationMs,
        leaseMs: durationMs,
      })
      .strict(),
  })
  .strict();

/** The validated daemon configuration. */
export type DaemonConfig = typeof DEFAULT_CONFIG;

/** Where a configuration comes from, lowest precedence first. */
export interface ConfigSources {
  /** A JSON file (`--config` or `RUNWATCH_CONFIG`). */
  readonly file?: string | undefined;
  /** The environment: `RUNWATCH_<SECTION>__<SETTING>` and the aliases in `ENV_ALIASES`. */
  readonly env?: NodeJS.ProcessEnv;
  /** Flags as `path=value` pairs (`--set daemon.port=9090`, `--port 9090`). */
  readonly overrides?: ReadonlyArray<readonly [path: string, value: string]>;
}

/** Short environment names for the settings changed most often. */
export const ENV_ALIASES: Readonly<Record<string, string>> = {
  RUNWATCH_HOST: 'daemon.host',
  RUNWATCH_PORT: 'daemon.port',
  RUNWATCH_DATA_DIR: 'daemon.dataDir',
  RUNWATCH_LOG_LEVEL: 'daemon.logLevel',
  RUNWATCH_PROVIDER: 'watch.provider',
  RUNWATCH_BASE_URL: 'watch.baseUrl',
  RUNWATCH_API_VERSION: 'watch.apiVersion',
  RUNWATCH_WEBHOOK_URL: 'sinks.webhook.url',
  RUNWATCH_STORE: 'store.kind',
};

/** Variables that are not settings (secrets and the config path itself). */
const NOT_SETTINGS = new Set(['RUNWATCH_CONFIG', 'RUNWATCH_REDIS_URL', 'RUNWATCH_REDIS_URL_FILE', 'RUNWATCH_TEST_REDIS_URL', 'RUNWATCH_CONTROL_TOKEN', 'RUNWATCH_CONTROL_TOKEN_FILE', 'RUNWATCH_WEBHOOK_SECRET', 'RUNWATCH_WEBHOOK_SECRET_FILE', 'RUNWATCH_SIM_API_KEY', 'RUNWATCH_SIM_API_KEY_FILE', 'RUNWATCH_NODE_CACHE']);

/** `SHUTDOWN_TIMEOUT_MS` -> `shutdownTimeoutMs`. */
function camel(upper: string): string {
  return upper.toLowerCase().replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** A value from the environment or a flag: JSON when it parses (numbers, booleans, null, arrays), else the string. */
function parseValue(raw: string): unknown {
  try {
    return JSON.parse(raw) as unknown;
  } catch {
    return raw;
  }
}

function setPath(target: Record<string, unknown>, dotted: string, value: unknown, source: string): void {
  const keys = dotted.split('.');
  let node = target;
  for (const key of keys.slice(0, -1)) {
    const next = node[key];
    if (typeof next !== 'object' || next === null || Array.isArray(next)) throw new ConfigError(`unknown setting ${dotted} (from ${source})`);
    node = next as Record<string, unknown>;
  }
  const last = keys.at(-1)!;
  if (!(last in node) && !dotted.startsWith('watch.policy.')) throw new ConfigError(`unknown setting ${dotted} (from ${source}); see config/default.json`);
  node[last] = value;
}

function merge(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(over)) {
    const current = out[key];
    out[key] =
      typeof value === 'object' && value !== null && !Array.isArray(value) && typeof current === 'object' && current !== null && !Array.isArray(current)
        ? merge(current as Record<string, unknown>, value as Record<string, unknown>)
        : value;
  }
  return out;
}

/**
 * Loads the configuration: defaults < file < environment < flags, validated once. Throws
 * `ConfigError` naming the setting and the bad value.
 */
export function loadConfig(sources: ConfigSources = {}): DaemonConfig {
  let config = structuredClone(DEFAULT_CONFIG) as unknown as Record<string, unknown>;
  const file = sources.file ?? sources.env?.RUNWATCH_CONFIG;
  if (file) {
    const resolved = existsSync(file) ? file : path.join('config', file);
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(resolved, 'utf8'));
    } catch (error) {
      const reason = (error as NodeJS.ErrnoException).code ?? (error instanceof Error ? error.message : 'error');
      throw new ConfigError(`cannot read config file ${file}: ${reason}`);
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new ConfigError(`config file ${file} must hold a JSON object`);
    config = merge(config, parsed as Record<string, unknown>);
  }
  for (const [name, raw] of Object.entries(sources.env ?? {})) {
    if (!name.startsWith('RUNWATCH_') || raw === undefined || NOT_SETTINGS.has(name)) continue;
    const alias = ENV_ALIASES[name];
    const dotted = alias ?? (name.includes('__') ? name.slice('RUNWATCH_'.length).split('__').map(camel).join('.') : undefined);
    if (dotted) setPath(config, dotted, parseValue(raw), name);
  }
  for (const [dotted, raw] of sources.overrides ?? []) setPath(config, dotted, parseValue(raw), `--${dotted}`);
  return validateConfig(config);
}

/** Validates a whole configuration object. */
export function validateConfig(input: unknown): DaemonConfig {
  const parsed = schema.safeParse(input);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const value = issue ? issue.path.reduce<unknown>((node, key) => (node as Record<PropertyKey, unknown> | undefined)?.[key], input) : undefined;
    throw new ConfigError(`${describeIssue(parsed.error, 'config')} (got ${JSON.stringify(value)})`);
  }
  const config = parsed.data as unknown as DaemonConfig;
  if (config.watch.baseUrl !== null) normalizeBaseUrl(config.watch.baseUrl);
  if (config.watch.provider === 'azure' && config.watch.baseUrl === null) {
    throw new ConfigError('invalid config.watch.baseUrl: provider azure needs the project endpoint, e.g. https://<resource>.services.ai.azure.com/api/projects/<project>');
  }
  try {
    resolvePollPolicy(config.watch.policy);
  } catch (error) {
    throw new ConfigError(`invalid config.watch.policy: ${(error as Error).message}`);
  }
  if (config.sinks.delivery.backoffCapMs < config.sinks.delivery.backoffBaseMs) throw new ConfigError('invalid config.sinks.delivery.backoffCapMs: must be >= backoffBaseMs');
  return config;
}

/** The base URL in force: the configured one, else the provider's hosted API (validation makes sure there is one). */
export function effectiveBaseUrl(config: DaemonConfig): string {
  return config.watch.baseUrl ?? DEFAULT_BASE_URLS[config.watch.provider] ?? '';
}

/** True for addresses only this machine can reach. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host === '[::1]' || /^127(\.\d{1,3}){3}$/.test(host);
}
