import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../src/logger.js';

/** A stream that keeps what the logger writes. */
function capture(): { stream: Writable; text: () => string } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer | string, _encoding, done) {
      chunks.push(chunk.toString());
      done();
    },
  });
  return { stream, text: () => chunks.join('') };
}

/** Every secret header the API client sends, each with a value of its own. */
function secretHeaders(tag: string): Record<string, string> {
  return {
    authorization: `Bearer sk-auth-${tag}`,
    'x-portkey-api-key': `pk-api-${tag}`,
    'x-portkey-virtual-key': `vk-virtual-${tag}`,
    'x-portkey-config': `cfg-config-${tag}`,
  };
}

/** Objects a caller may log by mistake: secret headers, credentials and api keys, at the top level and one level down. */
const CASES: ReadonlyArray<readonly [string, Record<string, unknown>]> = [
  ['headers at the top level', { headers: { ...secretHeaders('top'), accept: 'application/json' } }],
  ['headers one level down', { req: { headers: { ...secretHeaders('nested'), accept: 'application/json' } } }],
  ['headers under an error', { err: Object.assign(new Error('HTTP 401'), { headers: secretHeaders('err') }) }],
  ['credentials at the top level', { credentials: { apiKey: 'sk-cred-top', virtualKey: 'vk-cred-top' } }],
  ['credentials one level down', { x: { credentials: { apiKey: 'sk-cred-nested', portkeyConfig: 'cfg-cred-nested' } } }],
  ['apiKey at the top level', { apiKey: 'sk-apikey-top' }],
  ['apiKey one level down', { client: { apiKey: 'sk-apikey-nested' } }],
];

/** Every string value in an object, however deep (error messages aside). */
function secretValues(value: unknown): string[] {
  if (typeof value === 'string') return [value];
  if (value instanceof Error) return secretValues({ ...value });
  if (typeof value !== 'object' || value === null) return [];
  return Object.entries(value).flatMap(([key, v]) => (key === 'accept' ? [] : secretValues(v)));
}

describe('createLogger redaction', () => {
  it.each([false, true])('keeps every secret header, credentials and apiKey out of the log, top level and nested (pretty: %s)', async (pretty) => {
    const out = capture();
    const logger = await createLogger('info', { pretty, destination: out.stream });
    for (const [name, fields] of CASES) logger.info(fields, name);
    logger.flush();
    const text = out.text();
    // every line was written, and the non-secret header with it
    for (const [name] of CASES) expect(text).toContain(name);
    expect(text).toContain('application/json');
    const leaked = CASES.flatMap(([, fields]) => secretValues(fields)).filter((secret) => text.includes(secret));
    expect(leaked).toEqual([]);
  });

  it('replaces each secret with [REDACTED] where it was', async () => {
    const out = capture();
    const logger = await createLogger('info', { pretty: false, destination: out.stream });
    for (const [name, fields] of CASES) logger.info(fields, name);
    const lines = out
      .text()
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as Record<string, Record<string, unknown>>);
    const censored = { authorization: '[REDACTED]', 'x-portkey-api-key': '[REDACTED]', 'x-portkey-virtual-key': '[REDACTED]', 'x-portkey-config': '[REDACTED]' };
    expect(lines[0]).toMatchObject({ msg: 'headers at the top level', headers: { ...censored, accept: 'application/json' } });
    expect(lines[1]).toMatchObject({ msg: 'headers one level down', req: { headers: { ...censored, accept: 'application/json' } } });
    expect(lines[2]).toMatchObject({ msg: 'headers under an error', err: { message: 'HTTP 401', headers: censored } });
    expect(lines[3]).toMatchObject({ credentials: '[REDACTED]' });
    expect(lines[4]).toMatchObject({ x: { credentials: '[REDACTED]' } });
    expect(lines[5]).toMatchObject({ apiKey: '[REDACTED]' });
    expect(lines[6]).toMatchObject({ client: { apiKey: '[REDACTED]' } });
  });
});
