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
  /** Resolves when a stderr line satisfies `predicate`. */
  waitForStderr(predicate: (line: string) => boolean): Promise<string>;
  /** Resolves when the process exits. */
  readonly done: Promise<CliResult>;
}

/** Environment for the CLI: nothing from the test runner's env but PATH, plus `env`. */
export function cliEnv(env: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH ?? '', ...env };
}

/**
 * Environment for `npm` and `npx`: the test runner's, without what an outer `npm test` or the
 * tests' own settings put there (`npm_*`, `RUNWATCH_*`), this node first on PATH, plus `env`.
 */
export function npmEnv(env: Record<string, string> = {}): NodeJS.ProcessEnv {
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([name]) => !/^(npm_|RUNWATCH_)/i.test(name)));
  return { ...inherited, PATH: `${path.dirname(process.execPath)}${path.delimiter}${process.env.PATH ?? ''}`, ...env };
}

type Waiter = { predicate: (line: string) => boolean; resolve: (line: string) => void };

/** Collects a stream's lines and resolves waiters as matching lines arrive. */
function lineCollector(input: NodeJS.ReadableStream, onLine: (line: string) => void): { lines: string[]; waiters: Waiter[] } {
  const lines: string[] = [];
  const waiters: Waiter[] = [];
  createInterface({ input }).on('line', (line) => {
    onLine(line);
    lines.push(line);
    for (const waiter of [...waiters]) {
      if (waiter.predicate(line)) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(line);
      }
    }
  });
  return { lines, waiters };
}

/** Starts `runwatch <args>`. */
export function startCli(args: readonly string[], env: Record<string, string> = {}): CliProcess {
  return startProcess(process.execPath, [CLI, ...args], { env: cliEnv(env) });
}

/** Starts any command (`npm start`, ...) with its lines and end collected as for the CLI. */
export function startProcess(command: string, args: readonly string[], options: { readonly env: NodeJS.ProcessEnv; readonly cwd?: string }): CliProcess {
  const child = spawn(command, args, { env: options.env, cwd: options.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  const out = lineCollector(child.stdout, (line) => (stdout += `${line}\n`));
  const err = lineCollector(child.stderr, (line) => (stderr += `${line}\n`));
  const done = (async (): Promise<CliResult> => {
    const [code, signal] = (await once(child, 'close')) as [number | null, NodeJS.Signals | null];
    const events = stdout.split('\n').flatMap((line) => {
      try {
        const parsed = JSON.parse(line) as WatchEvent;
        return typeof parsed === 'object' && parsed !== null && 'type' in parsed ? [parsed] : [];
      } catch {
        return [];
      }
    });
    return { code, signal, stdout, stderr, events };
  })();
  const waitFor = (collector: { lines: string[]; waiters: Waiter[] }, predicate: (line: string) => boolean): Promise<string> => {
    const found = collector.lines.find(predicate);
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      collector.waiters.push({ predicate, resolve });
      void done.then(() => reject(new Error(`process ended before the expected line; stderr: ${stderr}`)));
    });
  };
  return {
    child,
    done,
    waitForLine: (predicate) => waitFor(out, predicate),
    waitForStderr: (predicate) => waitFor(err, predicate),
  };
}

/** Runs `runwatch <args>` to the end. */
export function runCli(args: readonly string[], env: Record<string, string> = {}): Promise<CliResult> {
  return startCli(args, env).done;
}
