import { EventEmitter } from 'node:events';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PollReport } from '../src/driver.js';
import { ConfigError } from '../src/errors.js';
import type { WatchEvent } from '../src/events.js';
import { createLogger } from '../src/logger.js';
import { StdoutSink } from '../src/sinks/stdout.js';
import {
  colorAllowed,
  deadlineHint,
  displayUrl,
  formatDuration,
  formatEvent,
  formatStatusLine,
  isUnreachable,
  networkErrorCode,
  outputFormat,
  printable,
  quietLogLevel,
  StatusLine,
  Terminal,
} from '../src/terminal.js';
import type { WatchInfo } from '../src/watcher.js';

// the lines print local time: pin the zone so the expected strings hold anywhere
let zone: string | undefined;
beforeAll(() => {
  zone = process.env.TZ;
  process.env.TZ = 'UTC';
});
afterAll(() => {
  if (zone === undefined) delete process.env.TZ;
  else process.env.TZ = zone;
});

const AT = '2026-03-01T14:03:07.512Z';
const RUN_IDS = { watch_id: 'w_1', thread_id: 'thread_a', run_id: 'run_a', observed_at: AT };
const run = (status: string, extra: Record<string, unknown> = {}): Record<string, unknown> => ({ id: 'run_a', object: 'thread.run', status, last_error: null, required_action: null, ...extra });

/** A fixed event of any shape (the formatter reads what the schema says). */
function event(fields: Record<string, unknown>): WatchEvent {
  return { id: `w_1.${String(fields.seq)}`, ...RUN_IDS, ...fields } as unknown as WatchEvent;
}

