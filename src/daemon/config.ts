import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { DEFAULT_BUDGET } from '../budget.js';
import { API_VERSION_PATTERN, DEFAULT_AZURE_API_VERSION, DEFAULT_BASE_URLS, DEFAULT_CLIENT, normalizeBaseUrl, PORTKEY_PROVIDER_PATTERN, PROVIDERS } from '../client.js';
import { describeIssue, describeIssues } from '../config.js';
import { ConfigError } from '../errors.js';
import { LOG_LEVELS } from '../logger.js';
import { pollPolicySchema } from '../policy.js';
import { DEFAULT_DEADLINES, DEFAULT_SAFETY_NET } from '../schedule.js';
import type { FsyncPolicy } from '../sinks/file.js';
import { DEFAULT_STREAMS } from '../stream.js';

const DAY_MS = 86_400_000;
const positiveInt = z.number().int().positive();
const durationMs = z.number().int().positive().max(2 ** 31 - 1);
const quickRetries = z.number().int().min(0).max(10);
const url = z.string().url().refine((u) => /^https?:/.test(u), 'must be an http(s) URL');
const moduleRef = z.strictObject({ path: z.string().min(1), options: z.record(z.string(), z.unknown()).optional() });
const FSYNC_POLICIES = ['always', 'interval', 'never'] as const satisfies readonly FsyncPolicy[];

/**
 * Every daemon setting: its bounds and its default, written once (`config/default.json` is
 * written from this by `npm run config:defaults`; a test keeps them equal, and another that
 * every setting is in the README's table). The `watch` defaults are the library's
 * (`DEFAULT_CLIENT`, `DEFAULT_DEADLINES`, `DEFAULT_BUDGET`, `DEFAULT_POLL_POLICY`).
 */
