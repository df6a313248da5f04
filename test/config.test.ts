import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parsePolicyArgument } from '../src/config.js';
import { checkConfig, DEFAULT_CONFIG, fileSinkPath, loadConfig, PACKAGE_CONFIG_DIR, packageConfigNames, printableConfig, redactUrl, resolveConfigFile } from '../src/daemon/config.js';
import { createSinks } from '../src/daemon/daemon.js';
import type { WatchEvent } from '../src/events.js';
import { credentialsFromEnv, readSecret } from '../src/credentials.js';
import { parseDurationMs } from '../src/duration.js';
import { ConfigError } from '../src/errors.js';
import { DEFAULT_BUDGET } from '../src/budget.js';
import { DEFAULT_AZURE_API_VERSION, DEFAULT_CLIENT } from '../src/client.js';
import { DEFAULT_DEADLINES, DEFAULT_POLL_POLICY, resolvePollPolicy } from '../src/schedule.js';

describe('parseDurationMs', () => {
  it.each([
    ['1500', 1500],
    ['500ms', 500],
    ['30s', 30_000],
    ['1.5s', 1500],
    ['10m', 600_000],
    ['2h', 7_200_000],
  ])('parses %s', (raw, ms) => expect(parseDurationMs('--timeout', raw)).toBe(ms));

  it.each(['', 'soon', '-5s', '0', '10d', '1e3', `${2 ** 31}`])('rejects %j naming the flag', (raw) => {
    expect(() => parseDurationMs('--timeout', raw)).toThrow(/invalid --timeout/);
  });
});

describe('secrets from the environment', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'runwatch-secrets-'));

  it('reads NAME or NAME_FILE, trimming the file', () => {
    const file = path.join(dir, 'key');
    writeFileSync(file, '  sk-from-file \n');
    expect(readSecret({ OPENAI_API_KEY_FILE: file }, 'OPENAI_API_KEY')).toBe('sk-from-file');
    expect(readSecret({ OPENAI_API_KEY: 'sk-direct' }, 'OPENAI_API_KEY')).toBe('sk-direct');
    expect(readSecret({ OPENAI_API_KEY: '' }, 'OPENAI_API_KEY')).toBeUndefined();
  });

  it('rejects an empty file and both forms at once, without printing the secret', () => {
    const empty = path.join(dir, 'empty');
    writeFileSync(empty, '\n');
    expect(() => readSecret({ OPENAI_API_KEY_FILE: empty }, 'OPENAI_API_KEY')).toThrow('is empty');
    let message = '';
    try {
      readSecret({ OPENAI_API_KEY: 'sk-should-not-print', OPENAI_API_KEY_FILE: empty }, 'OPENAI_API_KEY');
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toContain('keep one');
    expect(message).not.toContain('sk-should-not-print');
  });

  it('requires a key only for the hosted APIs', () => {
    expect(() => credentialsFromEnv('portkey', 'https://api.portkey.ai/v1', {})).toThrow(ConfigError);
    expect(() => credentialsFromEnv('openai', 'https://api.openai.com/v1/', {})).toThrow('OPENAI_API_KEY');
    expect(credentialsFromEnv('portkey', 'http://gateway.internal:8787/v1', { PORTKEY_CONFIG: '{"provider":"openai"}' })).toEqual({
      apiKey: undefined,
      virtualKey: undefined,
      portkeyConfig: '{"provider":"openai"}',
    });
  });
});

