import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parsePolicyArgument } from '../src/config.js';
import { DEFAULT_CONFIG } from '../src/daemon/config.js';
import { credentialsFromEnv, readSecret } from '../src/credentials.js';
import { parseDurationMs } from '../src/duration.js';
import { ConfigError } from '../src/errors.js';
import { DEFAULT_BUDGET } from '../src/budget.js';
import { DEFAULT_AZURE_API_VERSION, DEFAULT_CLIENT } from '../src/client.js';
import { DEFAULT_DEADLINES, DEFAULT_POLL_POLICY } from '../src/schedule.js';

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
    expect(DEFAULT_CONFIG.watch).toEqual({ ...DEFAULT_CLIENT, baseUrl: null, apiVersion: DEFAULT_AZURE_API_VERSION, ...DEFAULT_DEADLINES, ...DEFAULT_BUDGET, policy: DEFAULT_POLL_POLICY });
  });
});
