// Starts the built `runwatch daemon` in a process of its own for the benches that kill, restart
// or multiply it (takeover, replicas, soak). Needs a build (npm run build).
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import type { Interface } from 'node:readline';

/** The built CLI the benches run. */
export const CLI = path.join(import.meta.dirname, '..', 'dist', 'cli.js');

/** Options of `startDaemon()`. */
export interface BenchDaemonOptions {
  /** `--set` settings, each `path=json`. */
  readonly settings: readonly string[];
  /** The whole environment of the process (PATH is added). */
  readonly env: Readonly<Record<string, string>>;
  /** @default a new temporary directory */
  readonly dataDir?: string;
  /** @default 'info' (the `daemon listening` line is logged at info) */
  readonly logLevel?: string;
  /** Flags for node itself, e.g. `--max-semi-space-size=8` as `npm start` gives. @default [] */
  readonly nodeFlags?: readonly string[];
}

/** A daemon that is listening. */
export interface BenchDaemon {
  readonly child: ChildProcess;
  readonly port: number;
  readonly dataDir: string;
  /** Its stderr (pino JSON), line by line; stays read so the pipe never fills. */
  readonly lines: Interface;
}

/** Spawns `runwatch daemon --port 0` and resolves once it logs `daemon listening`; rejects if it exits first. */
export async function startDaemon(options: BenchDaemonOptions): Promise<BenchDaemon> {
  const dataDir = options.dataDir ?? mkdtempSync(path.join(tmpdir(), 'rw-bench-'));
  const child = spawn(
    process.execPath,
    [...(options.nodeFlags ?? []), CLI, 'daemon', '--port', '0', '--data-dir', dataDir, '--log-level', options.logLevel ?? 'info', ...options.settings.flatMap((s) => ['--set', s])],
    { env: { PATH: process.env.PATH ?? '', ...options.env }, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const lines = createInterface({ input: child.stderr });
  let lastLine = '';
  const port = await new Promise<number>((resolve, reject) => {
    // 'close', not 'exit': the last stderr line (the reason) is read by then
    const onClose = (code: number | null, signal: string | null): void => reject(new Error(`runwatch daemon exited (${signal ?? code}) before listening: ${lastLine}`));
    child.once('close', onClose);
    lines.on('line', (l) => {
      lastLine = l;
      if (!l.includes('daemon listening')) return;
      child.off('close', onClose);
      resolve((JSON.parse(l) as { port: number }).port);
    });
  });
  return { child, port, dataDir, lines };
}
