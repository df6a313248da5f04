import { once } from 'node:events';
import type { DestinationStream } from 'pino';
import type { Logger } from 'pino';
import { requiredActionOf } from './actions.js';
import type { PollReport } from './driver.js';
import { ConfigError } from './errors.js';
import type { RunTransitionEvent, WatchEvent } from './events.js';
import { idFieldsOf, isWatchError } from './events.js';
import type { LoggerOptions } from './logger.js';
import type { Sink } from './sinks/sink.js';
import { StdoutSink } from './sinks/stdout.js';
import type { WatchInfo } from './watcher.js';

/** What `--output` accepts: one human line per event, or the NDJSON events every sink receives. */
export const OUTPUT_FORMATS = ['pretty', 'ndjson'] as const;

/** How the watch commands print events on stdout. */
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

/** The format from `--output`, else pretty on a terminal and NDJSON on a pipe or a file; throws `ConfigError` on another value. */
export function outputFormat(flag: string | undefined, stdoutIsTTY: boolean): OutputFormat {
  if (flag === undefined) return stdoutIsTTY ? 'pretty' : 'ndjson';
  if (!(OUTPUT_FORMATS as readonly string[]).includes(flag)) throw new ConfigError(`invalid --output ${JSON.stringify(flag)}: use pretty or ndjson`);
  return flag as OutputFormat;
}

/** True when a stream may get colours: a terminal, `NO_COLOR` unset or empty (no-color.org), and `TERM` not `dumb`. */
export function colorAllowed(isTTY: boolean | undefined, env: NodeJS.ProcessEnv): boolean {
  return isTTY === true && !env.NO_COLOR && env.TERM !== 'dumb';
}

/** The log level under `--quiet`: at most `warn` (info and debug lines are dropped), an invalid level as it was (createLogger rejects it). */
export function quietLogLevel(level: string, quiet: boolean): string {
  return quiet && ['trace', 'debug', 'info'].includes(level) ? 'warn' : level;
}

type Paint = 'red' | 'green' | 'yellow' | 'cyan' | 'dim' | 'bold';
const SGR: Readonly<Record<Paint, readonly [number, number]>> = { red: [31, 39], green: [32, 39], yellow: [33, 39], cyan: [36, 39], dim: [2, 22], bold: [1, 22] };

function paint(color: boolean, style: Paint, text: string): string {
  const [on, off] = SGR[style];
  return color ? `\x1b[${on}m${text}\x1b[${off}m` : text;
}

/** Text from the server made safe for a terminal: control characters (escape sequences, newlines) become spaces. */
export function printable(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f-\u009f]+/g, ' ');
}

/** `850ms`, `12s`, `1m 05s`, `2h 03m`. */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))}ms`;
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor(s / 60) % 60).padStart(2, '0')}m`;
}

/** Local wall-clock time of an ISO timestamp, `HH:MM:SS.mmm`. */
function clock(iso: string): string {
  const d = new Date(iso);
  const two = (n: number): string => String(n).padStart(2, '0');
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, '0')}`;
}

const GOOD = new Set(['completed', 'idle']);
const BAD = new Set(['failed', 'cancelled', 'expired', 'incomplete']);

function paintStatus(color: boolean, status: string): string {
  const style: Paint = GOOD.has(status) ? 'green' : BAD.has(status) ? 'red' : status === 'requires_action' ? 'yellow' : 'cyan';
  return paint(color, style, status);
}

/** Options of `formatEvent`. */
export interface FormatOptions {
  /** ANSI colours. @default false */
  readonly color?: boolean;
}

/** What the snapshot of a transition adds: the run's or response's error, why it is incomplete, the tool calls, the thread's latest run. */
function snapshotDetail(event: WatchEvent): string {
  if ('run' in event && event.run) {
    const run = event.run;
    if (run.last_error) return `${run.last_error.code}: ${run.last_error.message}`;
    const required = run.status === 'requires_action' ? requiredActionOf(run) : undefined;
    const calls = required?.calls ?? [];
    const asked = required?.type === 'submit_tool_approval' ? 'approval' : 'tool call';
    if (calls.length > 0) return `${calls.length} ${asked}${calls.length === 1 ? '' : 's'}: ${calls.map((call) => call.function?.name ?? call.name ?? call.type).join(', ')}`;
    const incomplete = (run as { incomplete_details?: { reason?: unknown } | null }).incomplete_details;
    return typeof incomplete?.reason === 'string' ? incomplete.reason : '';
  }
  if ('response' in event && event.response) {
    const response = event.response;
    if (response.error) return `${response.error.code}: ${response.error.message}`;
    return response.incomplete_details ? response.incomplete_details.reason : '';
  }
  if ('thread' in event && event.thread?.latest_run) {
    const run = event.thread.latest_run;
    return `${event.thread.status === 'busy' ? 'run' : 'latest run'} ${run.id} ${run.status}`;
  }
  return '';
}

/** What happened, without time and ids: `queued -> in_progress`, `cancel requested (stalled)`, `error deadline_exceeded: ...`. */
function whatHappened(event: WatchEvent, color: boolean): string {
  if (isWatchError(event)) return paint(color, 'red', `error ${event.error.code}: ${printable(event.error.message)}`);
  const action = event.type.slice(event.type.indexOf('.') + 1);
  const to = printable(event.to);
  // the action fields exist on runs and responses only
  const { reason: rawReason, stalled_for_ms: stalledForMs, error, tool_call_ids: callIds } = event as Partial<Pick<RunTransitionEvent, 'reason' | 'stalled_for_ms' | 'error' | 'tool_call_ids'>>;
  const reason = rawReason === undefined ? '' : printable(rawReason);
  switch (action) {
    case 'stalled':
      return paint(color, 'yellow', `still ${to} after ${formatDuration(stalledForMs ?? 0)} (stalled)`);
    case 'tool_outputs_submitted':
      return `tool outputs submitted${callIds ? ` (${callIds.join(', ')})` : ''}`;
    case 'cancel_requested':
      return paint(color, 'yellow', `cancel requested${reason ? ` (${reason}${stalledForMs === undefined ? '' : ` for ${formatDuration(stalledForMs)}`})` : ''}`);
    case 'action_failed':
      return paint(color, 'red', `action failed${reason ? ` (${reason})` : ''}${error ? `: ${printable(error.message)} (${error.code})` : ''}`);
  }
  const detail = printable(snapshotDetail(event));
  const change = event.from === null ? paintStatus(color, to) : `${printable(event.from)} -> ${paintStatus(color, to)}`;
  return detail ? `${change}  ${detail}` : change;
}

/**
 * One human line for an event (no newline): local time, the id of what is watched, the seq,
 * and what happened, e.g. `14:03:07.512  run_abc  #2  queued -> in_progress`.
 */
