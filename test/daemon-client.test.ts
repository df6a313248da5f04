import { mkdtempSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { CLIENT_EXIT, DaemonClientError } from '../src/daemon-client.js';
import { RunwatchError } from '../src/errors.js';
import type { WatchEvent } from '../src/events.js';
import type { TimelineStep } from '../src/simulator.js';
import type { TestDaemon } from './daemons.js';
import { FAST_POLICY, useDaemon } from './daemons.js';
import { startProxy } from './proxy.js';
import type { CliProcess, CliResult } from './spawn.js';
import { runCli, startCli } from './spawn.js';
import { readFrames, readSseEvents } from './sse.js';
import { freePort } from './ports.js';

const KEY = 'sk-client-KEY-7d1e9a';
const TOKEN = 'control-token-CLIENT-SECRET-5c3f';
const WRONG_TOKEN = 'wrong-token-NEVER-PRINTED-81b2';
const AUTH = { authorization: `Bearer ${TOKEN}` };
let counter = 0;

/** Fails when a secret shows up in what the CLI printed. */
function expectNoSecrets(result: Pick<CliResult, 'stdout' | 'stderr'>): void {
  for (const secret of [TOKEN, WRONG_TOKEN, KEY]) {
    expect(result.stdout).not.toContain(secret);
    expect(result.stderr).not.toContain(secret);
  }
}

/** stdout as JSON lines. */
function lines(result: CliResult): Array<Record<string, unknown>> {
  return result.stdout
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

/** Adds a run to the daemon's simulator with fresh ids. */
function addRun(t: TestDaemon, timeline: TimelineStep[]): { threadId: string; runId: string } {
  counter += 1;
  const ids = { threadId: `thread_dc${counter}`, runId: `run_dc${counter}` };
  t.sim.addRun({ ...ids, timeline, start: 'first_request' });
  return ids;
}

/** Every event the daemon recorded for a run, read straight from its API, once `done` holds. */
function recorded(t: TestDaemon, runId: string, done: (events: WatchEvent[]) => boolean): Promise<WatchEvent[]> {
  return readSseEvents(`${t.base}/v1/events?run_id=${runId}`, done, AUTH);
}

const ended = (type: string) => (events: WatchEvent[]) => events.some((e) => e.type === type);

/** The events a `runwatch tail` printed. */
function tailed(result: CliResult): WatchEvent[] {
  return lines(result) as unknown as WatchEvent[];
}

/** Listens on `port`, drops each connection at once, and closes after `count` of them: a daemon that is still away. */
async function refuseConnections(port: number, count: number): Promise<void> {
  let seen = 0;
  const server = net.createServer((socket) => {
    socket.destroy();
    seen += 1;
    if (seen === count) server.close();
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  await new Promise((resolve) => server.once('close', resolve));
}

/** Counts stderr lines that announce a reconnection. */
function reconnections(stderr: string): number {
  return stderr.split('\n').filter((line) => line.includes('reconnecting with backoff')).length;
}

describe('daemon client: watches', () => {
  const t = useDaemon('memory', { skip: false, key: KEY, secrets: { controlToken: TOKEN }, settings: () => [['daemon.callbackHosts', '["hooks.example.com"]']] });
  const cli = async (args: string[], env: Record<string, string> = { RUNWATCH_CONTROL_TOKEN: TOKEN }): Promise<CliResult> => {
    const result = await runCli([...args, '--daemon-url', t.base], env);
    expectNoSecrets(result);
    return result;
  };

  it('add, get, ls and rm a run: one JSON line each, exit 0; adding it again shows the same watch', async () => {
    const ids = addRun(t, [{ status: 'queued' }]);
    const added = await cli(['add', ids.threadId, ids.runId, '--metadata', 'ticket=42', '--metadata', 'team=core']);
    expect(added.code, added.stderr).toBe(0);
    expect(lines(added)).toHaveLength(1);
    const watch = lines(added)[0]!;
    expect(watch).toMatchObject({ kind: 'run', thread_id: ids.threadId, run_id: ids.runId, state: 'active', metadata: { ticket: '42', team: 'core' } });
    expect(added.stderr).toBe('');

    const again = await cli(['add', ids.threadId, ids.runId]);
    expect(again.code, again.stderr).toBe(0);
    expect(lines(again)[0]).toMatchObject({ id: watch.id });

    const got = await cli(['get', String(watch.id)]);
    expect(got.code, got.stderr).toBe(0);
    expect(lines(got)).toEqual([expect.objectContaining({ id: watch.id, kind: 'run', run_id: ids.runId })]);

    const listed = await cli(['ls', '--state', 'active']);
    expect(listed.code, listed.stderr).toBe(0);
    expect(lines(listed).map((w) => w.id)).toContain(watch.id);
    expect(lines(listed).every((w) => w.state === 'active')).toBe(true);

    const removed = await cli(['rm', String(watch.id)]);
    expect(removed.code, removed.stderr).toBe(0);
    expect(lines(removed)).toEqual([expect.objectContaining({ id: watch.id, state: 'deleted' })]);
    expect(lines(await cli(['get', String(watch.id)]))[0]).toMatchObject({ state: 'deleted' });
    expect(lines(await cli(['ls', '--state', 'deleted'])).map((w) => w.id)).toContain(watch.id);
    expect(lines(await cli(['ls', '--state', 'active'])).map((w) => w.id)).not.toContain(watch.id);
  });

  it('add --response watches a background response; the daemon URL may come from RUNWATCH_DAEMON_URL', async () => {
    const result = await runCli(['add', '--response', 'resp_client1', '--metadata', 'k=v'], { RUNWATCH_CONTROL_TOKEN: TOKEN, RUNWATCH_DAEMON_URL: t.base });
    expect(result.code, result.stderr).toBe(0);
    expect(lines(result)[0]).toMatchObject({ kind: 'response', response_id: 'resp_client1', metadata: { k: 'v' } });
  });

  it('ls follows next_after page after page, stops at --limit and says on stderr that more exist', async () => {
    for (let i = 0; i < 5; i += 1) {
      const ids = addRun(t, [{ status: 'queued' }]);
      expect((await cli(['add', ids.threadId, ids.runId])).code).toBe(0);
    }
    const all = (await (await fetch(`${t.base}/v1/watches?limit=500`, { headers: AUTH })).json()) as { data: Array<{ id: string }> };
    expect(all.data.length).toBeGreaterThanOrEqual(6);

    const paged = await cli(['ls', '--page-size', '2', '--limit', '1000']);
    expect(paged.code, paged.stderr).toBe(0);
    expect(lines(paged).map((w) => w.id)).toEqual(all.data.map((w) => w.id));
    expect(paged.stderr).toBe('');

    const limited = await cli(['ls', '--page-size', '2', '--limit', '3']);
    expect(limited.code, limited.stderr).toBe(0);
    expect(lines(limited).map((w) => w.id)).toEqual(all.data.slice(0, 3).map((w) => w.id));
    expect(limited.stderr).toBe('runwatch: more watches than --limit 3; raise --limit or filter with --state\n');

    const exact = await cli(['ls', '--limit', String(all.data.length)]);
    expect(lines(exact)).toHaveLength(all.data.length);
    expect(exact.stderr).toBe('');
  });

  it('cancel-watch cancels the run through the daemon (exit 0); again on the ended watch: exit 2 with the conflict', async () => {
    const ids = addRun(t, [{ status: 'in_progress', durationMs: 60_000 }, { status: 'completed' }]);
    const watch = lines(await cli(['add', ids.threadId, ids.runId]))[0]!;
    await recorded(t, ids.runId, ended('run.in_progress'));
    const cancelled = await cli(['cancel-watch', String(watch.id)]);
    expect(cancelled.code, cancelled.stderr).toBe(0);
    expect(lines(cancelled)[0]).toMatchObject({ id: watch.id, run_id: ids.runId });
    const events = await recorded(t, ids.runId, ended('run.cancelled'));
    // run.cancelling lasts 500 ms: a poll made late by a loaded machine may skip it
    expect(events.map((e) => e.type).filter((type) => type !== 'run.cancelling')).toEqual(['run.in_progress', 'run.cancel_requested', 'run.cancelled']);
    await expect.poll(async () => lines(await cli(['get', String(watch.id)]))[0]?.state).toBe('finished');

    const refused = await cli(['cancel-watch', String(watch.id)]);
    expect(refused.code).toBe(2);
    expect(refused.stdout).toBe('');
    expect(refused.stderr).toBe(`runwatch: the daemon answered 409 conflict: watch ${String(watch.id)} is finished: only an active watch can be cancelled\n`);
  });

  it.each([['get'], ['rm'], ['cancel-watch']])('%s of an unknown watch: exit 2 with the API code and message', async (command) => {
    const result = await cli([command, 'w_unknown0000']);
    expect(result.code).toBe(2);
    expect(result.stdout).toBe('');
    expect(result.stderr).toBe('runwatch: the daemon answered 404 not_found: no watch w_unknown0000; runwatch ls lists the watches\n');
  });

  it('add with a callback host the daemon does not allow: exit 2 with callback_not_allowed', async () => {
    const ids = addRun(t, [{ status: 'queued' }]);
    const result = await cli(['add', ids.threadId, ids.runId, '--callback-url', 'http://10.0.0.1/hook']);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^runwatch: the daemon answered 400 callback_not_allowed: callback_url must be http\(s\) on a host listed in daemon\.callbackHosts; add the callback's host/);
    expect(result.stderr.split('\n')).toHaveLength(2);
  });

  it('no token: exit 77 saying to set RUNWATCH_CONTROL_TOKEN; a wrong one: exit 77, never printed', async () => {
    const none = await cli(['ls'], {});
    expect(none.code).toBe(77);
    expect(none.stdout).toBe('');
    expect(none.stderr).toBe(`runwatch: the daemon at ${t.base} needs a control token (401 unauthorized): set RUNWATCH_CONTROL_TOKEN (or RUNWATCH_CONTROL_TOKEN_FILE) to the daemon's token\n`);
    for (const command of [['get', 'w_x'], ['add', 'thread_x', 'run_x'], ['rm', 'w_x'], ['cancel-watch', 'w_x']]) {
      const wrong = await cli(command, { RUNWATCH_CONTROL_TOKEN: WRONG_TOKEN });
      expect(wrong.code, command.join(' ')).toBe(77);
      expect(wrong.stderr).toMatch(/refused the control token \(401 unauthorized\): set RUNWATCH_CONTROL_TOKEN/);
    }
  });

  it('reads the token from RUNWATCH_CONTROL_TOKEN_FILE; both set or an unreadable file: exit 64', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'runwatch-client-'));
    const file = path.join(dir, 'token');
    writeFileSync(file, `${TOKEN}\n`);
    const ok = await cli(['ls', '--limit', '1'], { RUNWATCH_CONTROL_TOKEN_FILE: file });
    expect(ok.code, ok.stderr).toBe(0);
    const both = await cli(['ls'], { RUNWATCH_CONTROL_TOKEN_FILE: file, RUNWATCH_CONTROL_TOKEN: TOKEN });
    expect(both.code).toBe(64);
    expect(both.stderr).toBe('runwatch: both RUNWATCH_CONTROL_TOKEN and RUNWATCH_CONTROL_TOKEN_FILE are set: keep one\n');
    const missing = await cli(['ls'], { RUNWATCH_CONTROL_TOKEN_FILE: path.join(dir, 'nope') });
    expect(missing.code).toBe(64);
    expect(missing.stderr).toMatch(/^runwatch: cannot read RUNWATCH_CONTROL_TOKEN_FILE .*ENOENT/);
  });

  it.each([
    [['ls', '--state', 'running'], /invalid --state "running": use active, finished, failed, deleted/],
    [['ls', '--limit', '0'], /invalid --limit "0": use an integer from 1/],
    [['ls', '--page-size', '501'], /invalid --page-size "501": use an integer from 1 to 500/],
    [['ls', 'extra'], /runwatch ls takes no arguments/],
    [['add', 'thread_only'], /expected <thread_id> <run_id> \(or --response <response_id>\), got 1/],
    [['add', 'thread_a', 'run_a', '--response', 'resp_a'], /not both/],
    [['add', 'thread_a', 'run_a', '--metadata', 'novalue'], /invalid --metadata "novalue": use KEY=VALUE/],
    [['add', 'thread_a', 'run_a', '--metadata', 'a=1', '--metadata', 'a=2'], /--metadata "a" given twice/],
    [['add', 'thread_a', 'run_a', '--callback-url', 'ftp://x'], /invalid --callback-url/],
    [['add', '../admin', 'run_a'], /invalid thread_id "..\/admin"/],
    [['get'], /expected <watch_id>, got 0/],
    [['get', 'w/../../x'], /invalid watch id/],
    [['rm', 'a', 'b'], /expected <watch_id>, got 2/],
    [['get', 'w_x', '--request-timeout', 'soon'], /invalid --request-timeout "soon"/],
    [['get', 'w_x', '--bogus'], /Unknown option '--bogus'.*run runwatch get --help/],
    [['tail', '--from', 'last'], /invalid --from "last": use a log position/],
    [['tail', '--run-id', 'run a'], /invalid --run-id "run a"/],
  ])('bad flags %j: exit 64 with one line, nothing sent', async (args, message) => {
    const result = await cli(args);
    expect(result.code).toBe(64);
    expect(result.stdout).toBe('');
    expect(result.stderr).toMatch(message);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('a bad --daemon-url: exit 64 naming the setting; a URL with credentials is refused without printing them', async () => {
    const ftp = await runCli(['ls', '--daemon-url', 'ftp://127.0.0.1'], {});
    expect(ftp.code).toBe(64);
    expect(ftp.stderr).toBe('runwatch: invalid daemon URL protocol "ftp:" (--daemon-url or RUNWATCH_DAEMON_URL): use http or https\n');
    const creds = await runCli(['ls'], { RUNWATCH_DAEMON_URL: `http://admin:${TOKEN}@127.0.0.1:1` });
    expect(creds.code).toBe(64);
    expectNoSecrets(creds);
  });

  it('the daemon down: exit 69 with its URL and a hint, for every command', async () => {
    const down = `http://127.0.0.1:${await freePort()}`;
    for (const command of [['ls'], ['add', 'thread_x', 'run_x'], ['get', 'w_x'], ['rm', 'w_x'], ['cancel-watch', 'w_x'], ['tail']]) {
      const result = await runCli([...command, '--daemon-url', down], { RUNWATCH_CONTROL_TOKEN: TOKEN });
      expect(result.code, command.join(' ')).toBe(69);
      expect(result.stdout).toBe('');
      expect(result.stderr).toBe(`runwatch: cannot reach the daemon at ${down} (ECONNREFUSED): start it (runwatch daemon) or point --daemon-url / RUNWATCH_DAEMON_URL at it\n`);
    }
  });

  it('something that is not a runwatch daemon (a web page): exit 69 saying so', async () => {
    const server = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end('<html>hello</html>'));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
      for (const command of [['ls'], ['get', 'w_x'], ['tail']]) {
        const result = await runCli([...command, '--daemon-url', url], { RUNWATCH_CONTROL_TOKEN: TOKEN });
        expect(result.code, command.join(' ')).toBe(69);
        expect(result.stderr).toMatch(/is it a runwatch daemon\? check --daemon-url/);
      }
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it.each([['ls'], ['add'], ['get'], ['rm'], ['cancel-watch'], ['tail'], ['submit-tool-outputs']])('%s --help: exit 0, usage and exit codes', async (command) => {
    const result = await runCli([command, '--help']);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(new RegExp(`^Usage: runwatch ${command}`));
    expect(result.stdout).toMatch(/Exit codes: 0 /);
    if (command !== 'submit-tool-outputs') expect(result.stdout).toMatch(/69 .*77 unauthorized/s);
  });

  it('runwatch --help lists the client commands', async () => {
    const result = await runCli(['--help']);
    for (const command of ['ls', 'add', 'get', 'rm', 'cancel-watch', 'tail', 'submit-tool-outputs']) expect(result.stdout).toContain(`runwatch ${command} `);
  });
});

describe('daemon client: tail', () => {
  const t = useDaemon('memory', { skip: false, key: KEY, secrets: { controlToken: TOKEN } });
  const env = { RUNWATCH_CONTROL_TOKEN: TOKEN };

  it.each([
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ] as const)('prints the filtered events as NDJSON until %s (exit %i), then says which --from resumes', async (signal, code) => {
    const ids = addRun(t, [{ status: 'queued', durationMs: 200 }, { status: 'in_progress', durationMs: 200 }, { status: 'completed' }]);
    const other = addRun(t, [{ status: 'completed' }]);
    const tail = startCli(['tail', '--run-id', ids.runId, '--daemon-url', t.base], env);
    await fetch(`${t.base}/v1/watches`, { method: 'POST', headers: { ...AUTH, 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: other.threadId, run_id: other.runId }) });
    await fetch(`${t.base}/v1/watches`, { method: 'POST', headers: { ...AUTH, 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: ids.threadId, run_id: ids.runId }) });
    await tail.waitForLine((line) => line.includes('"run.completed"'));
    const reference = await recorded(t, ids.runId, ended('run.completed'));
    tail.child.kill(signal);
    const result = await tail.done;
    expect(result.code).toBe(code);
    expect(tailed(result).map((e) => e.id)).toEqual(reference.map((e) => e.id));
    // only this run's events: the other run's were filtered out by the daemon
    expect(new Set(tailed(result).map((e) => ('run_id' in e ? e.run_id : null)))).toEqual(new Set([ids.runId]));
    expect(result.stderr).toMatch(/^runwatch: stopped after position (\d+); runwatch tail --from \1 resumes\n$/);
    expectNoSecrets(result);
  });

  it('--from POS starts after that position', async () => {
    const ids = addRun(t, [{ status: 'queued', durationMs: 200 }, { status: 'completed' }]);
    await fetch(`${t.base}/v1/watches`, { method: 'POST', headers: { ...AUTH, 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: ids.threadId, run_id: ids.runId }) });
    const frames = await readFrames(`${t.base}/v1/events?run_id=${ids.runId}`, (list) => list.some((f) => f.event === 'run.completed'), AUTH);
    const queued = frames.find((f) => f.event === 'run.queued')!;
    const rest = startCli(['tail', '--run-id', ids.runId, '--from', queued.id, '--daemon-url', t.base], env);
    await rest.waitForLine((line) => line.includes('"run.completed"'));
    rest.child.kill('SIGINT');
    expect(tailed(await rest.done).map((e) => e.type)).toEqual(['run.completed']);
  });

  it('a wrong token: exit 77 at once, no retry', async () => {
    const result = await runCli(['tail', '--daemon-url', t.base], { RUNWATCH_CONTROL_TOKEN: WRONG_TOKEN });
    expect(result.code).toBe(77);
    expect(result.stderr).toMatch(/refused the control token \(401 unauthorized\): set RUNWATCH_CONTROL_TOKEN/);
    expectNoSecrets(result);
  });

  it('resumes after a network cut after the last position: every event once, in order; the cut said once on stderr however many attempts', async () => {
    const proxy = await startProxy(new URL(t.base));
    const via = proxy.url.replace(/^redis:/, 'http:');
    let tail: CliProcess | undefined;
    try {
      const ids = addRun(t, [{ status: 'queued', durationMs: 300 }, { status: 'in_progress', durationMs: 300 }, { status: 'completed' }]);
      tail = startCli(['tail', '--run-id', ids.runId, '--daemon-url', via], env);
      await fetch(`${t.base}/v1/watches`, { method: 'POST', headers: { ...AUTH, 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: ids.threadId, run_id: ids.runId }) });
      await tail.waitForLine((line) => line.includes('"run.queued"'));
      await proxy.down();
      await tail.waitForStderr((line) => line.includes('reconnecting with backoff'));
      // the rest of the run happens while the tail cannot reach the daemon
      const reference = await recorded(t, ids.runId, ended('run.completed'));
      // and it tries a few times meanwhile: each attempt is dropped at once
      await refuseConnections(Number(new URL(via).port), 2);
      await proxy.up();
      await tail.waitForLine((line) => line.includes('"run.completed"'));
      tail.child.kill('SIGINT');
      const result = await tail.done;
      expect(result.code).toBe(130);
      expect(tailed(result).map((e) => e.id)).toEqual(reference.map((e) => e.id));
      expect(reconnections(result.stderr)).toBe(1);
      expect(result.stderr).toMatch(new RegExp(`^runwatch: the event stream from ${via} was cut \\(.+\\); reconnecting with backoff after position \\d+\\n`));
      expectNoSecrets(result);
    } finally {
      tail?.child.kill('SIGKILL');
      await proxy.close();
    }
  });
});

