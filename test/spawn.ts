import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import { createInterface } from 'node:readline';
import type { WatchEvent } from '../src/events.js';

/** The built CLI, spawned with the same node that runs the tests. */
export const CLI = path.join(import.meta.dirname, '..', 'dist', 'cli.js');

/** What a finished CLI process left behind. */
export interface CliResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  /** stdout parsed as NDJSON events. */
  readonly events: WatchEvent[];
}

/** A running CLI process: its events as they come, and its end. */
export interface CliProcess {
  readonly child: ChildProcess;
  /** Resolves when a stdout line satisfies `predicate`. */
  waitForLine(predicate: (line: string) => boolean): Promise<string>;
  /** Resolves when the process exits. */
  readonly done: Promise<CliResult>;
}

/** Environment for the CLI: nothing from the test runner's env but PATH, plus `env`. */
export function cliEnv(env: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH ?? '', ...env };
}

/** Starts `runwatch <args>`. */
export function startCli(args: readonly string[], env: Record<string, string> = {}): CliProcess {
  const child = spawn(process.execPath, [CLI, ...args], { env: cliEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  const lines: string[] = [];
  const waiters: Array<{ predicate: (line: string) => boolean; resolve: (line: string) => void }> = [];
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  createInterface({ input: child.stdout }).on('line', (line) => {
    stdout += `${line}\n`;
    lines.push(line);
    for (const waiter of [...waiters]) {
      if (waiter.predicate(line)) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(line);
      }
    }
  });
  const done = (async (): Promise<CliResult> => {
    const [code, signal] = (await once(child, 'close')) as [number | null, NodeJS.Signals | null];
    const events = stdout
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as WatchEvent);
    return { code, signal, stdout, stderr, events };
  })();
  return {
    child,
    done,
    waitForLine: (predicate) => {
      const found = lines.find(predicate);
      if (found !== undefined) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        waiters.push({ predicate, resolve });
        void done.then(() => reject(new Error(`process ended before the expected line; stderr: ${stderr}`)));
      });
    },
  };
}

/** Runs `runwatch <args>` to the end. */
export function runCli(args: readonly string[], env: Record<string, string> = {}): Promise<CliResult> {
  return startCli(args, env).done;
}