export function formatEvent(event: WatchEvent, options: FormatOptions = {}): string {
  const color = options.color ?? false;
  const id = idFieldsOf(event).at(-1)?.[1] ?? '';
  return `${paint(color, 'dim', clock(event.observed_at))}  ${id}  ${paint(color, 'dim', `#${event.seq}`)}  ${whatHappened(event, color)}`;
}

/** What the status line shows. */
export interface StatusView {
  /** Last status seen, `null` before the first answer. */
  readonly status: string | null;
  readonly elapsedMs: number;
  /** Polls answered so far (errors included). */
  readonly polls: number;
  /** Time to the next planned poll, `null` while one is being sent. */
  readonly nextPollInMs: number | null;
  /** The last poll's failure, `null` once a poll succeeded. */
  readonly lastError: string | null;
}

/** The status line's text, e.g. `in_progress  1m 05s elapsed, 14 polls, next poll in 4s, last error: network error ECONNREFUSED`. */
export function formatStatusLine(view: StatusView): string {
  const next = view.nextPollInMs === null ? 'polling now' : `next poll in ${Math.ceil(view.nextPollInMs / 1000)}s`;
  const error = view.lastError === null ? '' : `, last error: ${printable(view.lastError)}`;
  const elapsed = view.elapsedMs < 1000 ? '0s' : formatDuration(view.elapsedMs);
  return `${view.status === null ? 'waiting for the first answer' : printable(view.status)}  ${elapsed} elapsed, ${view.polls} poll${view.polls === 1 ? '' : 's'}, ${next}${error}`;
}

/** The network error code in a poll failure's message (`network error ECONNREFUSED`), else `null`. */
export function networkErrorCode(message: string | undefined): string | null {
  return /^network error (\S+)$/.exec(message ?? '')?.[1] ?? null;
}

/** Codes that mean the server was never reached (a reset or a timeout comes from a server that was). */
const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EAI_FAIL', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN', 'ENETDOWN']);

/** True when a network error code means the server cannot be reached at all, a TLS refusal included. */
export function isUnreachable(code: string): boolean {
  return UNREACHABLE.has(code) || /CERT|TLS|SSL/.test(code);
}

/** A base URL fit to print: no user, password, query or fragment. */
export function displayUrl(baseUrl: string): string {
  try {
    const url = new URL(baseUrl);
    url.username = '';
    url.password = '';
    url.search = '';
    url.hash = '';
    return url.toString().replace(/\/+$/, '');
  } catch {
    return '(invalid base URL)';
  }
}

/** What to check when a request fails on the network, by the error code. */
function networkHint(code: string): string {
  if (code === 'ECONNREFUSED') return 'check --base-url (host and port) and that the server is running';
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN' || code === 'EAI_FAIL') return 'check the host name in --base-url';
  if (/CERT|TLS|SSL/.test(code)) return "check --base-url and the server's TLS certificate";
  return 'check --base-url and the network';
}