describe('daemon client: tail across a daemon restart (sqlite)', () => {
  let port = 0;
  beforeAll(async () => {
    port = await freePort();
  });
  const t = useDaemon('sqlite', { skip: false, key: KEY, secrets: { controlToken: TOKEN }, settings: () => [['daemon.port', String(port)]] });

  it('reconnects once the daemon is back and prints what it recorded meanwhile, without loss or repeats', async () => {
    const ids = addRun(t, [{ status: 'queued', durationMs: 300 }, { status: 'in_progress', durationMs: 1_500 }, { status: 'completed' }]);
    const tail = startCli(['tail', '--thread-id', ids.threadId, '--daemon-url', t.base], { RUNWATCH_CONTROL_TOKEN: TOKEN });
    try {
      await fetch(`${t.base}/v1/watches`, { method: 'POST', headers: { ...AUTH, 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: ids.threadId, run_id: ids.runId }) });
      await tail.waitForLine((line) => line.includes('"run.queued"'));
      await t.stop();
      await tail.waitForStderr((line) => line.includes('reconnecting with backoff'));
      await t.start();
      expect(t.base).toBe(`http://127.0.0.1:${port}`);
      await tail.waitForLine((line) => line.includes('"run.completed"'));
      const reference = await recorded(t, ids.runId, ended('run.completed'));
      tail.child.kill('SIGTERM');
      const result = await tail.done;
      expect(result.code).toBe(143);
      expect(tailed(result).map((e) => e.id)).toEqual(reference.map((e) => e.id));
      expect(tailed(result).map((e) => e.seq)).toEqual(reference.map((_, i) => i + 1));
      expect(reconnections(result.stderr)).toBe(1);
      // a graceful shutdown ends the streams first; a slower client may see its connection closed instead
      expect(result.stderr).toMatch(/^runwatch: (the daemon at \S+ ended the event stream|the event stream from \S+ was cut \(.+\)); reconnecting with backoff after position \d+\n/);
      expectNoSecrets(result);
    } finally {
      tail.child.kill('SIGKILL');
    }
  });
});

