// Slow but needed: packs the project as npm would publish it, installs the tarball into an empty
// project (dependencies from the npm cache, else the registry) and uses it from there, so a
// missing file, a wrong bin or exports map, or a path that only works in a checkout fails here.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { npmEnv } from './spawn.js';

const run = promisify(execFile);
const ROOT = path.join(import.meta.dirname, '..');
const manifest = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { name: string; version: string; bin: Record<string, string> };
const INSTALL_TIMEOUT_MS = 90_000;

interface PackResult {
  readonly filename: string;
  readonly files: ReadonlyArray<{ readonly path: string }>;
}

describe(`the published package (${manifest.name})`, { timeout: INSTALL_TIMEOUT_MS + 30_000 }, () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'runwatch-package-'));
  const app = path.join(dir, 'app');
  let packed: PackResult;

  /** Runs a command in the installed project. */
  const inApp = async (command: string, args: readonly string[]): Promise<string> => (await run(command, args, { cwd: app, env: npmEnv(), timeout: 30_000 })).stdout;

  beforeAll(async () => {
    // dist/ is built by vitest.setup.ts; --ignore-scripts: prepack's rebuild would pull dist/ from under the other tests
    const { stdout } = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], { cwd: ROOT, env: npmEnv(), timeout: 30_000 });
    packed = (JSON.parse(stdout) as PackResult[])[0] as PackResult;
    await run('mkdir', [app]);
    writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'runwatch-package-test', private: true, type: 'module' }));
    await run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error', path.join(dir, packed.filename)], { cwd: app, env: npmEnv(), timeout: INSTALL_TIMEOUT_MS });
  }, INSTALL_TIMEOUT_MS + 30_000);

  it('ships dist/, config/, ui/, README and package.json, and nothing else', () => {
    const files = packed.files.map((file) => file.path).sort();
    const allowed = /^(package\.json|README\.md|LICENSE(\.md)?|config\/[\w-]+\.json|dist\/.+\.(js|d\.ts)|ui\/[\w-]+\.(html|css|js))$/;
    expect(files.filter((file) => !allowed.test(file))).toEqual([]);
    for (const needed of ['dist/cli.js', 'dist/index.js', 'dist/index.d.ts', 'dist/daemon/index.js', 'dist/simulator.js', 'config/default.json', 'config/sqlite-service.json', 'config/redis-replicas.json', 'ui/index.html', 'ui/ui.js', 'ui/ui.css']) {
      expect(files, needed).toContain(needed);
    }
    expect(files.filter((file) => /^(src|test|bench|scripts)\/|\.map$|demo/.test(file))).toEqual([]);
    expect(manifest.bin).toEqual({ runwatch: 'dist/cli.js' });
  });

  it('npx runwatch runs the installed command', async () => {
    expect((await inApp('npx', ['--no-install', 'runwatch', '--version'])).trim()).toBe(manifest.version);
  });

  it('imports the library, the daemon and the simulator entry points', async () => {
    const script = `
      const lib = await import('${manifest.name}');
      const daemon = await import('${manifest.name}/daemon');
      const sim = await import('${manifest.name}/simulator');
      console.log(JSON.stringify([typeof lib.watchRun, typeof lib.RunWatcher, typeof daemon.loadConfig, typeof sim.startSimulator]));`;
    expect(JSON.parse(await inApp(process.execPath, ['--input-type=module', '-e', script]))).toEqual(['function', 'function', 'function', 'function']);
  });

  it('finds the web view\'s files where the installed daemon reads them (../../ui from dist/daemon/)', async () => {
    const script = `
      const { readFileSync } = await import('node:fs');
      const at = new URL('../../ui/', import.meta.resolve('${manifest.name}/daemon'));
      console.log(JSON.stringify(['index.html', 'ui.js', 'ui.css'].map((f) => readFileSync(new URL(f, at), 'utf8').length > 0)));`;
    expect(JSON.parse(await inApp(process.execPath, ['--input-type=module', '-e', script]))).toEqual([true, true, true]);
  });

  it('finds its shipped configs by name from the installed package', async () => {
    const { stdout } = await run('npx', ['--no-install', 'runwatch', 'config', '--check', '--config', 'sqlite-service'], { cwd: app, env: npmEnv({ PORTKEY_API_KEY: 'pk-test' }), timeout: 30_000 });
    expect(stdout).toBe(`runwatch: config OK (${path.join(app, 'node_modules', manifest.name, 'config', 'sqlite-service.json')}; store sqlite, control API on 127.0.0.1:8080)\n`);
  });
});