describe('formatEvent', () => {
  it.each<[string, Record<string, unknown>, string]>([
    ['the first status', { type: 'run.queued', seq: 1, from: null, to: 'queued', run: run('queued') }, '14:03:07.512  run_a  #1  queued'],
    ['a change', { type: 'run.in_progress', seq: 2, from: 'queued', to: 'in_progress', run: run('in_progress') }, '14:03:07.512  run_a  #2  queued -> in_progress'],
    [
      'a failure with the run error',
      { type: 'run.failed', seq: 3, from: 'in_progress', to: 'failed', run: run('failed', { last_error: { code: 'server_error', message: 'boom' } }) },
      '14:03:07.512  run_a  #3  in_progress -> failed  server_error: boom',
    ],
    [
      'requires_action with its tool calls',
      {
        type: 'run.requires_action',
        seq: 2,
        from: 'in_progress',
        to: 'requires_action',
        run: run('requires_action', { required_action: { type: 'submit_tool_outputs', submit_tool_outputs: { tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{}' } }] } } }),
      },
      '14:03:07.512  run_a  #2  in_progress -> requires_action  1 tool call: get_weather',
    ],
    ['a stall', { type: 'run.stalled', seq: 4, from: 'queued', to: 'queued', stalled_for_ms: 65_000, run: run('queued') }, '14:03:07.512  run_a  #4  still queued after 1m 05s (stalled)'],
    [
      'tool outputs submitted',
      { type: 'run.tool_outputs_submitted', seq: 4, from: 'requires_action', to: 'requires_action', tool_call_ids: ['call_1', 'call_2'], run: run('requires_action') },
      '14:03:07.512  run_a  #4  tool outputs submitted (call_1, call_2)',
    ],
    [
      'a cancel after a stall',
      { type: 'run.cancel_requested', seq: 5, from: 'in_progress', to: 'in_progress', reason: 'stalled', stalled_for_ms: 600_000, run: run('in_progress') },
      '14:03:07.512  run_a  #5  cancel requested (stalled for 10m 00s)',
    ],
    [
      'a failed action',
      { type: 'run.action_failed', seq: 5, from: 'requires_action', to: 'requires_action', reason: 'submit_tool_outputs', error: { code: 'tool_handler_failed', message: 'no weather' }, run: run('requires_action') },
      '14:03:07.512  run_a  #5  action failed (submit_tool_outputs): no weather (tool_handler_failed)',
    ],
    [
      'a watch error',
      { type: 'watch.error', seq: 2, from: 'queued', to: null, error: { code: 'deadline_exceeded', message: 'deadline exceeded at 2026-03-01T15:03:07.000Z; last status: queued' }, run: run('queued') },
      '14:03:07.512  run_a  #2  error deadline_exceeded: deadline exceeded at 2026-03-01T15:03:07.000Z; last status: queued',
    ],
  ])('prints %s on one line', (_, fields, expected) => {
    expect(formatEvent(event(fields))).toBe(expected);
  });

  it('prints responses and threads by their own id', () => {
    const response = { id: 'w_2.2', type: 'response.incomplete', seq: 2, watch_id: 'w_2', response_id: 'resp_a', from: 'in_progress', to: 'incomplete', observed_at: AT, response: { id: 'resp_a', status: 'incomplete', incomplete_details: { reason: 'max_output_tokens' } } };
    expect(formatEvent(response as unknown as WatchEvent)).toBe('14:03:07.512  resp_a  #2  in_progress -> incomplete  max_output_tokens');
    const thread = { id: 'w_3.1', type: 'thread.busy', seq: 1, watch_id: 'w_3', thread_id: 'thread_b', from: null, to: 'busy', observed_at: AT, thread: { status: 'busy', latest_run: run('in_progress') } };
    expect(formatEvent(thread as unknown as WatchEvent)).toBe('14:03:07.512  thread_b  #1  busy  run run_a in_progress');
  });

  it('colours only when asked: green for completed, red for an error, dim time', () => {
    const completed = event({ type: 'run.completed', seq: 3, from: 'in_progress', to: 'completed', run: run('completed') });
    expect(formatEvent(completed, { color: true })).toBe('\x1b[2m14:03:07.512\x1b[22m  run_a  \x1b[2m#3\x1b[22m  in_progress -> \x1b[32mcompleted\x1b[39m');
    expect(formatEvent(completed)).not.toContain('\x1b');
    const error = event({ type: 'watch.error', seq: 1, from: null, to: null, error: { code: 'run_not_found', message: 'HTTP 404' }, run: null });
    expect(formatEvent(error, { color: true })).toContain('\x1b[31merror run_not_found: HTTP 404\x1b[39m');
  });

  it("keeps the server's escape sequences and newlines off the terminal", () => {
    const nasty = event({ type: 'run.failed', seq: 2, from: 'in_progress', to: 'failed', run: run('failed', { last_error: { code: 'x', message: 'line1\nline2\x1b[2J\x07' } }) });
    const line = formatEvent(nasty);
    expect(line).toBe('14:03:07.512  run_a  #2  in_progress -> failed  x: line1 line2 [2J ');
    expect(printable('a\r\n\tb\u009bc')).toBe('a b c');
  });
});

describe('small parts', () => {
  it('formats durations', () => {
    expect([850, 12_400, 65_000, 7_380_000].map(formatDuration)).toEqual(['850ms', '12s', '1m 05s', '2h 03m']);
  });

  it('writes the status line', () => {
    expect(formatStatusLine({ status: 'in_progress', elapsedMs: 65_000, polls: 14, nextPollInMs: 3_200, lastError: 'network error ECONNREFUSED' })).toBe(
      'in_progress  1m 05s elapsed, 14 polls, next poll in 4s, last error: network error ECONNREFUSED',
    );
    expect(formatStatusLine({ status: null, elapsedMs: 300, polls: 1, nextPollInMs: null, lastError: null })).toBe('waiting for the first answer  0s elapsed, 1 poll, polling now');
  });

  it('picks the output format: pretty on a terminal, ndjson otherwise, the flag first', () => {
    expect(outputFormat(undefined, true)).toBe('pretty');
    expect(outputFormat(undefined, false)).toBe('ndjson');
    expect(outputFormat('ndjson', true)).toBe('ndjson');
    expect(outputFormat('pretty', false)).toBe('pretty');
    expect(() => outputFormat('json', true)).toThrow(ConfigError);
    expect(() => outputFormat('json', true)).toThrow('invalid --output "json": use pretty or ndjson');
  });

  it('allows colours on a terminal without NO_COLOR (an empty NO_COLOR does not count) and not on a dumb one', () => {
    expect(colorAllowed(true, {})).toBe(true);
    expect(colorAllowed(true, { NO_COLOR: '' })).toBe(true);
    expect(colorAllowed(true, { NO_COLOR: '1' })).toBe(false);
    expect(colorAllowed(true, { TERM: 'dumb' })).toBe(false);
    expect(colorAllowed(false, {})).toBe(false);
    expect(colorAllowed(undefined, {})).toBe(false);
  });

  it('caps the log level at warn under --quiet', () => {
    expect(['trace', 'debug', 'info', 'warn', 'error', 'silent'].map((level) => quietLogLevel(level, true))).toEqual(['warn', 'warn', 'warn', 'warn', 'error', 'silent']);
    expect(quietLogLevel('debug', false)).toBe('debug');
  });

  it('reads network errors, tells unreachable from reset, and prints URLs without credentials', () => {
    expect(networkErrorCode('network error ECONNREFUSED')).toBe('ECONNREFUSED');
    expect(networkErrorCode('HTTP 503: down')).toBeNull();
    expect(networkErrorCode(undefined)).toBeNull();
    expect(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'ECONNRESET', 'unknown'].map(isUnreachable)).toEqual([true, true, true, true, false, false]);
    expect(displayUrl('http://user:pass@gw.example:8787/v1/?token=abc#x')).toBe('http://gw.example:8787/v1');
  });

  it('hints at the network on a deadline only when the last poll got no HTTP answer', () => {
    expect(deadlineHint('network error ECONNREFUSED', 'http://127.0.0.1:9/v1')).toBe('the last poll to http://127.0.0.1:9/v1 failed with ECONNREFUSED: check --base-url (host and port) and that the server is running');
    expect(deadlineHint('network error ENOTFOUND', 'http://nope/v1')).toContain('check the host name in --base-url');
    expect(deadlineHint('request timed out after 30000 ms', 'http://x/v1')).toContain('timed out');
    expect(deadlineHint('HTTP 503: down', 'http://x/v1')).toBeUndefined();
    expect(deadlineHint(null, 'http://x/v1')).toBeUndefined();
  });
});

/** A fake terminal (or pipe) that keeps what is written. */
function fakeStream(isTTY: boolean, columns = 0): NodeJS.WriteStream & { text: () => string } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer | string, _encoding, done) {
      chunks.push(chunk.toString());
      done();
    },
  }) as unknown as NodeJS.WriteStream & { text: () => string };
  Object.assign(stream, { isTTY, columns, text: () => chunks.join('') });
  return stream;
}