describe('parsePolicyArgument', () => {
  it('accepts JSON and @file', () => {
    expect(parsePolicyArgument('{"jitter":0.5,"intervals":{"queued":{"capMs":2000}}}')).toEqual({ jitter: 0.5, intervals: { queued: { capMs: 2000 } } });
    const file = path.join(mkdtempSync(path.join(tmpdir(), 'runwatch-policy-')), 'policy.json');
    writeFileSync(file, '{"growth":2}');
    expect(parsePolicyArgument(`@${file}`)).toEqual({ growth: 2 });
  });

  it('names the bad field', () => {
    expect(() => parsePolicyArgument('nope')).toThrow('not JSON');
    expect(() => parsePolicyArgument('{"growth":"fast"}')).toThrow('--policy.growth');
    expect(() => parsePolicyArgument('{"errorBackoff":{"capMs":1,"baseMs":5}}')).toThrow('errorBackoff.capMs');
    expect(() => parsePolicyArgument('@/nonexistent/policy.json')).toThrow('ENOENT');
    expect(() => parsePolicyArgument('{"jitter":2}')).toThrow('invalid --policy.jitter: expected a number from 0 to 1 (got 2)');
    expect(() => parsePolicyArgument('{"errorBackoff":{"jiter":1}}')).toThrow('invalid --policy.errorBackoff.jiter: unknown setting');
  });

  it('accepts errorBackoff.jitter, as documented', () => {
    expect(parsePolicyArgument('{"errorBackoff":{"jitter":0.5}}')).toEqual({ errorBackoff: { jitter: 0.5 } });
    expect(() => parsePolicyArgument('{"errorBackoff":{"jitter":1.5}}')).toThrow('--policy.errorBackoff.jitter');
  });
});

describe('config/default.json', () => {
  it('documents exactly the defaults the code uses', () => {
    const text = readFileSync(path.join(import.meta.dirname, '..', 'config', 'default.json'), 'utf8');
    expect(JSON.parse(text)).toEqual(DEFAULT_CONFIG);
    expect(text, 'npm run config:defaults writes it').toBe(`${JSON.stringify(DEFAULT_CONFIG, null, 2)}\n`);
    expect(DEFAULT_CONFIG.watch).toEqual({ ...DEFAULT_CLIENT, baseUrl: null, maxResponseBytes: null, portkeyProvider: null, apiVersion: DEFAULT_AZURE_API_VERSION, ...DEFAULT_DEADLINES, ...DEFAULT_BUDGET, burst: null, policy: DEFAULT_POLL_POLICY });
  });
});

