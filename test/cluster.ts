import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { freePort } from './ports.js';

/** A local Redis Cluster of masters on loopback, started by a test. */
export interface LocalCluster {
  /** The nodes' ports. */
  readonly ports: readonly number[];
  /** `redis://127.0.0.1:<port>` of every node, comma-separated: a `RUNWATCH_REDIS_URL`. */
  readonly url: string;
  /** Kills the nodes and removes their files. */
  stop(): Promise<void>;
}

/** True when `redis-server` and `redis-cli` are on PATH; else says so once and the cluster tests skip (under CI it throws: .ci/run installs them). */
export function requireClusterTools(): boolean {
  const found = ['redis-server', 'redis-cli'].every((tool) => spawnSync(tool, ['--version']).status === 0);
  if (!found && process.env.CI) throw new Error('redis-server and redis-cli are needed for the Redis Cluster tests; .ci/run should have installed them');
  if (!found) process.stderr.write('note: Redis Cluster tests skipped, redis-server or redis-cli is not on PATH\n');
  return found;
}

/** Waits until a node's log says it accepts connections; rejects when it exits first. */
async function untilListening(child: ChildProcess): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    let out = '';
    const onData = (chunk: Buffer): void => {
      out += chunk.toString();
      if (out.includes('Ready to accept connections')) {
        child.stdout!.off('data', onData);
        child.off('exit', onExit);
        resolve();
      }
    };
    const onExit = (code: number | null): void => reject(new Error(`redis-server exited (${code}): ${out.slice(-500)}`));
    child.stdout!.on('data', onData);
    child.once('exit', onExit);
  });
}

/** Waits until every node says `cluster_state:ok` and knows every slot (asks each 20 times a second, up to 20 s). */
async function untilClusterOk(ports: readonly number[]): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (const port of ports) {
    const redis = new Redis(port, '127.0.0.1');
    try {
      for (;;) {
        const info = await redis.cluster('INFO');
        if (/cluster_state:ok/.test(info) && /cluster_slots_ok:16384/.test(info)) break;
        if (Date.now() > deadline) throw new Error(`the cluster node on ${port} is not ok: ${info}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    } finally {
      redis.disconnect();
    }
  }
}

/**
 * Starts a Redis Cluster of `nodes` masters (no replicas) on loopback: `redis-server` processes
 * on free ports (the cluster bus on a second free port, `cluster-port`), joined by
 * `redis-cli --cluster create`, resolved once every node says `cluster_state:ok`.
 */
export async function startCluster(nodes = 3): Promise<LocalCluster> {
  const dir = mkdtempSync(path.join(tmpdir(), 'rw-cluster-'));
  const children: ChildProcess[] = [];
  const stop = async (): Promise<void> => {
    await Promise.all(
      children.map(async (child) => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        const exited = once(child, 'exit');
        child.kill('SIGKILL');
        await exited;
      }),
    );
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const ports: number[] = [];
    for (let i = 0; i < nodes; i += 1) {
      const port = await freePort();
      const busPort = await freePort();
      const args = ['--port', String(port), '--cluster-port', String(busPort), '--bind', '127.0.0.1', '--cluster-enabled', 'yes', '--cluster-config-file', path.join(dir, `nodes-${port}.conf`), '--dir', dir, '--save', '', '--appendonly', 'no', '--daemonize', 'no'];
      const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
      children.push(child);
      await untilListening(child);
      ports.push(port);
    }
    const create = spawnSync('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes'], { encoding: 'utf8', timeout: 30_000 });
    if (create.status !== 0) throw new Error(`redis-cli --cluster create failed: ${create.stdout}${create.stderr}`);
    await untilClusterOk(ports);
    return { ports, url: ports.map((p) => `redis://127.0.0.1:${p}`).join(','), stop };
  } catch (error) {
    await stop();
    throw error;
  }
}