const configSchema = z.strictObject({
  watch: z
    .strictObject({
      provider: z.enum(PROVIDERS).default(DEFAULT_CLIENT.provider),
      /** @default null (the provider's hosted API; azure needs its project endpoint) */
      baseUrl: z.string().nullable().default(null),
      apiVersion: z.string().regex(API_VERSION_PATTERN, `expected an api-version such as ${DEFAULT_AZURE_API_VERSION}`).default(DEFAULT_AZURE_API_VERSION),
      requestTimeoutMs: durationMs.default(DEFAULT_CLIENT.requestTimeoutMs),
      maxSockets: positiveInt.default(DEFAULT_CLIENT.maxSockets),
      /** @default null (each kind's cap: runs 8 MiB, responses 64 MiB) */
      maxResponseBytes: z.number().int().min(1024).nullable().default(null),
      /** @default null (PORTKEY_PROVIDER, else none) */
      portkeyProvider: z.string().regex(PORTKEY_PROVIDER_PATTERN, 'expected a Model Catalog slug such as @openai-prod').nullable().default(null),
      traceId: z.boolean().default(DEFAULT_CLIENT.traceId),
      defaultTimeoutMs: durationMs.default(DEFAULT_DEADLINES.defaultTimeoutMs),
      expiresGraceMs: durationMs.default(DEFAULT_DEADLINES.expiresGraceMs),
      maxInFlight: positiveInt.default(DEFAULT_BUDGET.maxInFlight),
      maxRequestsPerSecond: z.number().positive().default(DEFAULT_BUDGET.maxRequestsPerSecond),
      /** Requests the budget's bucket holds after a quiet spell. @default null (the rate in one process; a twentieth of it in Redis mode, where the bucket is the fleet's) */
      burst: positiveInt.nullable().default(null),
      /** The whole policy in force: what the config gave, merged over the defaults. @default DEFAULT_POLL_POLICY */
      policy: pollPolicySchema.prefault({}),
    })
    .superRefine((watch, ctx) => {
      if (watch.provider === 'azure' && watch.baseUrl === null) {
        ctx.addIssue({ code: 'custom', path: ['baseUrl'], input: null, message: 'provider azure needs the project endpoint, e.g. https://<resource>.services.ai.azure.com/api/projects/<project>' });
      }
    })
    .prefault({}),
  daemon: z
    .strictObject({
      host: z.string().min(1).default('127.0.0.1'),
      port: z.number().int().min(0).max(65_535).default(8080),
      dataDir: z.string().min(1).default('./data'),
      logLevel: z.enum(LOG_LEVELS).default('info'),
      /** Below Docker's 10 s stop grace and Kubernetes' 30 s terminationGracePeriodSeconds: raise them together. */
      shutdownTimeoutMs: durationMs.default(8_000),
      maxBodyBytes: positiveInt.max(10_000_000).default(65_536),
      stallThresholdMs: durationMs.default(600_000),
      /** @default null (never) */
      cancelAfterStallMs: durationMs.nullable().default(null),
      /** @default null (none) */
      toolHandler: moduleRef.nullable().default(null),
      callbackHosts: z.array(z.string().min(1)).default([]),
    })
    .prefault({}),
  sinks: z
    .strictObject({
      stdout: z.strictObject({ enabled: z.boolean().default(true) }).prefault({}),
      file: z
        .strictObject({
          enabled: z.boolean().default(false),
          /** @default null (`<daemon.dataDir>/events.ndjson`) */
          path: z.string().min(1).nullable().default(null),
          fsync: z.enum(FSYNC_POLICIES).default('interval'),
          fsyncIntervalMs: durationMs.default(1_000),
        })
        .prefault({}),
      webhook: z
        .strictObject({
          /** @default null (no webhook) */
          url: url.nullable().default(null),
          timeoutMs: durationMs.default(10_000),
          quickRetries: quickRetries.default(2),
        })
        .prefault({}),
      redisStream: z
        .strictObject({
          enabled: z.boolean().default(false),
          stream: z.string().min(1).max(256).default('runwatch:events'),
          maxLen: positiveInt.default(1_000_000),
        })
        .prefault({}),
      callback: z
        .strictObject({
          timeoutMs: durationMs.default(10_000),
          quickRetries: quickRetries.default(2),
        })
        .prefault({}),
      modules: z.array(moduleRef).default([]),
      delivery: z
        .strictObject({
          /** @default 86400000 (1 day), then dead-letter */
          retryForMs: durationMs.default(DAY_MS),
          backoffBaseMs: durationMs.default(1_000),
          backoffCapMs: durationMs.default(300_000),
          concurrency: positiveInt.max(256).default(8),
        })
        .superRefine((delivery, ctx) => {
          if (delivery.backoffCapMs < delivery.backoffBaseMs) {
            ctx.addIssue({ code: 'custom', path: ['backoffCapMs'], input: delivery.backoffCapMs, message: `must be >= backoffBaseMs = ${delivery.backoffBaseMs}` });
          }
        })
        .prefault({}),
    })
    .prefault({}),
  push: z
    .strictObject({
      /**
       * The push signal of background response watches: `none` (poll), `stream` (resume
       * streams, one process only), `webhook` (OpenAI webhooks to `hookPath`), `auto` (webhook
       * when RUNWATCH_OPENAI_WEBHOOK_SECRET is set, else stream, else none in Redis mode).
       */
      mode: z.enum(['none', 'stream', 'webhook', 'auto']).default('none'),
      hookPath: z.string().regex(/^\/[A-Za-z0-9/_.-]*$/, 'expected a path such as /v1/hooks/openai').default('/v1/hooks/openai'),
      safetyNetBaseMs: durationMs.default(DEFAULT_SAFETY_NET.baseMs),
      safetyNetCapMs: durationMs.default(DEFAULT_SAFETY_NET.capMs),
      maxStreams: positiveInt.max(100_000).default(DEFAULT_STREAMS.maxStreams),
    })
    .superRefine((push, ctx) => {
      if (push.safetyNetCapMs < push.safetyNetBaseMs) ctx.addIssue({ code: 'custom', path: ['safetyNetCapMs'], input: push.safetyNetCapMs, message: `must be >= safetyNetBaseMs = ${push.safetyNetBaseMs}` });
      if (['/healthz', '/readyz', '/metrics', '/v1/events'].includes(push.hookPath) || push.hookPath.startsWith('/v1/watches')) {
        ctx.addIssue({ code: 'custom', path: ['hookPath'], input: push.hookPath, message: 'is a route of the control API: pick another path' });
      }
    })
    .prefault({}),
  retention: z
    .strictObject({
      /** @default 604800000 (7 days) */
      eventsMs: positiveInt.default(7 * DAY_MS),
      /** @default 604800000 (7 days) */
      watchesMs: positiveInt.default(7 * DAY_MS),
      pruneIntervalMs: durationMs.default(600_000),
    })
    .prefault({}),
  store: z
    .strictObject({
      kind: z.enum(['sqlite', 'redis', 'memory']).default('sqlite'),
      prefix: z.string().min(1).max(64).default('runwatch:'),
      partitions: z.number().int().min(1).max(256).default(8),
      /** Redis: a watch partition's lease; a dead replica's watches are taken over this long after its last renewal. @default 10000 */
      lockDurationMs: durationMs.default(10_000),
      /** Redis: how often a replica renews its watch-partition leases and looks for partitions to take (at least every `lockDurationMs / 5`). @default 5000 */
      stalledIntervalMs: durationMs.default(5_000),
      leaseMs: durationMs.default(10_000),
      /**
       * Redis mode: how many shards the watches are spread over, each a complete Redis-mode
       * keyspace under a hash tag (`<prefix>{s<i>}:`), so a Redis Cluster spreads them over its
       * nodes. 1 keeps one keyspace under `prefix` with no hash tag (the layout of earlier versions).
       * @default 1
       */
      shards: z.number().int().min(1).max(64).default(1),
      /**
       * The shards this replica polls (their indexes); every shard needs a replica that serves
       * it. Any replica still adds, cancels and deletes watches of every shard and delivers its outbox.
       * @default null (every shard)
       */
      serveShards: z.array(z.number().int().min(0).max(63)).min(1).nullable().default(null),
      /**
       * Redis mode: connect to a Redis Cluster (`RUNWATCH_REDIS_URL` names seed nodes). A list of
       * several comma-separated URLs always means a cluster.
       * @default false
       */
      cluster: z.boolean().default(false),
    })
    .superRefine((store, ctx) => {
      for (const shard of store.serveShards ?? []) {
        if (shard >= store.shards) ctx.addIssue({ code: 'custom', path: ['serveShards'], input: store.serveShards, message: `lists shard ${shard} but store.shards is ${store.shards} (indexes 0 to ${store.shards - 1})` });
      }
      if (store.serveShards && new Set(store.serveShards).size !== store.serveShards.length) ctx.addIssue({ code: 'custom', path: ['serveShards'], input: store.serveShards, message: 'lists a shard twice' });
      // a brace in the prefix would be the hash tag instead of the shard's
      if (store.shards > 1 && /[{}]/.test(store.prefix)) ctx.addIssue({ code: 'custom', path: ['prefix'], input: store.prefix, message: 'must not hold { or } with store.shards > 1 (each shard adds its own hash tag)' });
    })
    .prefault({}),
});