describe('StatusLine', () => {
  it('draws in place, erases before other lines, draws again after, and never wraps', () => {
    const out = fakeStream(true, 20);
    let text = 'queued  1s elapsed';
    const line = new StatusLine(out, () => text);
    line.refresh();
    line.around(() => out.write('event 1\n'));
    text = 'in_progress  2s elapsed and a long tail';
    line.refresh();
    line.close();
    line.refresh();
    expect(out.text()).toBe('\r\x1b[2Kqueued  1s elapsed' + '\r\x1b[2K' + 'event 1\n' + '\r\x1b[2Kqueued  1s elapsed' + '\r\x1b[2Kin_progress  2s ...' + '\r\x1b[2K');
  });

  it('writes nothing around a line while it has nothing to show', () => {
    const out = fakeStream(true);
    const line = new StatusLine(out, () => '');
    line.around(() => out.write('log\n'));
    line.close();
    expect(out.text()).toBe('log\n');
  });
});

/** A watcher as `Terminal.follow` sees it, with polls the test sends. */
class FakeWatcher extends EventEmitter {
  info(watchId: string): WatchInfo | undefined {
    return { id: watchId, status: 'queued', seq: 1, nextPollAtMs: null, deadlineAtMs: Date.now() + 60_000, consecutiveErrors: 0, lastError: null };
  }
  poll(report: Partial<PollReport>): void {
    this.emit('poll', { watchId: 'w_1', outcome: 'ok', latencyMs: 1, latenessMs: 0, ...report });
  }
}

