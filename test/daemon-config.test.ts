import { mkdtempSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { DEFAULT_CONFIG, loadConfig } from '../src/daemon/config.js';
import { engineSettings } from '../src/daemon/engine.js';
import { ConfigError } from '../src/errors.js';
import { CLI, cliEnv, runCli, startProcess } from './spawn.js';

const dir = mkdtempSync(path.join(tmpdir(), 'runwatch-config-'));

describe('loadConfig', () => {
  it('applies defaults < file < env < flags', () => {
    const file = path.join(dir, 'prod.json');
    writeFileSync(file, JSON.stringify({ daemon: { port: 1111, host: '127.0.0.2' }, watch: { maxInFlight: 7 } }));
    const config = loadConfig({
      file,
      env: { RUNWATCH_PORT: '2222', RUNWATCH_WATCH__MAX_IN_FLIGHT: '9', RUNWATCH_SINKS__WEBHOOK__URL: 'http://hooks:9000/x', HOME: '/root' },
      overrides: [['daemon.port', '3333']],
    });
    expect(config.daemon).toMatchObject({ port: 3333, host: '127.0.0.2', dataDir: './data' });
    expect(config.watch.maxInFlight).toBe(9);
    expect(config.sinks.webhook.url).toBe('http://hooks:9000/x');
    expect(loadConfig({})).toEqual(DEFAULT_CONFIG);
  });

  it('lets RUNWATCH_<SECTION>__<SETTING> win over its short alias, whatever their order', () => {
    // an image sets RUNWATCH_HOST; the long form set for one container must still apply
    expect(loadConfig({ env: { RUNWATCH_DAEMON__PORT: '9001', RUNWATCH_PORT: '9002' } }).daemon.port).toBe(9001);
    expect(loadConfig({ env: { RUNWATCH_PORT: '9002', RUNWATCH_DAEMON__PORT: '9001' } }).daemon.port).toBe(9001);
  });

  it.each([
    [{ overrides: [['daemon.port', '70000']] }, /config\.daemon\.port.*got 70000/],
    [{ overrides: [['daemon.logLevel', '"loud"']] }, /config\.daemon\.logLevel.*got "loud"/],
    [{ overrides: [['daemon.nope', '1']] }, /unknown setting daemon\.nope/],
    [{ env: { RUNWATCH_SINKS__WEBHOOK__URL: 'ftp://x' } }, /config\.sinks\.webhook\.url/],
    [{ overrides: [['watch.policy', '{"jitter":5}']] }, /config\.watch\.policy.*jitter/],
    [{ overrides: [['watch.baseUrl', '"not a url"']] }, /invalid base URL/],
    [{ file: path.join(dir, 'missing.json') }, /cannot read config file .*missing\.json: ENOENT/],
  ] as const)('names the bad setting and value: %j', (sources, message) => {
    expect(() => loadConfig(sources as Parameters<typeof loadConfig>[0])).toThrow(ConfigError);
    expect(() => loadConfig(sources as Parameters<typeof loadConfig>[0])).toThrow(message);
  });
});

describe('watch.portkeyProvider and watch.maxResponseBytes', () => {
  it('reach the client: the slug overrides PORTKEY_PROVIDER, the cap defaults to each kind\'s', () => {
    const logger = pino({ level: 'silent' });
    const secrets = { credentials: { apiKey: 'pk-1', portkeyProvider: '@from-env' } };
    const given = engineSettings(loadConfig({ overrides: [['watch.portkeyProvider', '"@openai-prod"'], ['watch.maxResponseBytes', '1048576']] }), secrets, logger, undefined);
    expect(given.watcher.credentials).toEqual({ apiKey: 'pk-1', portkeyProvider: '@openai-prod' });
    expect(given.watcher.maxResponseBytes).toBe(1_048_576);
    const defaults = engineSettings(loadConfig(), secrets, logger, undefined);
    expect(defaults.watcher.credentials).toEqual({ apiKey: 'pk-1', portkeyProvider: '@from-env' });
    expect(defaults.watcher.maxResponseBytes).toBeUndefined();
    expect(() => loadConfig({ overrides: [['watch.portkeyProvider', '"not a slug"']] })).toThrow(/watch\.portkeyProvider.*@openai-prod/);
    expect(() => loadConfig({ overrides: [['watch.maxResponseBytes', '10']] })).toThrow(ConfigError);
  });
});

describe('runwatch daemon and config: exit paths', () => {
  it('refuses a public address without a token (exit 64)', async () => {
    const result = await runCli(['daemon', '--host', '0.0.0.0', '--port', '0', '--data-dir', dir], { PORTKEY_API_KEY: 'pk-x' });
    expect(result.code).toBe(64);
    expect(result.stderr).toMatch(/^runwatch: refusing to listen on 0\.0\.0\.0 without a token: set RUNWATCH_CONTROL_TOKEN, or RUNWATCH_CONTROL_TOKEN_FILE/m);
    // in a container, 127.0.0.1 is unreachable from outside: no advice to bind it
    expect(result.stderr).not.toContain('127.0.0.1');
  });

  it('exits 64 on a bad setting, a missing key or a malformed webhook secret', async () => {
    expect((await runCli(['daemon', '--port', 'eighty'], { PORTKEY_API_KEY: 'x' })).stderr).toMatch(/config\.daemon\.port/);
    const missing = await runCli(['daemon', '--port', '0', '--data-dir', dir]);
    expect(missing.code).toBe(64);
    expect(missing.stderr).toMatch(/missing API key: set PORTKEY_API_KEY/);
    const secret = await runCli(['daemon', '--port', '0', '--data-dir', dir], { PORTKEY_API_KEY: 'x', RUNWATCH_WEBHOOK_SECRET: 'whsec_x' });
    expect(secret.code).toBe(64);
    expect(secret.stderr).toMatch(/invalid webhook secret/);
    expect(secret.stderr).not.toContain('whsec_x');
  });

  it('exits 64 on a data dir written by a newer runwatch, naming the way out', async () => {
    const newer = mkdtempSync(path.join(tmpdir(), 'runwatch-newer-'));
    const db = new DatabaseSync(path.join(newer, 'runwatch.db'));
    db.exec('PRAGMA user_version = 99');
    db.close();
    const result = await runCli(['daemon', '--port', '0', '--data-dir', newer], { PORTKEY_API_KEY: 'x' });
    expect(result.code).toBe(64);
    expect(result.stderr).toMatch(/^runwatch: .*runwatch\.db was written by a newer runwatch \(schema 99, this one knows \d+\): run that version, or start on an empty data dir$/m);
  });

  it('exits 64 with a one-line error for a malformed OpenAI webhook secret, and for push.mode webhook without one', async () => {
    const bad = await runCli(['daemon', '--data-dir', dir], { PORTKEY_API_KEY: 'x', RUNWATCH_OPENAI_WEBHOOK_SECRET: 'whsec_not base64!!' });
    expect(bad.code).toBe(64);
    expect(bad.stderr).toMatch(/^runwatch: invalid RUNWATCH_OPENAI_WEBHOOK_SECRET: expected the whsec_/m);
    expect(bad.stderr).not.toContain('not base64');
    const missing = await runCli(['daemon', '--data-dir', dir, '--set', 'push.mode="webhook"'], { PORTKEY_API_KEY: 'x' });
    expect(missing.code).toBe(64);
    expect(missing.stderr).toMatch(/push\.mode webhook needs the secret of your OpenAI webhook endpoint: set RUNWATCH_OPENAI_WEBHOOK_SECRET/);
    const redis = await runCli(['daemon', '--data-dir', dir, '--set', 'push.mode="stream"', '--set', 'store.kind="redis"'], { PORTKEY_API_KEY: 'x', RUNWATCH_REDIS_URL: 'redis://127.0.0.1:1' });
    expect(redis.code).toBe(64);
    expect(redis.stderr).toMatch(/push\.mode stream holds each stream in one process/);
  });

  it('exits 64 with one line on shard settings that cannot work, and on a Redis Cluster the sharded keys cannot use', async () => {
    const redis = (settings: string[], url = 'redis://127.0.0.1:1') => runCli(['daemon', '--data-dir', dir, '--set', 'store.kind="redis"', ...settings.flatMap((s) => ['--set', s])], { PORTKEY_API_KEY: 'x', RUNWATCH_REDIS_URL: url });
    const cases: Array<[Promise<{ code: number | null; stderr: string }>, RegExp]> = [
      [redis(['store.shards=3', 'store.serveShards=[0,3]']), /^runwatch: invalid config\.store\.serveShards.*lists shard 3 but store\.shards is 3/m],
      [redis(['store.shards=2', 'store.serveShards=[1,1]']), /^runwatch: invalid config\.store\.serveShards.*lists a shard twice/m],
      [redis(['store.shards=0']), /^runwatch: invalid config\.store\.shards/m],
      [redis(['store.shards=2', 'store.prefix="{rw}:"']), /^runwatch: invalid config\.store\.prefix.*must not hold \{ or \}/m],
      [redis(['store.cluster=true', 'store.prefix="{rw}:"']), /^runwatch: store\.prefix must not hold \{ or \} on a Redis Cluster/m],
      [redis(['sinks.redisStream.enabled=true'], 'redis://127.0.0.1:1,redis://127.0.0.1:2'), /^runwatch: sinks\.redisStream writes to one Redis and RUNWATCH_REDIS_URL names a Redis Cluster/m],
      [redis([], 'redis://127.0.0.1:1,http://user:hunter2@127.0.0.1:2'), /^runwatch: invalid RUNWATCH_REDIS_URL: expected redis:\/\/.*comma-separated for a Redis Cluster$/m],
      [redis([], 'redis://127.0.0.1:1/2,redis://127.0.0.1:2/2'), /^runwatch: a Redis Cluster has only database 0: drop the \/db of RUNWATCH_REDIS_URL$/m],
    ];
    for (const [run, message] of cases) {
      const result = await run;
      expect(result.code, result.stderr).toBe(64);
      expect(result.stderr).toMatch(message);
      expect(result.stderr).not.toContain('hunter2');
    }
  });

  it('exits 69 when the port is taken', async () => {
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const { port } = blocker.address() as net.AddressInfo;
    try {
      const result = await runCli(['daemon', '--port', String(port), '--data-dir', dir], { PORTKEY_API_KEY: 'x' });
      expect(result.code).toBe(69);
      expect(result.stderr).toMatch(new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port} \\(EADDRINUSE\\): pick another --port`));
    } finally {
      blocker.close();
    }
  });

  it('prints the effective config with secrets redacted', async () => {
    const hookSecret = `whsec_${Buffer.from('very-secret-hook-key-32-bytes!!!').toString('base64')}`;
    const result = await runCli(['config', '--set', 'daemon.port=9999'], { PORTKEY_API_KEY: 'pk-very-secret-1234', RUNWATCH_CONTROL_TOKEN: 'tok-very-secret', RUNWATCH_OPENAI_WEBHOOK_SECRET: hookSecret, RUNWATCH_LOG_LEVEL: 'debug' });
    expect(result.code).toBe(0);
    const printed = JSON.parse(result.stdout) as { daemon: { port: number; logLevel: string }; secrets: Record<string, string | null> };
    expect(printed.daemon).toMatchObject({ port: 9999, logLevel: 'debug' });
    expect(printed.secrets).toMatchObject({ PORTKEY_API_KEY: '[REDACTED]', RUNWATCH_CONTROL_TOKEN: '[REDACTED]', RUNWATCH_OPENAI_WEBHOOK_SECRET: '[REDACTED]', RUNWATCH_WEBHOOK_SECRET: null });
    expect(result.stdout + result.stderr).not.toContain(hookSecret.slice(6, 30));
    expect(result.stdout + result.stderr).not.toMatch(/very-secret/);
  });

  it('prints URLs with their credentials redacted: user info and token, key, secret query values', async () => {
    const result = await runCli(['config', '--set', 'sinks.webhook.url="https://hook-user:hook-pass@hooks.example.com/runwatch?token=tok-123&team=a"'], {
      PORTKEY_API_KEY: 'pk-x',
      RUNWATCH_BASE_URL: 'http://gateway.internal:8787/v1?api-key=k-456',
    });
    expect(result.code).toBe(0);
    const printed = JSON.parse(result.stdout) as { watch: { baseUrl: string }; sinks: { webhook: { url: string } } };
    expect(printed.sinks.webhook.url).toBe('https://[REDACTED]@hooks.example.com/runwatch?token=[REDACTED]&team=a');
    expect(printed.watch.baseUrl).toBe('http://gateway.internal:8787/v1?api-key=[REDACTED]');
    expect(result.stdout).not.toMatch(/hook-pass|hook-user|tok-123|k-456/);
  });

  it('config --check: exit 0 and one OK line; a shipped config found by bare name from any directory', async () => {
    const elsewhere = mkdtempSync(path.join(tmpdir(), 'runwatch-cwd-'));
    const ok = await startProcess(process.execPath, [CLI, 'config', '--check', '--config', 'sqlite-service'], { cwd: elsewhere, env: cliEnv({ PORTKEY_API_KEY: 'pk-x' }) }).done;
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/^runwatch: config OK \(.*config\/sqlite-service\.json; store sqlite, control API on 127\.0\.0\.1:8080\)\n$/);
    expect(ok.stderr).toBe('');
    const replicas = await runCli(['config', '--check', '--config', 'redis-replicas'], { PORTKEY_API_KEY: 'pk-x', RUNWATCH_CONTROL_TOKEN: 't', RUNWATCH_REDIS_URL: 'redis://127.0.0.1:6379' });
    expect(replicas.code).toBe(0);
    expect((await runCli(['config', '--check'], { PORTKEY_API_KEY: 'pk-x' })).stdout).toBe('runwatch: config OK (defaults; store sqlite, control API on 127.0.0.1:8080)\n');
  });

  it('config --check: exit 64 listing every problem, of the settings and of the secrets they need', async () => {
    const result = await runCli(['config', '--check', '--config', 'redis-replicas', '--port', '99999', '--set', 'daemon.nope=1', '--set', 'sinks.webhook.url="ftp://x"'], { PORTKEY_API_KEY: 'pk-x' });
    expect(result.code).toBe(64);
    expect(result.stdout).toBe('');
    const lines = result.stderr.trim().split('\n');
    expect(lines).toEqual([
      'runwatch: unknown setting daemon.nope (from --daemon.nope); see config/default.json',
      expect.stringMatching(/^runwatch: invalid config\.daemon\.port: .*\(got 99999\)$/),
      'runwatch: invalid config.sinks.webhook.url: must be an http(s) URL (got "ftp://x")',
      expect.stringMatching(/^runwatch: 3 problems in the configuration \(.*redis-replicas\.json\): fix each as its line says/),
    ]);
    const secrets = await runCli(['config', '--check', '--config', 'redis-replicas'], { RUNWATCH_WEBHOOK_SECRET: 'whsec_x' });
    expect(secrets.code).toBe(64);
    expect(secrets.stderr).toContain('runwatch: invalid webhook secret');
    expect(secrets.stderr).toContain('runwatch: missing API key: set PORTKEY_API_KEY');
    expect(secrets.stderr).toContain('runwatch: refusing to listen on 0.0.0.0 without a token: set RUNWATCH_CONTROL_TOKEN');
    expect(secrets.stderr).toContain('runwatch: store.kind is redis but RUNWATCH_REDIS_URL is not set');
    expect(secrets.stderr).toContain('runwatch: sinks.redisStream is enabled but RUNWATCH_REDIS_URL is not set');
    expect(secrets.stderr).toMatch(/runwatch: 5 problems in the configuration/);
    expect(secrets.stderr).not.toContain('whsec_x');
    const missing = await runCli(['config', '--check', '--config', 'nope']);
    expect(missing.code).toBe(64);
    expect(missing.stderr).toMatch(/^runwatch: config file nope not found in .*: pass a path, or one of the shipped configs \(default, redis-replicas, sqlite-service\)$/m);
  });

  it('--config default works from the daemon, and --check belongs to config only', async () => {
    const printed = await runCli(['config', '--config', 'default'], { PORTKEY_API_KEY: 'pk-x' });
    expect(printed.code).toBe(0);
    expect(JSON.parse(printed.stdout)).toMatchObject({ daemon: DEFAULT_CONFIG.daemon, sinks: { file: { path: null } } });
    const check = await runCli(['daemon', '--check'], { PORTKEY_API_KEY: 'pk-x' });
    expect(check.code).toBe(64);
    expect(check.stderr).toBe('runwatch: --check applies to runwatch config: run runwatch config --check\n');
  });
});
