import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { DEFAULT_CONFIG } from '../src/daemon/config.js';
import { HARD_STOP_MARGIN_MS } from '../src/daemon/daemon.js';

// the image is built and run by scripts/image-smoke.sh where podman is (.ci/run); this checks the Dockerfile's shape
const root = path.join(import.meta.dirname, '..');
const dockerfile = readFileSync(path.join(root, 'Dockerfile'), 'utf8');
const stages = dockerfile.split(/^FROM /m).slice(1);
const runtime = stages.at(-1) ?? '';

describe('Dockerfile', () => {
  it('builds in one stage and runs on node:24-slim in another', () => {
    expect(stages).toHaveLength(2);
    expect(stages[0]).toMatch(/^node:24-slim AS build/);
    expect(runtime).toMatch(/^node:24-slim\n/);
    expect(stages[0]).toContain('npm prune --omit=dev');
  });

  it('runs the daemon as a non-root user with a data volume, a health check and SIGTERM', () => {
    expect(runtime).toMatch(/^USER node$/m);
    expect(runtime).toMatch(/^VOLUME \["\/data"\]$/m);
    expect(runtime).toMatch(/^EXPOSE 8080$/m);
    expect(runtime).toMatch(/^STOPSIGNAL SIGTERM$/m);
    // --import: the stop signals are caught before the CLI's modules load (node is PID 1)
    expect(runtime).toMatch(/^CMD \["node", "--max-semi-space-size=8", "--import", "\.\/dist\/early-signals\.js", "dist\/cli\.js", "daemon"\]$/m);
    expect(existsSync(path.join(root, 'src', 'early-signals.ts'))).toBe(true);
    expect(runtime).toMatch(/RUNWATCH_HOST=0\.0\.0\.0/);
  });

  it('checks health with runwatch healthcheck, which reads the port as the daemon does, within its timeout', () => {
    const check = /^HEALTHCHECK (.*) \\\n\s+CMD \["node", "dist\/cli\.js", "healthcheck", "--timeout", "(\d+)s"\]$/m.exec(runtime);
    expect(check).not.toBeNull();
    const dockerTimeout = /--timeout=(\d+)s/.exec(check![1]!);
    expect(Number(check![2])).toBeLessThan(Number(dockerTimeout![1]));
    // the port is the default: an ENV here would override a config file's
    expect(runtime).not.toMatch(/RUNWATCH_PORT=/);
    expect(DEFAULT_CONFIG.daemon.port).toBe(8080);
  });

  it('stops within Docker\'s default 10 s grace: the shutdown timeout and its hard stop end before the SIGKILL', () => {
    expect(DEFAULT_CONFIG.daemon.shutdownTimeoutMs + HARD_STOP_MARGIN_MS).toBeLessThan(10_000);
  });

  it('copies no sources, tests or dev dependencies into the runtime image', () => {
    const copies = runtime.split('\n').filter((line) => line.startsWith('COPY'));
    expect(copies.every((line) => line.includes('--from=build') || line === 'COPY config ./config')).toBe(true);
    expect(runtime).not.toMatch(/npm (ci|install)/);
    expect(copies.join('\n')).not.toMatch(/src|test/);
  });

  it('keeps local clutter out of the build context', () => {
    const ignored = readFileSync(path.join(root, '.dockerignore'), 'utf8').split('\n');
    for (const entry of ['node_modules', 'dist', '.cache', '.git', 'data']) expect(ignored).toContain(entry);
  });
});