describe('Terminal', () => {
  const refused: Partial<PollReport> = { outcome: 'transient', message: 'network error ECONNREFUSED' };

  it('on pipes: NDJSON through the plain StdoutSink, JSON logs, and no status line', async () => {
    const stdout = fakeStream(false);
    const stderr = fakeStream(false);
    const terminal = new Terminal({ stdout, stderr, env: {} });
    expect(terminal.format).toBe('ndjson');
    expect(terminal.sink()).toBeInstanceOf(StdoutSink);
    expect(terminal.loggerOptions.destination).toBeUndefined();
    const watcher = new FakeWatcher();
    terminal.follow(watcher, 'w_1', 'http://127.0.0.1:9/v1', pino({ level: 'silent' }));
    watcher.poll(refused);
    await new Promise((resolve) => setImmediate(resolve));
    terminal.close();
    expect(stderr.text()).toBe('');
  });

  it('says once that the server cannot be reached, with the URL, and names it in the deadline hint until a poll gets an answer', async () => {
    const logs = fakeStream(false);
    const logger = await createLogger('info', { pretty: false, destination: logs });
    const terminal = new Terminal({ stdout: fakeStream(false), stderr: fakeStream(false), env: {} });
    const watcher = new FakeWatcher();
    terminal.follow(watcher, 'w_1', 'http://127.0.0.1:9/v1/', logger);
    expect(terminal.deadlineHint()).toBeUndefined();
    watcher.poll(refused);
    watcher.poll(refused);
    watcher.poll({ ...refused, watchId: 'w_other' });
    const lines = logs.text().trim().split('\n').map((line) => JSON.parse(line) as { level: number; msg: string; url: string });
    expect(lines).toEqual([
      expect.objectContaining({ level: 40, url: 'http://127.0.0.1:9/v1', msg: 'cannot reach http://127.0.0.1:9/v1 (ECONNREFUSED); still retrying until the deadline: check --base-url (host and port) and that the server is running' }),
    ]);
    expect(terminal.deadlineHint()).toContain('the last poll to http://127.0.0.1:9/v1 failed with ECONNREFUSED');
    watcher.poll({ outcome: 'transient', httpStatus: 503, message: 'HTTP 503' });
    expect(terminal.deadlineHint()).toBeUndefined();
    // a reset came from a server that was reached: no notice, but the hint names it
    watcher.poll({ outcome: 'transient', message: 'network error ECONNRESET' });
    expect(terminal.deadlineHint()).toContain('failed with ECONNRESET');
    expect(logs.text().trim().split('\n')).toHaveLength(1);
    terminal.close();
    watcher.poll(refused);
    expect(terminal.deadlineHint()).toContain('ECONNRESET');
  });

  it('on a terminal: pretty lines with colours, the status line on stderr erased around them, none under --quiet or NO_COLOR colours', async () => {
    const stdout = fakeStream(true);
    const stderr = fakeStream(true, 100);
    const terminal = new Terminal({ stdout, stderr, env: {} });
    expect(terminal.format).toBe('pretty');
    const watcher = new FakeWatcher();
    terminal.follow(watcher, 'w_1', 'http://x/v1', pino({ level: 'silent' }));
    await terminal.sink().deliver(event({ type: 'run.queued', seq: 1, from: null, to: 'queued', run: run('queued') }));
    terminal.close();
    expect(stdout.text()).toBe('\x1b[2m14:03:07.512\x1b[22m  run_a  \x1b[2m#1\x1b[22m  \x1b[36mqueued\x1b[39m\n');
    // eslint-disable-next-line no-control-regex
    expect(stderr.text()).toMatch(/^\r\x1b\[2K\x1b\[2mqueued {2}0s elapsed, 0 polls, polling now\x1b\[22m\r\x1b\[2K\r\x1b\[2K.*\r\x1b\[2K$/);

    const plainOut = fakeStream(true);
    const quietErr = fakeStream(true);
    const quiet = new Terminal({ stdout: plainOut, stderr: quietErr, env: { NO_COLOR: '1' }, quiet: true });
    expect(quiet.loggerOptions).toEqual({ color: false });
    quiet.follow(watcher, 'w_1', 'http://x/v1', pino({ level: 'silent' }));
    await quiet.sink().deliver(event({ type: 'run.queued', seq: 1, from: null, to: 'queued', run: run('queued') }));
    quiet.close();
    expect(plainOut.text()).toBe('14:03:07.512  run_a  #1  queued\n');
    expect(quietErr.text()).toBe('');
  });
});

describe('createLogger on a terminal', () => {
  it('writes one line per entry, an error and its stack included, without colours when asked', async () => {
    const out = fakeStream(true);
    const logger = await createLogger('info', { pretty: true, color: false, destination: out });
    logger.info({ watchId: 'w_1', nested: { a: 1 } }, 'status changed');
    logger.error({ err: new Error('boom') }, 'sink failed to deliver an event');
    const lines = out.text().split('\n');
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(/^\[\d\d:\d\d:\d\d\.\d{3}\] INFO: status changed \{"watchId":"w_1","nested":\{"a":1\}\}$/);
    expect(lines[1]).toMatch(/^\[\d\d:\d\d:\d\d\.\d{3}\] ERROR: sink failed to deliver an event \{"err":"Error: boom"\}$/);
    expect(lines[2]).toBe('');
    expect(out.text()).not.toContain('\x1b');
  });
});
