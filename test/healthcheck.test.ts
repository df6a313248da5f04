import { mkdtempSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { probeHost } from '../src/healthcheck.js';
import { runCli, startCli } from './spawn.js';
import { freePort } from './ports.js';

// `runwatch healthcheck` reads the configuration as the daemon does; each case gives the daemon
// its port one way and runs the check with the same environment and flags
const dir = mkdtempSync(path.join(tmpdir(), 'runwatch-healthcheck-'));
// a base URL the daemon never calls: no watch is added
const BASE = { RUNWATCH_PROVIDER: 'openai', RUNWATCH_BASE_URL: 'http://127.0.0.1:9/v1', RUNWATCH_STORE: 'memory', RUNWATCH_SINKS__STDOUT__ENABLED: 'false' };

const cases: Array<[string, (port: number) => { env: Record<string, string>; args: string[] }]> = [
  ['RUNWATCH_PORT', (port) => ({ env: { RUNWATCH_PORT: String(port) }, args: [] })],
  // the long form wins over the alias an image may set
  ['RUNWATCH_DAEMON__PORT over RUNWATCH_PORT', (port) => ({ env: { RUNWATCH_PORT: '1', RUNWATCH_DAEMON__PORT: String(port) }, args: [] })],
  [
    'a config file in RUNWATCH_CONFIG',
    (port) => {
      const file = path.join(dir, `env-${port}.json`);
      writeFileSync(file, JSON.stringify({ daemon: { port } }));
      return { env: { RUNWATCH_CONFIG: file }, args: [] };
    },
  ],
  [
    'a config file given with --config',
    (port) => {
      const file = path.join(dir, `flag-${port}.json`);
      writeFileSync(file, JSON.stringify({ daemon: { port } }));
      return { env: {}, args: ['--config', file] };
    },
  ],
  // what the image does: every address, a token; the check goes to loopback
  ['RUNWATCH_HOST=0.0.0.0 with a token file', (port) => {
    const token = path.join(dir, 'token');
    writeFileSync(token, 'secret-token\n');
    return { env: { RUNWATCH_HOST: '0.0.0.0', RUNWATCH_PORT: String(port), RUNWATCH_CONTROL_TOKEN_FILE: token }, args: [] };
  }],
];

describe('runwatch healthcheck', () => {
  const stops: Array<() => void> = [];
  afterAll(() => {
    for (const stop of stops) stop();
  });

  it.each(cases)('finds a daemon whose port comes from %s, and exits 1 once it is gone', async (_, given) => {
    const port = await freePort();
    const { env, args } = given(port);
    const daemon = startCli(['daemon', ...args], { ...BASE, ...env });
    stops.push(() => daemon.child.kill('SIGKILL'));
    await daemon.waitForStderr((line) => line.includes('daemon listening'));

    const healthy = await runCli(['healthcheck', ...args], { ...BASE, ...env });
    expect(healthy.stderr).toBe('');
    expect(healthy.code).toBe(0);
    expect((await runCli(['healthcheck', '--ready', ...args], { ...BASE, ...env })).code).toBe(0);

    daemon.child.kill('SIGTERM');
    expect((await daemon.done).code).toBe(0);
    const started = Date.now();
    const gone = await runCli(['healthcheck', ...args], { ...BASE, ...env });
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(new RegExp(`^runwatch: unhealthy: GET 127\\.0\\.0\\.1:${port}/healthz failed: ECONNREFUSED`, 'm'));
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('gives up after --timeout on a server that never answers', async () => {
    const sockets: net.Socket[] = [];
    const silent = net.createServer((socket) => sockets.push(socket));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const { port } = silent.address() as net.AddressInfo;
    try {
      const started = Date.now();
      const result = await runCli(['healthcheck', '--timeout', '300ms', '--port', String(port)]);
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/unhealthy: GET 127\.0\.0\.1:\d+\/healthz failed: ETIMEDOUT/);
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      for (const socket of sockets) socket.destroy();
      silent.close();
    }
  });

  it('answers 1, never 64, on a bad configuration (Docker reads only 0 and 1)', async () => {
    const result = await runCli(['healthcheck'], { RUNWATCH_PORT: 'eighty' });
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^runwatch: unhealthy: .*daemon\.port/m);
    expect((await runCli(['healthcheck', '--nope'])).code).toBe(1);
  });

  it('probes loopback when the daemon binds every address', () => {
    expect(probeHost('0.0.0.0')).toBe('127.0.0.1');
    expect(probeHost('::')).toBe('::1');
    expect(probeHost('[::]')).toBe('::1');
    expect(probeHost('[::1]')).toBe('::1');
    expect(probeHost('127.0.0.1')).toBe('127.0.0.1');
    expect(probeHost('10.1.2.3')).toBe('10.1.2.3');
  });
});

describe('runwatch daemon: a stop signal during the start', () => {
  it('stops waiting for Redis, closes what it opened and exits 0', async () => {
    const closed = await freePort();
    const daemon = startCli(['daemon', '--port', String(await freePort()), '--log-level', 'debug'], { ...BASE, RUNWATCH_STORE: 'redis', RUNWATCH_REDIS_URL: `redis://127.0.0.1:${closed}` });
    // the start waits up to 10 s for Redis, logging each refused connection at debug
    await daemon.waitForStderr((line) => line.includes('redis connection error'));
    const started = Date.now();
    daemon.child.kill('SIGTERM');
    const result = await daemon.done;
    expect(result.code).toBe(0);
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(result.stderr).toContain('stopped during the start');
    expect(result.stderr).not.toContain('daemon listening');
  });
});