describe('runwatch submit-tool-outputs', () => {
  const t = useDaemon('memory', { skip: false, key: KEY, secrets: { controlToken: TOKEN } });
  const provider = (): string[] => ['--provider', 'openai', '--base-url', t.sim.baseUrl];
  const submit = async (args: string[]): Promise<CliResult> => {
    const result = await runCli(['submit-tool-outputs', ...args, ...provider()], { OPENAI_API_KEY: KEY });
    expectNoSecrets(result);
    return result;
  };

  it('answers the run watch --until requires_action stopped at (exit 10): POSTs the outputs, prints the run, exit 0; the run then completes', async () => {
    const ids = addRun(t, [{ status: 'in_progress', durationMs: 200 }, { status: 'requires_action' }, { status: 'in_progress', durationMs: 200 }, { status: 'completed' }]);
    const watched = await runCli(['watch', ids.threadId, ids.runId, '--until', 'requires_action', '--policy', FAST_POLICY, ...provider()], { OPENAI_API_KEY: KEY });
    expect(watched.code, watched.stderr).toBe(10);
    const last = watched.events.at(-1);
    const action = last?.type === 'run.requires_action' ? last.run.required_action : undefined;
    const calls = action?.type === 'submit_tool_outputs' ? action.submit_tool_outputs.tool_calls : [];
    expect(calls).toHaveLength(1);
    const callId = calls[0]!.id;

    const dir = mkdtempSync(path.join(tmpdir(), 'runwatch-tools-'));
    writeFileSync(path.join(dir, 'out.json'), '{"temp": 21}\n');
    const result = await submit([ids.threadId, ids.runId, '--output-file', `${callId}=@${path.join(dir, 'out.json')}`]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toBe('');
    expect(lines(result)).toEqual([expect.objectContaining({ id: ids.runId, thread_id: ids.threadId, status: 'in_progress' })]);
    const posts = t.sim.requests(ids.runId).filter((r) => r.method === 'POST');
    expect(posts.map((p) => p.path)).toEqual([`/v1/threads/${ids.threadId}/runs/${ids.runId}/submit_tool_outputs`]);
    expect(JSON.parse(posts[0]!.body!)).toEqual({ tool_outputs: [{ tool_call_id: callId, output: '{"temp": 21}\n' }] });

    const rest = await runCli(['watch', ids.threadId, ids.runId, '--policy', FAST_POLICY, ...provider()], { OPENAI_API_KEY: KEY });
    expect(rest.code, rest.stderr).toBe(0);

    const late = await submit([ids.threadId, ids.runId, '--output', `${callId}=again`]);
    expect(late.code).toBe(2);
    expect(late.stdout).toBe('');
    expect(late.stderr).toMatch(/^runwatch: tool outputs refused: .*do not accept tool outputs.*\(bad_request\); the run must be at requires_action/);
  });

  it('an output for the wrong tool call: exit 2 with the server message; an unknown run: exit 2 run_not_found', async () => {
    const ids = addRun(t, [{ status: 'requires_action' }]);
    const wrong = await submit([ids.threadId, ids.runId, '--output', 'call_other={"ok":true}']);
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toMatch(/^runwatch: tool outputs refused: .*Expected tool outputs for call_ids \['call_0'\].*\(bad_request\)/);
    const sent = JSON.parse(t.sim.requests(ids.runId).find((r) => r.method === 'POST')!.body!) as unknown;
    expect(sent).toEqual({ tool_outputs: [{ tool_call_id: 'call_other', output: '{"ok":true}' }] });

    const unknown = await submit(['thread_none', 'run_none', '--output', 'call_0=x']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/\(run_not_found\); check the thread and run ids/);
  });

  it.each([
    [['thread_a', 'run_a'], /no tool outputs: give --output CALL_ID=VALUE/],
    [['thread_a'], /expected <thread_id> <run_id>, got 1/],
    [['thread_a', 'run a', '--output', 'c=1'], /invalid run_id "run a"/],
    [['thread_a', 'run_a', '--output', 'noequals'], /invalid --output "noequals": use CALL_ID=VALUE/],
    [['thread_a', 'run_a', '--output', 'c=1', '--output', 'c=2'], /tool call "c" given twice/],
    [['thread_a', 'run_a', '--output-file', 'c=@/nonexistent/out.json'], /cannot read --output-file \/nonexistent\/out.json for "c" \(ENOENT\)/],
  ])('bad flags %j: exit 64, nothing sent', async (args, message) => {
    const before = t.sim.requests('run_a').length;
    const result = await submit(args);
    expect(result.code).toBe(64);
    expect(result.stderr).toMatch(message);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(t.sim.requests('run_a')).toHaveLength(before);
  });
});

describe('DaemonClientError', () => {
  it('is a RunwatchError whose stable code follows its exit code, the API code kept apart', () => {
    const refused = new DaemonClientError(CLIENT_EXIT.apiError, 'the daemon answered 404 not_found: no watch', 404, 'not_found');
    expect(refused).toBeInstanceOf(RunwatchError);
    expect([refused.code, refused.apiCode, refused.status]).toEqual(['daemon_refused', 'not_found', 404]);
    expect(new DaemonClientError(CLIENT_EXIT.unauthorized, 'x', 401, 'unauthorized').code).toBe('daemon_unauthorized');
    expect(new DaemonClientError(CLIENT_EXIT.unreachable, 'x').code).toBe('daemon_unreachable');
  });
});