/** The validated daemon configuration: every setting, defaults filled in. */
export type DaemonConfig = z.output<typeof configSchema>;

/** Where the daemon keeps its state. */
export type StoreKind = DaemonConfig['store']['kind'];

/** Freezes an object and everything in it (the defaults are shared; nobody may change them). */
function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    for (const child of Object.values(value)) deepFreeze(child);
    Object.freeze(value);
  }
  return value;
}

/** Every setting with its default: the schema's parse of `{}`. `config/default.json` is this object. */
export const DEFAULT_CONFIG: Readonly<DaemonConfig> = deepFreeze(configSchema.parse({}));

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
const NOT_SETTINGS = new Set(['RUNWATCH_CONFIG', 'RUNWATCH_REDIS_URL', 'RUNWATCH_REDIS_URL_FILE', 'RUNWATCH_TEST_REDIS_URL', 'RUNWATCH_CONTROL_TOKEN', 'RUNWATCH_CONTROL_TOKEN_FILE', 'RUNWATCH_WEBHOOK_SECRET', 'RUNWATCH_WEBHOOK_SECRET_FILE', 'RUNWATCH_OPENAI_WEBHOOK_SECRET', 'RUNWATCH_OPENAI_WEBHOOK_SECRET_FILE', 'RUNWATCH_SIM_WEBHOOK_SECRET', 'RUNWATCH_SIM_WEBHOOK_SECRET_FILE', 'RUNWATCH_SIM_API_KEY', 'RUNWATCH_SIM_API_KEY_FILE', 'RUNWATCH_NODE_CACHE']);

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