/** The one-time notice of an unreachable server: the URL, the code, and that the watch goes on. */
export function unreachableMessage(url: string, code: string): string {
  return `cannot reach ${url} (${code}); still retrying until the deadline: ${networkHint(code)}`;
}

/**
 * The hint of `deadline_exceeded` when the last poll failed without an HTTP answer (a network
 * error or a timeout), else `undefined` (the usual "raise --timeout" then applies).
 */
export function deadlineHint(lastError: string | null, url: string): string | undefined {
  const code = networkErrorCode(lastError ?? undefined);
  if (code !== null) return `the last poll to ${url} failed with ${code}: ${networkHint(code)}`;
  if (lastError?.startsWith('request timed out')) return `the last poll to ${url} timed out: check that the server answers, or raise --request-timeout`;
  return undefined;
}

/** The part of a stream the terminal writes to. */
export interface TerminalStream {
  write(text: string): boolean;
  readonly isTTY?: boolean | undefined;
  /** Width of the terminal; 0 or absent when unknown. */
  readonly columns?: number | undefined;
}

/**
 * A live status line on a terminal: drawn in place (carriage return, erase line), cut to the
 * terminal's width so it never wraps, and erased before any other line is written.
 */
export class StatusLine {
  readonly #stream: TerminalStream;
  readonly #render: () => string;
  readonly #color: boolean;
  #shown = false;
  #closed = false;

  /** @param render - the line's text, asked for at every draw; an empty text draws nothing */
  constructor(stream: TerminalStream, render: () => string, options: { readonly color?: boolean } = {}) {
    this.#stream = stream;
    this.#render = render;
    this.#color = options.color ?? false;
  }

