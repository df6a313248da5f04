import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import type { WatchEvent } from '../src/events.js';
import type { RunningSimulator, SimulatedRun } from '../src/simulator.js';
import { freePort } from './ports.js';
import { CLI, cliEnv, runCli } from './spawn.js';
import { useSimulator } from './sim.js';

const KEY = 'sk-test-tty-4242424242';
const POLICY = JSON.stringify({ jitter: 0, errorBackoff: { baseMs: 100, capMs: 200 } });
let sim: RunningSimulator;
let counter = 0;

useSimulator({ apiKey: KEY }, (started) => (sim = started));

// util-linux `script` runs a command on a pseudo-terminal; Node has no pty of its own
const SCRIPT = spawnSync('script', ['--version'], { encoding: 'utf8' });
const HAS_PTY = SCRIPT.status === 0 && SCRIPT.stdout.includes('util-linux');

/** Adds a run with a fresh id. */
function addRun(timeline: SimulatedRun['timeline']): { threadId: string; runId: string } {
  counter += 1;
  const ids = { threadId: `thread_tty${counter}`, runId: `run_tty${counter}` };
  sim.addRun({ ...ids, timeline, start: 'first_request' });
  return ids;
}

function watchArgs(ids: { threadId: string; runId: string }, flags: string[] = []): string[] {
  return ['watch', ids.threadId, ids.runId, '--provider', 'openai', '--base-url', sim.baseUrl, '--policy', POLICY, ...flags];
}

/** What a terminal showed: the raw bytes, and the lines left on screen once every carriage return and erase was applied. */
interface TtyResult {
  readonly code: number | null;
  readonly raw: string;
  readonly screen: string[];
}

// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;?]*[A-Za-z]/g;
// eslint-disable-next-line no-control-regex
const SGR = /\x1b\[[0-9;]*m/;

/** The lines a terminal keeps: after the last carriage return of each line, without escape sequences. */
function screenOf(raw: string): string[] {
  return raw
    .split('\n')
    .map((line) => (line.replace(/\r$/, '').split('\r').at(-1) ?? '').replace(ANSI, ''))
    .filter((line) => line !== '');
}

const quote = (arg: string): string => `'${arg.replaceAll("'", "'\\''")}'`;

/** Runs `runwatch <args>` on a pseudo-terminal: stdout and stderr are both the terminal. */
async function runOnTty(args: readonly string[], env: Record<string, string> = {}): Promise<TtyResult> {
  const command = [process.execPath, CLI, ...args].map(quote).join(' ');
  const child = spawn('script', ['-qfec', command, '/dev/null'], { env: cliEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  let raw = '';
  child.stdout.on('data', (chunk: Buffer) => (raw += chunk.toString()));
  const [code] = (await once(child, 'close')) as [number | null];
  return { code, raw, screen: screenOf(raw) };
}

/** The pretty event lines on screen: `[seq, what happened]`. */
function prettyEvents(screen: readonly string[], id: string): Array<[number, string]> {
  return screen.flatMap((line) => {
    const match = new RegExp(`^\\d\\d:\\d\\d:\\d\\d\\.\\d{3}  ${id}  #(\\d+)  (.*)$`).exec(line);
    return match ? [[Number(match[1]), match[2]!] as [number, string]] : [];
  });
}

const TIMELINE: SimulatedRun['timeline'] = [{ status: 'queued', durationMs: 250 }, { status: 'in_progress', durationMs: 1000 }, { status: 'completed' }];

describe.skipIf(!HAS_PTY)('runwatch watch on a terminal (skipped without util-linux script, which gives it a pseudo-terminal)', () => {
  it('prints one readable line per event, coloured, with single-line logs and a status line erased before every other line', async () => {
    const ids = addRun(TIMELINE);
    const result = await runOnTty(watchArgs(ids), { OPENAI_API_KEY: KEY });
    expect(result.code, result.raw).toBe(0);
    expect(prettyEvents(result.screen, ids.runId)).toEqual([
      [1, 'queued'],
      [2, 'queued -> in_progress'],
      [3, 'in_progress -> completed'],
    ]);
    expect(result.screen.filter((line) => line.startsWith('{'))).toEqual([]);
    expect(result.raw).toContain('\x1b[32mcompleted\x1b[39m');
    // the status line was drawn in place ...
    // eslint-disable-next-line no-control-regex
    expect(result.raw).toMatch(/\r\x1b\[2K\x1b\[2m(waiting for the first answer|queued|in_progress) {2}\d+s elapsed, \d+ polls?, /);
    // ... and erased every time: it is on no line left on screen
    expect(result.screen.filter((line) => line.includes(' elapsed, '))).toEqual([]);
    // logs: one line each, fields included
    expect(result.screen.some((line) => /^\[\d\d:\d\d:\d\d\.\d{3}\] INFO: status changed \{.*"to":"completed"/.test(line))).toBe(true);
    expect(result.screen.some((line) => /^\s+\w+: /.test(line))).toBe(false);
  });

  it('prints NDJSON with --output ndjson', async () => {
    const ids = addRun([{ status: 'queued', durationMs: 250 }, { status: 'completed' }]);
    const result = await runOnTty(watchArgs(ids, ['--output', 'ndjson']), { OPENAI_API_KEY: KEY });
    expect(result.code, result.raw).toBe(0);
    const events = result.screen.filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as WatchEvent);
    expect(events.map((event) => [event.type, event.seq])).toEqual([
      ['run.queued', 1],
      ['run.completed', 2],
    ]);
    expect(prettyEvents(result.screen, ids.runId)).toEqual([]);
  });

  it('shows no status line and no info logs with --quiet, and no colours with NO_COLOR', async () => {
    const ids = addRun(TIMELINE);
    const result = await runOnTty(watchArgs(ids, ['--quiet']), { OPENAI_API_KEY: KEY, NO_COLOR: '1' });
    expect(result.code, result.raw).toBe(0);
    expect(prettyEvents(result.screen, ids.runId).map(([seq]) => seq)).toEqual([1, 2, 3]);
    expect(result.raw).not.toContain('\x1b[2K');
    expect(result.raw).not.toContain('elapsed');
    expect(result.raw).not.toContain('INFO');
    expect(result.raw).not.toMatch(SGR);
  });

  it('keeps the status line but drops every colour with NO_COLOR', async () => {
    const ids = addRun([{ status: 'queued', durationMs: 250 }, { status: 'completed' }]);
    const result = await runOnTty(watchArgs(ids), { OPENAI_API_KEY: KEY, NO_COLOR: '1' });
    expect(result.code, result.raw).toBe(0);
    expect(prettyEvents(result.screen, ids.runId)).toEqual([
      [1, 'queued'],
      [2, 'queued -> completed'],
    ]);
    expect(result.raw).toContain('\r\x1b[2K');
    expect(result.raw).not.toMatch(SGR);
  });

  it('prints background responses and the thread guard the same way', async () => {
    counter += 1;
    const responseId = `resp_tty${counter}`;
    sim.addResponse({ responseId, timeline: [{ status: 'in_progress', durationMs: 250 }, { status: 'completed' }], start: 'first_request' });
    const response = await runOnTty(['watch-response', responseId, '--provider', 'openai', '--base-url', sim.baseUrl, '--policy', POLICY, '--quiet'], { OPENAI_API_KEY: KEY });
    expect(response.code, response.raw).toBe(0);
    expect(prettyEvents(response.screen, responseId)).toEqual([
      [1, 'in_progress'],
      [2, 'in_progress -> completed'],
    ]);
    const ids = addRun([{ status: 'completed' }]);
    // the run ends on the thread's first look at it
    await runCli(watchArgs(ids, ['--quiet']), { OPENAI_API_KEY: KEY });
    const thread = await runOnTty(['wait-thread', ids.threadId, '--provider', 'openai', '--base-url', sim.baseUrl, '--quiet'], { OPENAI_API_KEY: KEY });
    expect(thread.code, thread.raw).toBe(0);
    expect(prettyEvents(thread.screen, ids.threadId)).toEqual([[1, `idle  latest run ${ids.runId} completed`]]);
  });

  it('says once that the server cannot be reached, keeps polling, and names the error in the final hint', async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}/v1`;
    const result = await runOnTty(['watch', 'thread_a', 'run_a', '--provider', 'openai', '--base-url', url, '--policy', POLICY, '--timeout', '1500ms'], { OPENAI_API_KEY: KEY });
    expect(result.code, result.raw).toBe(2);
    const notices = result.screen.filter((line) => line.includes('cannot reach'));
    expect(notices).toHaveLength(1);
    expect(notices[0]).toContain(`WARN: cannot reach ${url} (ECONNREFUSED); still retrying until the deadline: check --base-url`);
    // several polls were made after the notice, as the status line counted them
    const polls = [...result.raw.matchAll(/elapsed, (\d+) polls?/g)].map((match) => Number(match[1]));
    expect(Math.max(...polls)).toBeGreaterThanOrEqual(3);
    expect(result.screen.at(-1)).toMatch(new RegExp(`^runwatch: deadline exceeded .*\\(deadline_exceeded\\); the last poll to ${url.replaceAll('.', '\\.')} failed with ECONNREFUSED: check --base-url`));
    expect(result.raw).not.toContain('raise --timeout');
  });
});

describe('runwatch watch on pipes', () => {
  it('writes the NDJSON events byte for byte, JSON logs, and no escape sequence', async () => {
    const ids = addRun(TIMELINE);
    const result = await runCli(watchArgs(ids), { OPENAI_API_KEY: KEY });
    expect(result.code, result.stderr).toBe(0);
    expect(result.events.map((event) => event.type)).toEqual(['run.queued', 'run.in_progress', 'run.completed']);
    expect(result.stdout).toBe(result.events.map((event) => `${JSON.stringify(event)}\n`).join(''));
    expect(result.stdout + result.stderr).not.toContain('\x1b');
    expect(result.stderr).not.toContain('elapsed');
    for (const line of result.stderr.trim().split('\n')) expect(() => JSON.parse(line) as unknown, line).not.toThrow();
  });

  it('writes pretty lines without colours or status line with --output pretty', async () => {
    const ids = addRun([{ status: 'queued', durationMs: 250 }, { status: 'completed' }]);
    const result = await runCli(watchArgs(ids, ['--output', 'pretty']), { OPENAI_API_KEY: KEY });
    expect(result.code, result.stderr).toBe(0);
    expect(prettyEvents(result.stdout.trim().split('\n'), ids.runId)).toEqual([
      [1, 'queued'],
      [2, 'queued -> completed'],
    ]);
    expect(result.stdout + result.stderr).not.toContain('\x1b');
  });

  it('logs the unreachable server once, as JSON with the URL, and hints at it after the deadline', async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}/v1`;
    const result = await runCli(['watch', 'thread_a', 'run_a', '--provider', 'openai', '--base-url', url, '--policy', POLICY, '--timeout', '1500ms'], { OPENAI_API_KEY: KEY });
    expect(result.code).toBe(2);
    const logs = result.stderr
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as { level: number; msg: string; url?: string; code?: string });
    expect(logs.filter((log) => log.msg.startsWith('cannot reach'))).toEqual([
      expect.objectContaining({ level: 40, url, code: 'ECONNREFUSED', msg: `cannot reach ${url} (ECONNREFUSED); still retrying until the deadline: check --base-url (host and port) and that the server is running` }),
    ]);
    expect(result.stderr).toMatch(/^runwatch: deadline exceeded .*; the last poll to http:\/\/127\.0\.0\.1:\d+\/v1 failed with ECONNREFUSED: check --base-url/m);
    expect(result.events.map((event) => event.type)).toEqual(['watch.error']);
  });

  it('documents --output and --quiet in the help of the three commands', async () => {
    const help = await runCli(['watch', '--help']);
    expect(help.stdout).toContain('--output pretty|ndjson');
    expect(help.stdout).toContain('-q, --quiet');
    for (const command of ['watch-response', 'wait-thread']) expect((await runCli([command, '--help'])).stdout).toContain('--output, --quiet');
  });

  it('rejects an unknown --output with exit 64', async () => {
    const result = await runCli(['watch', 'thread_a', 'run_a', '--output', 'json']);
    expect(result.code).toBe(64);
    expect(result.stderr).toBe('runwatch: invalid --output "json": use pretty or ndjson\n');
  });
});