/** The package's own `config/` folder (beside `src/` and `dist/`), wherever the package is installed. */
export const PACKAGE_CONFIG_DIR = path.join(import.meta.dirname, '..', '..', 'config');

/**
 * The file `--config NAME` (or `RUNWATCH_CONFIG`) means: the path as given, relative to the
 * working directory; for a bare name (no `/`), else `config/NAME` or `config/NAME.json` in the
 * working directory, else the same in the package's own `config/` folder
 * (`--config sqlite-service`). Throws `ConfigError` saying where it looked.
 */
export function resolveConfigFile(name: string, cwd: string = process.cwd()): string {
  const given = path.resolve(cwd, name);
  if (existsSync(given) || /[\\/]/.test(name)) return given;
  const dirs = [...new Set([path.join(cwd, 'config'), PACKAGE_CONFIG_DIR])];
  const found = dirs.flatMap((dir) => [path.join(dir, name), path.join(dir, `${name}.json`)]).find((file) => existsSync(file) && statSync(file).isFile());
  if (found) return found;
  const shipped = existsSync(PACKAGE_CONFIG_DIR) ? packageConfigNames().join(', ') : 'none';
  throw new ConfigError(`config file ${name} not found in ${[cwd, ...dirs].join(', ')}: pass a path, or one of the shipped configs (${shipped})`);
}

/** The configs the package ships (`config/*.json`), by bare name. */
export function packageConfigNames(): string[] {
  return readdirSync(PACKAGE_CONFIG_DIR)
    .filter((file) => file.endsWith('.json'))
    .map((file) => file.slice(0, -'.json'.length))
    .sort();
}

