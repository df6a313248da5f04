import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { CliProcess } from './spawn.js';
import { npmEnv, startProcess } from './spawn.js';

const ROOT = path.join(import.meta.dirname, '..');

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Resolves with the connection error's code: ECONNREFUSED once nothing listens. */
function connectError(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('error', (error: NodeJS.ErrnoException) => resolve(String(error.code)));
  });
}

/**
 * Starts `npm <args>`, waits for the pino line `listening` (it carries the server's pid and
 * port), sends SIGTERM to npm only, and checks that the server went with it.
 */
async function stopsOnSigterm(args: readonly string[], env: Record<string, string>, listening: string): Promise<CliProcess> {
  const npm = startProcess('npm', args, { cwd: ROOT, env: npmEnv(env) });
  let serverPid = 0;
  try {
    const line = await npm.waitForStderr((l) => l.includes(`"msg":"${listening}"`));
    const { pid, port, baseUrl } = JSON.parse(line) as { pid: number; port?: number; baseUrl?: string };
    serverPid = pid;
    const serverPort = port ?? Number(new URL(baseUrl ?? '').port);
    expect(pid).not.toBe(npm.child.pid);
    expect(await connectError(serverPort)).toBe('connected');
    const exited = once(npm.child, 'exit');
    npm.child.kill('SIGTERM');
    // 'exit', not 'close': a server left behind would keep the pipes open
    await exited;
    // npm waits for its child: with the shells exec'd away that child is the server itself
    expect(alive(pid), 'the server outlived npm').toBe(false);
    expect(await connectError(serverPort)).toBe('ECONNREFUSED');
    return npm;
  } finally {
    // a server left behind by a broken script must not outlive the test
    if (serverPid && alive(serverPid)) process.kill(serverPid, 'SIGKILL');
    if (npm.child.exitCode === null) npm.child.kill('SIGKILL');
  }
}

describe('npm scripts pass signals on (slow: real npm processes)', () => {
  it('npm start: SIGTERM to npm stops the daemon gracefully and frees its port', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'runwatch-npm-start-'));
    const env = { RUNWATCH_STORE: 'memory', RUNWATCH_PORT: '0', RUNWATCH_DATA_DIR: dataDir, RUNWATCH_SINKS__STDOUT__ENABLED: 'false', PORTKEY_API_KEY: 'pk-test' };
    const npm = await stopsOnSigterm(['start'], env, 'daemon listening');
    const { stderr } = await npm.done;
    expect(stderr).toContain('"signal":"SIGTERM"');
    expect(stderr).toContain('"msg":"stopped"');
  });

  it('npm run runwatch -- sim: SIGTERM to npm stops the simulator', async () => {
    const npm = await stopsOnSigterm(['run', 'runwatch', '--', 'sim', '--port', '0'], {}, 'simulator listening');
    expect((await npm.done).stderr).toContain('"msg":"simulator stopping"');
  });

  it('does not rebuild a fresh dist/', () => {
    const before = statSync(path.join(ROOT, 'dist', 'cli.js')).mtimeMs;
    const version = execFileSync('npm', ['run', '--silent', 'runwatch', '--', '--version'], { cwd: ROOT, env: npmEnv({}), encoding: 'utf8' });
    expect(version.trim()).toMatch(/^\d+\.\d+\.\d+/);
    expect(statSync(path.join(ROOT, 'dist', 'cli.js')).mtimeMs).toBe(before);
  });
});

describe('scripts/built.sh', () => {
  // a package of its own whose "build" only counts: the real dist/ is in use by other tests
  const dir = mkdtempSync(path.join(tmpdir(), 'runwatch-built-'));
  mkdirSync(path.join(dir, 'scripts'));
  mkdirSync(path.join(dir, 'src'));
  copyFileSync(path.join(ROOT, 'scripts', 'built.sh'), path.join(dir, 'scripts', 'built.sh'));
  writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'built-test', private: true, scripts: { build: 'mkdir -p dist && touch dist/cli.js && echo built >> builds.log' } }));
  for (const file of ['tsconfig.json', 'tsconfig.build.json', 'src/index.ts']) writeFileSync(path.join(dir, file), '{}\n');
  const run = (): string => execFileSync('bash', ['scripts/built.sh', 'echo', 'ran'], { cwd: dir, env: npmEnv({}), encoding: 'utf8' });
  const builds = (): number => readFileSync(path.join(dir, 'builds.log'), 'utf8').split('\n').filter(Boolean).length;

  it('builds when dist/ is missing or older than src/, else only runs the command', () => {
    expect(run()).toBe('ran\n');
    expect(builds()).toBe(1);
    expect(run()).toBe('ran\n');
    expect(builds()).toBe(1);
    const later = new Date(Date.now() + 60_000);
    utimesSync(path.join(dir, 'src', 'index.ts'), later, later);
    expect(run()).toBe('ran\n');
    expect(builds()).toBe(2);
  });
});