describe('README: every documented setting', () => {
  const readme = readFileSync(path.join(import.meta.dirname, '..', 'README.md'), 'utf8').split('\n');

  /** The lines under a heading, up to the next heading of the same or a higher level. */
  function section(heading: string): string[] {
    const start = readme.indexOf(heading);
    const level = heading.indexOf(' ');
    const end = readme.findIndex((line, i) => i > start && /^#+ /.test(line) && line.indexOf(' ') <= level);
    expect(start, heading).toBeGreaterThanOrEqual(0);
    return readme.slice(start + 1, end === -1 ? undefined : end);
  }

  /** The body rows, as trimmed cells, of the first table in `lines` whose header row starts with `header`. */
  function rows(lines: string[], header: string): string[][] {
    const start = lines.findIndex((line) => line.startsWith(header));
    expect(start, header).toBeGreaterThanOrEqual(0);
    const body = lines.slice(start + 2);
    const end = body.findIndex((line) => !line.startsWith('|'));
    return body.slice(0, end === -1 ? undefined : end).map((line) => line.split('|').slice(1, -1).map((cell) => cell.trim()));
  }

  /** The `code` spans of a cell. */
  function names(cell: string): string[] {
    return [...cell.matchAll(/`([^`]+)`/g)].map((match) => match[1] ?? '');
  }

  /** `a.b.c` / `d` / `e.f` -> a.b.c, a.b.d, e.f: a name without a dot is a sibling of the first. */
  function settingPaths(cell: string): string[] {
    const [first = '', ...rest] = names(cell);
    const parent = first.split('.').slice(0, -1);
    return [first, ...rest.map((name) => (name.includes('.') ? name : [...parent, name].join('.')))];
  }

  function valueAt(root: unknown, dotted: string): unknown {
    return dotted.split('.').reduce<unknown>((node, key) => (node as Record<string, unknown> | undefined)?.[key], root);
  }

  function exists(root: unknown, dotted: string): boolean {
    const keys = dotted.split('.');
    const parent = keys.length > 1 ? valueAt(root, keys.slice(0, -1).join('.')) : root;
    return typeof parent === 'object' && parent !== null && (keys.at(-1) ?? '') in parent;
  }

  /** Paths of the values that are not plain objects (numbers, strings, null, arrays). */
  function leaves(value: unknown, prefix = ''): string[] {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) return [prefix];
    return Object.entries(value).flatMap(([key, child]) => leaves(child, prefix ? `${prefix}.${key}` : key));
  }

  const numberOf = (text: string): number => Number(text.replace(/,/g, ''));
  const reference = section('## Configuration reference');
  const daemonRows = rows(reference, '| setting | default |');
  const daemonPaths = daemonRows.flatMap(([setting = '']) => settingPaths(setting)).filter((setting) => setting !== 'watch.*');

  const policy = section('## Polling policy');
  // status table: intervals.<status>.baseMs / capMs; setting table: a number, or `name` number pairs
  const documentedPolicy = new Map<string, number>();
  for (const [status = '', baseMs = '', capMs = ''] of rows(policy, '| status |')) {
    const name = names(status)[0] ?? '';
    documentedPolicy.set(`intervals.${name}.baseMs`, numberOf(baseMs)).set(`intervals.${name}.capMs`, numberOf(capMs));
  }
  for (const [setting = '', value = ''] of rows(policy, '| setting | default |')) {
    const name = names(setting)[0] ?? '';
    const parts = [...value.matchAll(/`(\w+)` ([\d,.]+)/g)];
    if (parts.length === 0) documentedPolicy.set(name, numberOf(value));
    for (const [, field = '', number = ''] of parts) documentedPolicy.set(`${name}.${field}`, numberOf(number));
  }

  it('finds the tables', () => {
    expect(daemonPaths).toContain('sinks.file.fsyncIntervalMs');
    expect(daemonPaths).toContain('daemon.port');
    expect(documentedPolicy.get('intervals.unknown.capMs')).toBe(30_000);
    expect(documentedPolicy.get('errorBackoff.jitter')).toBe(1);
  });

  it('every daemon setting in the table exists and is accepted with its default', () => {
    for (const setting of daemonPaths) {
      expect(exists(DEFAULT_CONFIG, setting), setting).toBe(true);
      expect(() => loadConfig({ overrides: [[setting, JSON.stringify(valueAt(DEFAULT_CONFIG, setting))]] }), setting).not.toThrow();
    }
  });

  it('the table documents every daemon setting; watch.* are the library options', () => {
    const options = rows(reference, '| option | default |').flatMap(([option = '']) => names(option));
    expect(Object.keys(DEFAULT_CONFIG.watch).filter((key) => !options.includes(key))).toEqual([]);
    expect(leaves(DEFAULT_CONFIG).filter((setting) => !setting.startsWith('watch.') && !daemonPaths.includes(setting))).toEqual([]);
  });

  it('every policy setting in "Polling policy" is the default and is accepted by the library, --policy and the daemon', () => {
    expect([...documentedPolicy.keys()].sort()).toEqual(leaves(DEFAULT_POLL_POLICY).sort());
    for (const [setting, value] of documentedPolicy) {
      expect(valueAt(DEFAULT_POLL_POLICY, setting), setting).toBe(value);
      const override = setting.split('.').reduceRight<unknown>((inner, key) => ({ [key]: inner }), value) as Record<string, unknown>;
      expect(valueAt(resolvePollPolicy(override), setting), setting).toBe(value);
      expect(parsePolicyArgument(JSON.stringify(override)), setting).toEqual(override);
      expect(valueAt(loadConfig({ overrides: [[`watch.policy.${setting}`, String(value)]] }).watch.policy, setting), setting).toBe(value);
    }
  });
});

describe('--config NAME: the working directory, then the package', () => {
  const cwd = mkdtempSync(path.join(tmpdir(), 'runwatch-cwd-'));

  it('finds a bare name and name.json in the package config/ folder from any directory', () => {
    expect(resolveConfigFile('default', cwd)).toBe(path.join(PACKAGE_CONFIG_DIR, 'default.json'));
    expect(resolveConfigFile('sqlite-service.json', cwd)).toBe(path.join(PACKAGE_CONFIG_DIR, 'sqlite-service.json'));
    expect(PACKAGE_CONFIG_DIR).toBe(path.join(import.meta.dirname, '..', 'config'));
    expect(packageConfigNames()).toEqual(['default', 'redis-replicas', 'sqlite-service']);
  });

  it('prefers the working directory: the name as given, then its config/ folder', () => {
    mkdirSync(path.join(cwd, 'config'), { recursive: true });
    writeFileSync(path.join(cwd, 'config', 'default.json'), '{}');
    expect(resolveConfigFile('default', cwd)).toBe(path.join(cwd, 'config', 'default.json'));
    writeFileSync(path.join(cwd, 'default'), '{}');
    expect(resolveConfigFile('default', cwd)).toBe(path.join(cwd, 'default'));
  });

  it('says where it looked and what ships when a bare name is nowhere; a path is read as given', () => {
    expect(() => resolveConfigFile('nope', cwd)).toThrow(ConfigError);
    expect(() => resolveConfigFile('nope', cwd)).toThrow(`config file nope not found in ${cwd}, ${path.join(cwd, 'config')}, ${PACKAGE_CONFIG_DIR}: pass a path, or one of the shipped configs (default, redis-replicas, sqlite-service)`);
    expect(resolveConfigFile('./nope', cwd)).toBe(path.join(cwd, 'nope'));
  });

  it('loads the default config by name, equal to the defaults', () => {
    expect(loadConfig({ file: 'default' })).toEqual(DEFAULT_CONFIG);
    expect(loadConfig({ env: { RUNWATCH_CONFIG: 'default' } })).toEqual(DEFAULT_CONFIG);
  });
});

describe('shipped example configs', () => {
  it('sqlite-service: one SQLite daemon with a webhook and a file sink under the data dir', () => {
    const { config, problems } = checkConfig({ file: 'sqlite-service' });
    expect(problems).toEqual([]);
    expect(config?.store.kind).toBe('sqlite');
    expect(config?.sinks).toMatchObject({ stdout: { enabled: false }, file: { enabled: true, path: null }, webhook: { url: 'https://hooks.example.com/runwatch' } });
    expect(config && fileSinkPath(config)).toBe(path.join('data', 'events.ndjson'));
  });

  it('redis-replicas: the Redis store, partitions shared evenly by three replicas, a quicker takeover', () => {
    const { config, problems } = checkConfig({ file: 'redis-replicas' });
    expect(problems).toEqual([]);
    expect(config?.store).toMatchObject({ kind: 'redis', partitions: 12, lockDurationMs: 5000, stalledIntervalMs: 2000 });
    expect((config?.store.partitions ?? 0) % 3).toBe(0);
    expect(config?.daemon.host).toBe('0.0.0.0');
  });
});

describe('the file sink writes under the data dir by default', () => {
  it('sinks.file.path null is <daemon.dataDir>/events.ndjson; a path given is used as it is', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'runwatch-filesink-'));
    expect(DEFAULT_CONFIG.sinks.file.path).toBeNull();
    const config = loadConfig({ overrides: [['sinks.file.enabled', 'true'], ['sinks.stdout.enabled', 'false'], ['daemon.dataDir', JSON.stringify(dataDir)]] });
    expect(fileSinkPath(config)).toBe(path.join(dataDir, 'events.ndjson'));
    const [sink] = await createSinks(config, { credentials: {} });
    await sink?.deliver({ id: 'evt_1', type: 'run.completed' } as unknown as WatchEvent, { signal: new AbortController().signal });
    await sink?.close?.();
    expect(readFileSync(path.join(dataDir, 'events.ndjson'), 'utf8')).toBe('{"id":"evt_1","type":"run.completed"}\n');
    expect(fileSinkPath(loadConfig({ overrides: [['sinks.file.path', '"/var/log/runwatch.ndjson"']] }))).toBe('/var/log/runwatch.ndjson');
  });
});

describe('checkConfig: every problem, not just the first', () => {
  it('collects unknown settings, bad values and an unreadable file', () => {
    const { config, problems } = checkConfig({
      file: '/nonexistent/runwatch.json',
      env: { RUNWATCH_DAEMON__NOPE: '1', RUNWATCH_PORT: '70000' },
      overrides: [['daemon.logLevel', '"loud"'], ['sinks.webhook.url', '"ftp://x"']],
    });
    expect(config).toBeUndefined();
    expect(problems).toEqual([
      'cannot read config file /nonexistent/runwatch.json: ENOENT',
      'unknown setting daemon.nope (from RUNWATCH_DAEMON__NOPE); see config/default.json',
      expect.stringMatching(/^invalid config\.daemon\.port: .* \(got 70000\)$/),
      expect.stringMatching(/^invalid config\.daemon\.logLevel: .* \(got "loud"\)$/),
      'invalid config.sinks.webhook.url: must be an http(s) URL (got "ftp://x")',
    ]);
  });

  it('gives a setting one problem, however many rules it breaks', () => {
    expect(checkConfig({ overrides: [['sinks.webhook.url', '"hooks.example.com"']] }).problems).toEqual(['invalid config.sinks.webhook.url: Invalid URL (got "hooks.example.com")']);
  });

  it('loadConfig throws the first and counts the others', () => {
    expect(() => loadConfig({ overrides: [['daemon.port', '70000'], ['daemon.logLevel', '"loud"']] })).toThrow(/^invalid config\.daemon\.port: .*\(got 70000\) \(and 1 more: runwatch config --check lists them\)$/);
    expect(() => loadConfig({ overrides: [['daemon.port', '70000']] })).toThrow(/\(got 70000\)$/);
    expect(() => loadConfig({ overrides: [['watch.burst', '0']] })).toThrow(/^invalid config\.watch\.burst: .*\(got 0\)$/);
  });
});

describe('redactUrl', () => {
  it.each([
    ['https://user:pass@hooks.example.com/runwatch', 'https://[REDACTED]@hooks.example.com/runwatch'],
    ['https://tok@hooks.example.com', 'https://[REDACTED]@hooks.example.com'],
    ['https://hooks.example.com/x?token=abc&keep=1', 'https://hooks.example.com/x?token=[REDACTED]&keep=1'],
    ['http://llm:8000/v1?api-key=k1&key=k2&client_secret=s&sig=x&a=b', 'http://llm:8000/v1?api-key=[REDACTED]&key=[REDACTED]&client_secret=[REDACTED]&sig=[REDACTED]&a=b'],
    ['https://u:p@h.example.com:8443/p?Secret=1#access_token=2', 'https://[REDACTED]@h.example.com:8443/p?Secret=[REDACTED]#access_token=[REDACTED]'],
    ['https://hooks.example.com/runwatch', 'https://hooks.example.com/runwatch'],
    ['./data', './data'],
    ['runwatch:events', 'runwatch:events'],
  ])('%s', (url, redacted) => expect(redactUrl(url)).toBe(redacted));

  it('printableConfig redacts every URL in the configuration, module options included', () => {
    const config = loadConfig({
      overrides: [
        ['sinks.webhook.url', '"https://user:pass@hooks.example.com/r?token=abc"'],
        ['watch.baseUrl', '"http://llm.internal:8000/v1?key=k"'],
        ['sinks.modules', '[{"path":"./s.mjs","options":{"endpoint":"https://a:b@x.example.com"}}]'],
      ],
    });
    const printed = JSON.stringify(printableConfig(config));
    expect(printed).not.toMatch(/pass|abc|key=k|a:b/);
    expect(printableConfig(config).sinks.webhook.url).toBe('https://[REDACTED]@hooks.example.com/r?token=[REDACTED]');
    expect(config.sinks.webhook.url).toBe('https://user:pass@hooks.example.com/r?token=abc');
  });
});
