import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parsePolicyArgument } from '../src/config.js';
import { loadConfig } from '../src/daemon/config.js';
import { ConfigError } from '../src/errors.js';
import { parsePollPolicy, pollPolicySchema } from '../src/policy.js';
import { DEFAULT_POLL_POLICY, resolvePollPolicy } from '../src/schedule.js';
import type { PartialPollPolicy } from '../src/schedule.js';

function isDeepFrozen(value: unknown): boolean {
  return typeof value !== 'object' || value === null || (Object.isFrozen(value) && Object.values(value).every(isDeepFrozen));
}

describe('pollPolicySchema', () => {
  it('parses {} to DEFAULT_POLL_POLICY, deep-frozen like it', () => {
    expect(pollPolicySchema.parse({})).toEqual(DEFAULT_POLL_POLICY);
    expect(isDeepFrozen(DEFAULT_POLL_POLICY)).toBe(true);
    expect(isDeepFrozen(resolvePollPolicy({ intervals: { thinking: { baseMs: 300 } } }))).toBe(true);
  });

  it('returns the default itself without overrides (nothing to load or merge)', () => {
    expect(resolvePollPolicy()).toBe(DEFAULT_POLL_POLICY);
    expect(resolvePollPolicy({})).toBe(DEFAULT_POLL_POLICY);
  });

  it('and the library\'s check (resolvePollPolicy, no zod) read the same bounds: same policy, or same message', () => {
    const corpus: unknown[] = [
      { growth: 2 },
      { growth: 0 },
      { growth: 101 },
      { jitter: 1 },
      { jitter: -0.1 },
      { minIntervalMs: 0 },
      { minIntervalMs: Number.NaN },
      { maxRetryAfterMs: 2 ** 31 },
      { maxPollAfterMs: '10' },
      { intervals: { queued: { baseMs: 50 } } },
      { intervals: { queued: { baseMs: 6_000 } } },
      { intervals: { thinking: { baseMs: 300, capMs: 900 } } },
      { intervals: { thinking: { capMs: 100 } } },
      { intervals: { queued: { baseMs: 1_000, jitter: 0 } } },
      { intervals: { queued: 5 } },
      { intervals: [] },
      { errorBackoff: { jitter: 0.25, growth: 3 } },
      { errorBackoff: { capMs: 100 } },
      { errorBackoff: { growth: 0.5 } },
      { errorBackoff: { jiter: 1 } },
      { growht: 2 },
      { intervals: { in_progress: { baseMs: 10_000, capMs: 10_000 } }, jitter: 0 },
      [],
      'fast',
    ];
    const outcome = (parse: (value: unknown) => unknown, value: unknown): unknown => {
      try {
        return { ok: parse(value) };
      } catch (error) {
        return { error: (error as Error).message };
      }
    };
    for (const policy of corpus) expect([policy, outcome((v) => resolvePollPolicy(v as PartialPollPolicy), policy)]).toEqual([policy, outcome(parsePollPolicy, policy)]);
  });

  it('names the field and the value, as the library always did', () => {
    expect(() => parsePollPolicy({ growth: 0 })).toThrow('Expected `growth` to be a number from 1 to 100, got 0');
    expect(() => parsePollPolicy({ errorBackoff: { capMs: 100 } })).toThrow('Expected `errorBackoff.capMs` to be a number from 500 to 2147483647, got 100');
    expect(() => parsePollPolicy({ maxPollAfterMs: Number.POSITIVE_INFINITY })).toThrow('Expected `maxPollAfterMs` to be a number from 0 to 2147483647, got Infinity');
    expect(() => parsePollPolicy({ intervals: { thinking: { capMs: 'soon' } } })).toThrow('Expected `intervals.thinking.capMs` to be a number from 0 to 2147483647, got "soon"');
    expect(() => parsePollPolicy({ intervals: [] })).toThrow('Expected `intervals` to be an object, got []');
    expect(() => parsePollPolicy({ growht: 2 })).toThrow('Unknown polling policy setting `growht`');
  });
});

describe('errorBackoff.jitter (documented in "Polling policy")', () => {
  it('is accepted by the library, --policy and the daemon config, and bounded by all three', () => {
    expect(resolvePollPolicy({ errorBackoff: { jitter: 0.25 } }).errorBackoff).toEqual({ ...DEFAULT_POLL_POLICY.errorBackoff, jitter: 0.25 });
    expect(parsePolicyArgument('{"errorBackoff":{"jitter":0.25}}')).toEqual({ errorBackoff: { jitter: 0.25 } });
    const file = path.join(mkdtempSync(path.join(tmpdir(), 'runwatch-policy-')), 'config.json');
    writeFileSync(file, JSON.stringify({ watch: { policy: { errorBackoff: { jitter: 0.25 } } } }));
    expect(loadConfig({ file }).watch.policy.errorBackoff.jitter).toBe(0.25);
    expect(loadConfig({ env: { RUNWATCH_WATCH__POLICY__ERROR_BACKOFF__JITTER: '0.5' } }).watch.policy.errorBackoff.jitter).toBe(0.5);
    expect(() => resolvePollPolicy({ errorBackoff: { jitter: 2 } })).toThrow(ConfigError);
    expect(() => parsePolicyArgument('{"errorBackoff":{"jitter":2}}')).toThrow('invalid --policy.errorBackoff.jitter');
    expect(() => loadConfig({ overrides: [['watch.policy.errorBackoff.jitter', '2']] })).toThrow('invalid config.watch.policy.errorBackoff.jitter: expected a number from 0 to 1 (got 2)');
  });
});

describe("import 'runwatch-llm'", () => {
  it('does not load zod, not even to check a policy override (zod costs a polling process about 100 MB)', () => {
    const script = `
      import { registerHooks } from 'node:module';
      const urls = [];
      registerHooks({ load(url, context, next) { urls.push(url); return next(url, context); } });
      const { ConfigError, DEFAULT_POLL_POLICY, RunWatcher } = await import('./dist/index.js');
      const zod = () => urls.some((url) => url.includes('/node_modules/zod/'));
      const plain = new RunWatcher();
      const report = { onImport: zod(), defaultPolicy: plain.policy === DEFAULT_POLL_POLICY && !zod() };
      const tuned = new RunWatcher({ policy: { errorBackoff: { jitter: 0.5 } } });
      report.afterOverride = zod();
      report.jitter = tuned.policy.errorBackoff.jitter;
      try { new RunWatcher({ policy: { growth: 0 } }); } catch (error) { report.error = [error instanceof ConfigError, error.message]; }
      await Promise.all([plain.close(), tuned.close()]);
      console.log(JSON.stringify(report));`;
    const output = execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: path.join(import.meta.dirname, '..'), encoding: 'utf8' });
    expect(JSON.parse(output)).toEqual({
      onImport: false,
      defaultPolicy: true,
      afterOverride: false,
      jitter: 0.5,
      error: [true, 'Expected `growth` to be a number from 1 to 100, got 0'],
    });
  });
});