  /** Draws the line again with fresh text. */
  refresh(): void {
    if (this.#closed) return;
    const text = printable(this.#render());
    if (text === '' && !this.#shown) return;
    // a wrapped line could not be erased with one carriage return
    const width = (this.#stream.columns ?? 0) > 1 ? this.#stream.columns! - 1 : 79;
    const cut = text.length > width ? `${text.slice(0, width - 3)}...` : text;
    this.#stream.write(`\r\x1b[2K${paint(this.#color, 'dim', cut)}`);
    this.#shown = text !== '';
  }

  /** Runs `write` (which prints whole lines) with the status line erased before and drawn again after. */
  around(write: () => void): void {
    this.#erase();
    write();
    this.refresh();
  }

  /** Erases the line for good. Idempotent. */
  close(): void {
    this.#erase();
    this.#closed = true;
  }

  #erase(): void {
    if (!this.#shown) return;
    this.#stream.write('\r\x1b[2K');
    this.#shown = false;
  }
}

/** Writes each event as one line, formatted by `format`, with the status line out of the way. Waits for `drain` on backpressure. */
class LineSink implements Sink {
  readonly name = 'stdout';
  readonly #stream: NodeJS.WritableStream;
  readonly #format: (event: WatchEvent) => string;
  readonly #status: StatusLine | null;
  #error: Error | null = null;
  readonly #onError = (error: Error): void => {
    // e.g. EPIPE when the reader went away; reported on the next delivery
    this.#error = error;
  };

  constructor(stream: NodeJS.WritableStream, format: (event: WatchEvent) => string, status: StatusLine | null) {
    this.#stream = stream;
    this.#format = format;
    this.#status = status;
    stream.on('error', this.#onError);
  }

  async deliver(event: WatchEvent): Promise<void> {
    if (this.#error) throw this.#error;
    let ok = true;
    const write = (): void => void (ok = this.#stream.write(`${this.#format(event)}\n`));
    if (this.#status) this.#status.around(write);
    else write();
    if (!ok) await once(this.#stream, 'drain');
  }

  close(): void {
    this.#stream.off('error', this.#onError);
  }
}

/** What `Terminal.follow` needs of a watcher. */
export interface FollowedWatcher {
  on(event: 'poll', listener: (report: PollReport) => void): unknown;
  off(event: 'poll', listener: (report: PollReport) => void): unknown;
  info(watchId: string): WatchInfo | undefined;
}

/** Options of a `Terminal`. */
export interface TerminalOptions {
  /** `--output`. @default pretty when stdout is a terminal, else ndjson */
  readonly output?: string | undefined;
  /** `--quiet`: no status line. @default false */
  readonly quiet?: boolean | undefined;
  /** Read for `NO_COLOR` and `TERM`. @default process.env */
  readonly env?: NodeJS.ProcessEnv;
  /** Where events go. @default process.stdout */
  readonly stdout?: NodeJS.WriteStream;
  /** Where logs and the status line go. @default process.stderr */
  readonly stderr?: NodeJS.WriteStream;
  /** How often the status line is redrawn. @default 1000 */
  readonly refreshMs?: number;
}

/**
 * What the watch commands show: events on stdout (pretty or NDJSON), logs on stderr one line
 * each, a status line on a terminal, and a notice when the server cannot be reached. A pipe
 * or a file gets the NDJSON and JSON logs it always got, and never a status line.
 */
export class Terminal {
  /** How events are printed. */
  readonly format: OutputFormat;
  readonly #stdout: NodeJS.WriteStream;
  readonly #stderr: NodeJS.WriteStream;
  readonly #env: NodeJS.ProcessEnv;
  readonly #status: StatusLine | null;
  readonly #refreshMs: number;
  #view: (() => string) | null = null;
  #timer: NodeJS.Timeout | undefined;
  #detach: (() => void) | null = null;
  /** The last poll's failure when it had no HTTP answer, and the URL it was sent to. */
  #lastNetworkFailure: { readonly url: string; readonly message: string } | null = null;

  constructor(options: TerminalOptions = {}) {
    this.#stdout = options.stdout ?? process.stdout;
    this.#stderr = options.stderr ?? process.stderr;
    this.#env = options.env ?? process.env;
    this.#refreshMs = options.refreshMs ?? 1000;
    this.format = outputFormat(options.output, this.#stdout.isTTY === true);
    // a dumb terminal cannot erase a line; a pipe or a file must never get one
    const live = this.#stderr.isTTY === true && this.#env.TERM !== 'dumb' && !options.quiet;
    this.#status = live ? new StatusLine(this.#stderr, () => this.#view?.() ?? '', { color: colorAllowed(true, this.#env) }) : null;
  }

  /** Options for `createLogger`: pretty lines without colours under `NO_COLOR`, written around the status line. */
  get loggerOptions(): LoggerOptions {
    const status = this.#status;
    const destination: DestinationStream | undefined = status ? { write: (line: string) => status.around(() => void this.#stderr.write(line)) } : undefined;
    return { color: !this.#env.NO_COLOR && this.#env.TERM !== 'dumb', ...(destination ? { destination } : {}) };
  }

  /** The sink of the events: NDJSON exactly as `StdoutSink` writes it, or one pretty line each. */
  sink(): Sink {
    if (this.format === 'pretty') {
      const color = colorAllowed(this.#stdout.isTTY, this.#env);
      return new LineSink(this.#stdout, (event) => formatEvent(event, { color }), this.#status);
    }
    return this.#status ? new LineSink(this.#stdout, (event) => JSON.stringify(event), this.#status) : new StdoutSink(this.#stdout);
  }

  /**
   * Follows a watch until `close`: feeds the status line, and logs once (warn) when a poll cannot
   * reach `baseUrl` (connection refused, unknown host).
   */
  follow(watcher: FollowedWatcher, watchId: string, baseUrl: string, logger: Logger): void {
    const startedAt = Date.now();
    const url = displayUrl(baseUrl);
    let polls = 0;
    let lastError: string | null = null;
    let warned = false;
    const onPoll = (report: PollReport): void => {
      if (report.watchId !== watchId) return;
      polls += 1;
      lastError = report.outcome === 'ok' ? null : (report.message ?? report.outcome);
      this.#lastNetworkFailure = report.outcome === 'transient' && report.httpStatus === undefined && report.message !== undefined ? { url, message: report.message } : null;
      const code = this.#lastNetworkFailure && networkErrorCode(report.message);
      if (code && isUnreachable(code) && !warned) {
        warned = true;
        logger.warn({ watchId, url, code }, unreachableMessage(url, code));
      }
      // the report comes before the watch plans its next poll: draw once that is done
      if (this.#status) setImmediate(() => this.#status?.refresh());
    };
    watcher.on('poll', onPoll);
    this.#detach = () => watcher.off('poll', onPoll);
    if (!this.#status) return;
    this.#view = () => {
      const info = watcher.info(watchId);
      if (!info) return '';
      const now = Date.now();
      return formatStatusLine({ status: info.status, elapsedMs: now - startedAt, polls, nextPollInMs: info.nextPollAtMs === null ? null : Math.max(0, info.nextPollAtMs - now), lastError });
    };
    this.#status.refresh();
    this.#timer = setInterval(() => this.#status?.refresh(), this.#refreshMs);
    this.#timer.unref();
  }

  /** The hint for `deadline_exceeded` when the last poll failed without an HTTP answer, else `undefined`. */
  deadlineHint(): string | undefined {
    return this.#lastNetworkFailure ? deadlineHint(this.#lastNetworkFailure.message, this.#lastNetworkFailure.url) : undefined;
  }

  /** Stops following and erases the status line; lines printed after it stay clean. Idempotent. */
  close(): void {
    clearInterval(this.#timer);
    this.#detach?.();
    this.#detach = null;
    this.#status?.close();
  }
}