function readConfigFile(file: string, name: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code ?? (error instanceof Error ? error.message : 'error');
    throw new ConfigError(`cannot read config file ${name}: ${reason}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new ConfigError(`config file ${name} must hold a JSON object`);
  return parsed as Record<string, unknown>;
}

/** What `checkConfig` found. */
export interface ConfigCheck {
  /** The validated configuration, defaults filled in; `undefined` when there is any problem. */
  readonly config: DaemonConfig | undefined;
  /** The config file read, as an absolute path; `undefined` without one. */
  readonly file: string | undefined;
  /** Every problem found, one line each (an unreadable file, unknown settings, bad values). */
  readonly problems: readonly string[];
}

/**
 * Assembles and validates the configuration like `loadConfig`, but collects every problem
 * instead of throwing at the first (`runwatch config --check`).
 */
export function checkConfig(sources: ConfigSources = {}): ConfigCheck {
  const problems: string[] = [];
  const collect = (step: () => void): void => {
    try {
      step();
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      problems.push(error.message);
    }
  };
  let config = structuredClone(DEFAULT_CONFIG) as unknown as Record<string, unknown>;
  let file: string | undefined;
  const name = sources.file ?? sources.env?.RUNWATCH_CONFIG;
  if (name) {
    collect(() => {
      file = resolveConfigFile(name);
      config = merge(config, readConfigFile(file, name));
    });
  }
  // the short aliases first: RUNWATCH_DAEMON__PORT wins over RUNWATCH_PORT (an image may set the latter)
  const env = Object.entries(sources.env ?? {});
  for (const [variable, raw] of [...env.filter(([n]) => n in ENV_ALIASES), ...env.filter(([n]) => !(n in ENV_ALIASES))]) {
    if (!variable.startsWith('RUNWATCH_') || raw === undefined || NOT_SETTINGS.has(variable)) continue;
    const alias = ENV_ALIASES[variable];
    const dotted = alias ?? (variable.includes('__') ? variable.slice('RUNWATCH_'.length).split('__').map(camel).join('.') : undefined);
    if (dotted) collect(() => setPath(config, dotted, parseValue(raw), variable));
  }
  for (const [dotted, raw] of sources.overrides ?? []) collect(() => setPath(config, dotted, parseValue(raw), `--${dotted}`));
  const parsed = configSchema.safeParse(config, { reportInput: true });
  if (!parsed.success) problems.push(...describeIssues(parsed.error, 'config'));
  else if (parsed.data.watch.baseUrl !== null) collect(() => normalizeBaseUrl(parsed.data.watch.baseUrl ?? ''));
  return { config: parsed.success && problems.length === 0 ? parsed.data : undefined, file, problems };
}

/**
 * Loads the configuration: defaults < file < environment < flags, validated once. Throws
 * `ConfigError` naming the setting and the bad value (the first problem; `checkConfig` lists all).
 */
export function loadConfig(sources: ConfigSources = {}): DaemonConfig {
  const { config, problems } = checkConfig(sources);
  if (config) return config;
  const more = problems.length - 1;
  throw new ConfigError(`${problems[0] ?? 'invalid config'}${more > 0 ? ` (and ${more} more: runwatch config --check lists them)` : ''}`);
}

/** Validates a whole configuration object, filling in defaults; throws `ConfigError` naming the setting and the value. */
export function validateConfig(input: unknown): DaemonConfig {
  const parsed = configSchema.safeParse(input, { reportInput: true });
  if (!parsed.success) throw new ConfigError(describeIssue(parsed.error, 'config'));
  const config = parsed.data;
  if (config.watch.baseUrl !== null) normalizeBaseUrl(config.watch.baseUrl);
  return config;
}

/** The base URL in force: the configured one, else the provider's hosted API (validation makes sure there is one). */
export function effectiveBaseUrl(config: DaemonConfig): string {
  return config.watch.baseUrl ?? DEFAULT_BASE_URLS[config.watch.provider] ?? '';
}

/** The push mode response watches get: `auto` resolved against the secrets and the store kind. */
export function pushModeOf(config: DaemonConfig, hasWebhookSecret: boolean): 'none' | 'stream' | 'webhook' {
  const { mode } = config.push;
  if (mode === 'stream' && config.store.kind === 'redis') throw new ConfigError('push.mode stream holds each stream in one process and store.kind redis spreads watches over replicas: use push.mode webhook');
  if (mode === 'webhook' && !hasWebhookSecret) throw new ConfigError('push.mode webhook needs the secret of your OpenAI webhook endpoint: set RUNWATCH_OPENAI_WEBHOOK_SECRET (or _FILE)');
  if (mode !== 'auto') return mode;
  return hasWebhookSecret ? 'webhook' : config.store.kind === 'redis' ? 'none' : 'stream';
}

/** Where the file sink writes: `sinks.file.path`, else `events.ndjson` in the data dir. */
export function fileSinkPath(config: DaemonConfig): string {
  return config.sinks.file.path ?? path.join(config.daemon.dataDir, 'events.ndjson');
}

/** Query parameters whose values are credentials (`?token=`, `api_key=`, `sig=`, ...). */
const SECRET_PARAM = /token|key|secret|passw|pwd|sig|auth|credential/i;

/**
 * A URL with its credentials replaced by `[REDACTED]`: the user info (`https://user:pass@host`)
 * and the values of query parameters named like a secret (`token`, `key`, `secret`, ...).
 * Any other text is returned as it is.
 */
export function redactUrl(text: string): string {
  const match = /^([a-z][a-z0-9+.-]*:\/\/)([^/?#]*)(.*)$/is.exec(text);
  if (!match) return text;
  const [, scheme = '', authority = '', rest = ''] = match;
  const at = authority.lastIndexOf('@');
  const host = at === -1 ? authority : `[REDACTED]@${authority.slice(at + 1)}`;
  // the fragment too: some flows carry #access_token=
  const params = rest.replace(/([?&;#])([^=&;#]*)=([^&;#]*)/g, (param, separator: string, name: string) => (SECRET_PARAM.test(name) ? `${separator}${name}=[REDACTED]` : param));
  return `${scheme}${host}${params}`;
}

/** The configuration as `runwatch config` prints it: every URL in it (base URL, webhook, module options) with its credentials redacted. */
export function printableConfig(config: DaemonConfig): DaemonConfig {
  const redact = (value: unknown): unknown => {
    if (typeof value === 'string') return redactUrl(value);
    if (Array.isArray(value)) return value.map(redact);
    if (typeof value === 'object' && value !== null) return Object.fromEntries(Object.entries(value).map(([key, child]) => [key, redact(child)]));
    return value;
  };
  return redact(config) as DaemonConfig;
}

/** True for addresses only this machine can reach. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host === '[::1]' || /^127(\.\d{1,3}){3}$/.test(host);
}
