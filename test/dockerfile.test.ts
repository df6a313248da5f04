import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

// no Docker engine runs here: check the Dockerfile's shape instead of building it
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
    expect(runtime).toMatch(/^HEALTHCHECK .*\n.*\/healthz/m);
    expect(runtime).toMatch(/^STOPSIGNAL SIGTERM$/m);
    expect(runtime).toMatch(/^CMD \["node", "--max-semi-space-size=8", "dist\/cli.js", "daemon"\]$/m);
    expect(runtime).toMatch(/RUNWATCH_HOST=0\.0\.0\.0/);
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
