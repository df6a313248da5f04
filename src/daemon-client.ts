import { once } from 'node:events';
import { parseArgs } from 'node:util';
import { createParser } from 'eventsource-parser';
import type { EventSourceMessage } from 'eventsource-parser';
import type { BackoffPolicy } from './backoff.js';
import { backoffDelayMs, sleep } from './backoff.js';
import { jsonObject } from './client.js';
import { readSecret } from './credentials.js';
import { parseDurationMs } from './duration.js';
import type { ErrorCode } from './errors.js';
import { ConfigError, RunwatchError } from './errors.js';
import { ID_PATTERN } from './resource.js';
import type { WatchState } from './store/store.js';
import { WATCH_STATES } from './store/store.js';

/** Exit codes of the daemon client commands (README "Daemon client"). */
export const CLIENT_EXIT = Object.freeze({
  ok: 0,
  /** The daemon refused the request (4xx other than 401, or 502 `cancel_refused`). */
  apiError: 2,
  usage: 64,
  /** The daemon cannot be reached, does not answer in time, is not a runwatch daemon, or answered 5xx. */
  unreachable: 69,
  /** The daemon answered 401: no control token, or the wrong one. */
  unauthorized: 77,
  sigint: 130,
  sigterm: 143,
});

/** Where the daemon is looked for without `--daemon-url` and `RUNWATCH_DAEMON_URL`. */
export const DEFAULT_DAEMON_URL = 'http://127.0.0.1:8080';

/** Options of a `DaemonClient`. */
export interface DaemonClientOptions {
  /**
   * Base URL of the daemon's control API; `/v1/...` is appended.
   * @default 'http://127.0.0.1:8080'
   */
  readonly url?: string;
  /** The control token, sent as `Authorization: Bearer`; a secret, never printed. */
  readonly token?: string | undefined;
  /**
   * Timeout of one request, from start to the last byte (for `events()`: until the headers).
   * @default 30000
   */
  readonly requestTimeoutMs?: number;
}

/** The stable code of each exit code a daemon request can end with. */
const CLIENT_CODES: Readonly<Record<number, ErrorCode>> = { [CLIENT_EXIT.apiError]: 'daemon_refused', [CLIENT_EXIT.unauthorized]: 'daemon_unauthorized' };

/** A request the daemon client could not complete; `exitCode` says how the CLI ends, `code` is `daemon_unreachable`, `daemon_unauthorized` or `daemon_refused`. */
export class DaemonClientError extends RunwatchError {
  override readonly name = 'DaemonClientError';

  constructor(
    /** One of `CLIENT_EXIT`. */
    readonly exitCode: number,
    message: string,
    /** The HTTP status, when the daemon answered. */
    readonly status?: number,
    /** The API's `error.code`, when it sent one. */
    readonly apiCode?: string,
  ) {
    super(CLIENT_CODES[exitCode] ?? 'daemon_unreachable', message);
  }
}

/** One server-sent event of `GET /v1/events`: its log position, type and JSON payload. */
export interface DaemonEvent {
  /** The SSE id: a log position, or one per shard (`12.40.7`) from a daemon with `store.shards` > 1. */
  readonly pos: string;
  readonly type: string;
  readonly data: string;
}

/** A page of `GET /v1/watches`. */
interface WatchPage {
  readonly data: unknown[];
  readonly next_after: string | null;
}

/** Longest API message repeated on stderr. */
const MAX_MESSAGE_LENGTH = 300;

/** Checks the daemon URL: http(s), no credentials, no query; returns it without trailing slashes. */
export function normalizeDaemonUrl(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(`invalid daemon URL ${JSON.stringify(raw.slice(0, 80))} (--daemon-url or RUNWATCH_DAEMON_URL): use an http(s) URL such as ${DEFAULT_DAEMON_URL}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new ConfigError(`invalid daemon URL protocol ${JSON.stringify(url.protocol)} (--daemon-url or RUNWATCH_DAEMON_URL): use http or https`);
  // the token has its own variable: a URL ends up in shell history and error messages
  if (url.username || url.password) throw new ConfigError('the daemon URL must not carry credentials: set RUNWATCH_CONTROL_TOKEN (or RUNWATCH_CONTROL_TOKEN_FILE)');
  if (url.search || url.hash) throw new ConfigError('the daemon URL must not carry a query or fragment: give its base, e.g. http://127.0.0.1:8080');
  return url.href.replace(/\/+$/, '');
}

/** One line, printable, bounded: an answer's message is repeated on stderr as is otherwise. */
function oneLine(text: string): string {
  const flat = text.replace(/\p{Cc}+/gu, ' ').trim();
  return flat.length > MAX_MESSAGE_LENGTH ? `${flat.slice(0, MAX_MESSAGE_LENGTH)}...` : flat;
}

/** `{ error: { code, message } }` of an error answer, when it has that shape. */
function apiError(body: string): { code: string; message: string } | undefined {
  // not JSON: the caller says it is not a runwatch daemon
  const error = jsonObject(body)?.error as { code?: unknown; message?: unknown } | null | undefined;
  return typeof error?.code === 'string' && typeof error.message === 'string' ? { code: error.code, message: error.message } : undefined;
}

/** fetch's errors say "fetch failed"; their cause says why (ECONNREFUSED, ENOTFOUND, "other side closed"). */
function describeNetworkError(error: unknown): string {
  const cause = (error as { cause?: { code?: unknown; message?: unknown } } | undefined)?.cause;
  if (typeof cause?.code === 'string' && /^E[A-Z]+$/.test(cause.code)) return cause.code;
  if (typeof cause?.message === 'string') return oneLine(cause.message);
  return oneLine(error instanceof Error ? error.message : String(error));
}

/** What to do next, per API error code, appended to the one-line message. */
const API_HINTS: Readonly<Record<string, string>> = {
  not_found: 'runwatch ls lists the watches',
  callback_not_allowed: "add the callback's host to the daemon's daemon.callbackHosts",
  shutting_down: 'retry after the restart or on another replica',
  store_unavailable: "retry later; check the daemon's store (RUNWATCH_REDIS_URL)",
};

/**
 * A client of the daemon's control API (`runwatch daemon`): watches and the event stream.
 * Every failure is a `DaemonClientError` carrying the CLI's exit code and a one-line message
 * with what to do; the token never appears in one.
 */
export class DaemonClient {
  /** The normalised base URL. */
  readonly url: string;
  readonly #token: string | undefined;
  readonly #requestTimeoutMs: number;

  constructor(options: DaemonClientOptions = {}) {
    this.url = normalizeDaemonUrl(options.url ?? DEFAULT_DAEMON_URL);
    if (options.token !== undefined && /[^\t\x20-\x7e]/.test(options.token)) {
      throw new ConfigError('RUNWATCH_CONTROL_TOKEN holds characters an HTTP header cannot carry (line breaks, non-ASCII): check the variable or its file');
    }
    this.#token = options.token;
    this.#requestTimeoutMs = options.requestTimeoutMs ?? 30_000;
  }

  /** `POST /v1/watches`: the watch, and whether it is new (201) or already existed (200). */
  async add(body: Readonly<Record<string, unknown>>): Promise<{ watch: unknown; created: boolean }> {
    const { status, body: watch } = await this.#request('POST', '/v1/watches', body);
    return { watch, created: status === 201 };
  }

  /** `GET /v1/watches/{id}`. */
  async get(id: string): Promise<unknown> {
    return (await this.#request('GET', `/v1/watches/${encodeURIComponent(id)}`)).body;
  }

  /** `DELETE /v1/watches/{id}`: the watch, now `deleted`. */
  async remove(id: string): Promise<unknown> {
    return (await this.#request('DELETE', `/v1/watches/${encodeURIComponent(id)}`)).body;
  }

  /** `POST /v1/watches/{id}/cancel`: the watch, whose resource the provider was asked to cancel. */
  async cancel(id: string): Promise<unknown> {
    return (await this.#request('POST', `/v1/watches/${encodeURIComponent(id)}/cancel`)).body;
  }

  /** One page of `GET /v1/watches`. */
  async page(query: { state?: WatchState | undefined; limit: number; after?: string | undefined }): Promise<WatchPage> {
    const params = new URLSearchParams({ limit: String(query.limit) });
    if (query.state !== undefined) params.set('state', query.state);
    if (query.after !== undefined) params.set('after', query.after);
    const { body } = await this.#request('GET', `/v1/watches?${params.toString()}`);
    const page = body as Partial<WatchPage> | null;
    if (!Array.isArray(page?.data)) throw this.#notDaemon('a watch list without data');
    return { data: page.data, next_after: typeof page.next_after === 'string' ? page.next_after : null };
  }

  /**
   * Follows `GET /v1/watches` from page to page (`next_after`) and yields up to `limit` watches;
   * `truncated` is set once more were left.
   */
  async *list(query: { state?: WatchState | undefined; limit: number; pageSize: number }, truncated: { value: boolean }): AsyncGenerator<unknown> {
    let remaining = query.limit;
    let after: string | undefined;
    while (remaining > 0) {
      // one more than needed on the last page says whether the limit cut the list
      const size = Math.min(query.pageSize, remaining + 1);
      const page = await this.page({ state: query.state, limit: size, after });
      for (const watch of page.data.slice(0, remaining)) yield watch;
      if (page.data.length > remaining) {
        truncated.value = true;
        return;
      }
      remaining -= page.data.length;
      if (page.next_after === null || page.data.length === 0) return;
      after = page.next_after;
    }
  }

  /**
   * Opens `GET /v1/events` after log cursor `after` (a position, or one per shard; sent as `Last-Event-ID`) and yields its events
   * until the connection ends, `signal` aborts, or nothing (not even a keep-alive) came for
   * `idleTimeoutMs`. Throws `DaemonClientError` when the stream cannot be opened, or (exit code
   * 69) when it is cut. `onOpen` is called once the daemon accepted the stream; `onRetry`
   * receives its `retry:` field.
   */
  async *events(
    filter: Readonly<Record<string, string>>,
    after: string,
    options: { signal: AbortSignal; idleTimeoutMs: number; onOpen?: () => void; onRetry?: (ms: number) => void },
  ): AsyncGenerator<DaemonEvent> {
    const conn = new AbortController();
    const signal = AbortSignal.any([options.signal, conn.signal]);
    let timer = setTimeout(() => conn.abort(new Error(`no answer within ${this.#requestTimeoutMs} ms`)), this.#requestTimeoutMs);
    const idle = (): void => {
      clearTimeout(timer);
      timer = setTimeout(() => conn.abort(new Error(`silent for ${options.idleTimeoutMs} ms`)), options.idleTimeoutMs);
    };
    try {
      const query = new URLSearchParams(filter).toString();
      let res: Response;
      try {
        res = await fetch(`${this.url}/v1/events${query ? `?${query}` : ''}`, { headers: { ...this.#headers('text/event-stream'), 'last-event-id': after }, signal, redirect: 'manual' });
      } catch (error) {
        if (options.signal.aborted) throw error;
        if (conn.signal.aborted) throw new DaemonClientError(CLIENT_EXIT.unreachable, `the daemon at ${this.url} did not answer within ${this.#requestTimeoutMs} ms: check that it is running, or raise --request-timeout`);
        throw this.#networkError(error);
      }
      if (res.status !== 200) throw this.#answerError(res.status, await res.text().catch(() => ''));
      if (!/^text\/event-stream\b/i.test(res.headers.get('content-type') ?? '') || !res.body) throw this.#notDaemon('an answer that is not an event stream');
      options.onOpen?.();
      idle();
      const ready: DaemonEvent[] = [];
      const parser = createParser({
        onEvent: (message: EventSourceMessage) => {
          if (message.id !== undefined && LOG_CURSOR.test(message.id)) ready.push({ pos: message.id, type: message.event ?? 'message', data: message.data });
        },
        onRetry: (ms) => options.onRetry?.(ms),
      });
      const decoder = new TextDecoder();
      try {
        for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
          idle();
          parser.feed(decoder.decode(chunk, { stream: true }));
          yield* ready.splice(0);
        }
      } catch (error) {
        if (options.signal.aborted) throw error;
        const why = conn.signal.aborted ? (conn.signal.reason as Error).message : describeNetworkError(error);
        throw new DaemonClientError(CLIENT_EXIT.unreachable, `the event stream from ${this.url} was cut (${why})`);
      }
    } finally {
      clearTimeout(timer);
      conn.abort();
    }
  }

  /** Sends one JSON request; 2xx answers resolve with their parsed body, the rest throw. */
  async #request(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown): Promise<{ status: number; body: unknown }> {
    const headers = this.#headers('application/json');
    if (body !== undefined) headers['content-type'] = 'application/json';
    let status: number;
    let text: string;
    try {
      const res = await fetch(`${this.url}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: AbortSignal.timeout(this.#requestTimeoutMs), redirect: 'manual' });
      status = res.status;
      text = await res.text();
    } catch (error) {
      throw this.#networkError(error);
    }
    if (status < 200 || status > 299) throw this.#answerError(status, text);
    try {
      return { status, body: JSON.parse(text) as unknown };
    } catch {
      throw this.#notDaemon(`a ${status} answer that is not JSON`);
    }
  }

  #headers(accept: string): Record<string, string> {
    const headers: Record<string, string> = { accept };
    if (this.#token) headers.authorization = `Bearer ${this.#token}`;
    return headers;
  }

  /** A failure before any answer: refused, reset, unknown host, timeout. */
  #networkError(error: unknown): DaemonClientError {
    if ((error as Error | undefined)?.name === 'TimeoutError') {
      return new DaemonClientError(CLIENT_EXIT.unreachable, `the daemon at ${this.url} did not answer within ${this.#requestTimeoutMs} ms: check that it is running, or raise --request-timeout`);
    }
    return new DaemonClientError(CLIENT_EXIT.unreachable, `cannot reach the daemon at ${this.url} (${describeNetworkError(error)}): start it (runwatch daemon) or point --daemon-url / RUNWATCH_DAEMON_URL at it`);
  }

  /** An answer that is not 2xx, as the exit code and line it stands for. */
  #answerError(status: number, body: string): DaemonClientError {
    const error = apiError(body);
    if (status === 401) {
      const what = this.#token ? 'refused the control token' : 'needs a control token';
      return new DaemonClientError(CLIENT_EXIT.unauthorized, `the daemon at ${this.url} ${what} (401 unauthorized): set RUNWATCH_CONTROL_TOKEN (or RUNWATCH_CONTROL_TOKEN_FILE) to the daemon's token`, status, 'unauthorized');
    }
    if (!error) return this.#notDaemon(`HTTP ${status} without an API error`);
    const hint = API_HINTS[error.code];
    const line = `the daemon answered ${status} ${oneLine(error.code)}: ${oneLine(error.message)}${hint ? `; ${hint}` : ''}`;
    // a refused cancel is the provider's no (as for runwatch cancel), not a daemon failure
    const refused = (status >= 400 && status < 500) || error.code === 'cancel_refused';
    return new DaemonClientError(refused ? CLIENT_EXIT.apiError : CLIENT_EXIT.unreachable, line, status, error.code);
  }

  #notDaemon(what: string): DaemonClientError {
    return new DaemonClientError(CLIENT_EXIT.unreachable, `${this.url} sent ${what}: is it a runwatch daemon? check --daemon-url / RUNWATCH_DAEMON_URL`);
  }
}

/** Writes the one-line error and returns the exit code. */
function fail(code: number, message: string): number {
  process.stderr.write(`runwatch: ${message}\n`);
  return code;
}

/** Writes one JSON line; waits when stdout is full (a slow reader must not grow the heap). */
async function writeLine(line: string, signal?: AbortSignal): Promise<void> {
  if (!process.stdout.write(`${line}\n`)) await once(process.stdout, 'drain', { signal });
}

/** Throws `ConfigError` unless `value` is a safe id (nothing else goes into a URL path). */
function validId(what: string, value: string): string {
  if (!ID_PATTERN.test(value)) throw new ConfigError(`invalid ${what} ${JSON.stringify(value.slice(0, 80))}: ids match ${ID_PATTERN.source}`);
  return value;
}

/** The flags every daemon client command takes. */
const DAEMON_FLAGS = {
  'daemon-url': { type: 'string' },
  'request-timeout': { type: 'string', default: '30s' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** The client from `--daemon-url`, `--request-timeout` and the environment (the token from env only: argv is visible to every user). */
function clientFrom(values: { 'daemon-url'?: string | undefined; 'request-timeout': string }, env: NodeJS.ProcessEnv): DaemonClient {
  return new DaemonClient({
    url: values['daemon-url'] ?? (env.RUNWATCH_DAEMON_URL || DEFAULT_DAEMON_URL),
    token: readSecret(env, 'RUNWATCH_CONTROL_TOKEN'),
    requestTimeoutMs: parseDurationMs('--request-timeout', values['request-timeout']),
  });
}

/** Runs a command's requests and turns a `DaemonClientError` into its line and exit code. */
async function run(body: () => Promise<number>): Promise<number> {
  try {
    return await body();
  } catch (error) {
    if (error instanceof DaemonClientError) return fail(error.exitCode, error.message);
    throw error;
  }
}

const CONNECTION_HELP = `Daemon:
  --daemon-url URL            the daemon's control API (env RUNWATCH_DAEMON_URL) [${DEFAULT_DAEMON_URL}]
  --request-timeout DURATION  timeout of one request                         [30s]
  -h, --help                  show this help
  The control token comes from RUNWATCH_CONTROL_TOKEN (or RUNWATCH_CONTROL_TOKEN_FILE), never a flag.`;

const EXIT_HELP = `Exit codes: 0 ok, 2 the daemon refused (not found, conflict, invalid request: its error
code and message on stderr), 64 usage, 69 the daemon cannot be reached (or answered 5xx),
77 unauthorized (set RUNWATCH_CONTROL_TOKEN)`;

/** `--help` of each daemon client command. */
export const DAEMON_CLIENT_HELP: Readonly<Record<'ls' | 'add' | 'get' | 'rm' | 'cancel-watch' | 'tail', string>> = {
  ls: `Usage: runwatch ls [--state active|finished|failed|deleted] [--limit N] [options]

Lists the daemon's watches (GET /v1/watches, page after page), one JSON object per line,
in id order. When more watches than --limit exist, says so on stderr (still exit 0).

Options:
  --state STATE               only watches in this state
  --limit N                   at most N watches                              [100]
  --page-size N               watches per request, 1 to 500                  [100]
${CONNECTION_HELP}

${EXIT_HELP}.
`,
  add: `Usage: runwatch add <thread_id> <run_id> [options]
       runwatch add --response <response_id> [options]

Hands a run (or a background response) to the daemon to watch (POST /v1/watches) and prints
the watch as one JSON line. The same run again prints the existing watch (still exit 0).

Options:
  --response ID               watch a background response instead of a run
  --metadata KEY=VALUE        copied into the watch, repeatable (at most 16 keys)
  --callback-url URL          also POST this watch's events there (its host must be in the
                              daemon's daemon.callbackHosts)
${CONNECTION_HELP}

${EXIT_HELP}.
`,
  get: `Usage: runwatch get <watch_id> [options]

Prints one watch (GET /v1/watches/{id}) as one JSON line: state, status, seq, last snapshot,
error, next poll.

${CONNECTION_HELP}

${EXIT_HELP}.
`,
  rm: `Usage: runwatch rm <watch_id> [options]

Stops watching (DELETE /v1/watches/{id}): the daemon records a watch.error with code aborted
and the watch becomes deleted; the run itself goes on (runwatch cancel-watch cancels it).
Prints the watch as one JSON line.

${CONNECTION_HELP}

${EXIT_HELP}.
`,
  'cancel-watch': `Usage: runwatch cancel-watch <watch_id> [options]

Asks the daemon to cancel the watched run or response at the provider (POST
/v1/watches/{id}/cancel); the watch follows it to cancelled. Prints the watch as one JSON line.
(runwatch cancel <thread_id> <run_id> cancels a run at the provider directly, without a daemon.)

${CONNECTION_HELP}

${EXIT_HELP}; 2 also when the watch is not active
(conflict) or the provider refused the cancel (cancel_refused).
`,
  tail: `Usage: runwatch tail [--run-id ID] [--thread-id ID] [--response-id ID] [--from POS] [options]

Follows the daemon's event stream (GET /v1/events) and prints each event as one JSON line,
until SIGINT or SIGTERM. Without --from it starts with the oldest event the daemon keeps.
When the connection is cut (daemon restart, network), it says so once on stderr and
reconnects with backoff after the last position it printed (Last-Event-ID): no event is
lost or printed twice. On exit it says on stderr which --from resumes.

Options:
  --run-id ID                 only this run's events
  --thread-id ID              only this thread's events
  --response-id ID            only this background response's events
  --from POS                  start after this log position (12.40.7: one
                              per shard, from a daemon with store.shards > 1) [0]
${CONNECTION_HELP}

${EXIT_HELP}, 130 SIGINT, 143 SIGTERM. Once connected,
cuts and 5xx are retried; 2, 69 and 77 then only end it when the daemon refuses the stream.
`,
};

/** Prints the help and returns true when `--help` was given. */
function help(command: keyof typeof DAEMON_CLIENT_HELP, values: { help?: boolean | undefined }): boolean {
  if (values.help) process.stdout.write(DAEMON_CLIENT_HELP[command]);
  return values.help === true;
}

/** Parses a positive integer flag. */
function positiveInteger(name: string, raw: string, max: number): number {
  const value = Number(raw);
  if (!/^\d{1,9}$/.test(raw) || value < 1 || value > max) throw new ConfigError(`invalid ${name} ${JSON.stringify(raw.slice(0, 20))}: use an integer from 1 to ${max}`);
  return value;
}

/** `runwatch ls`. */
export async function lsCommand(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { ...DAEMON_FLAGS, state: { type: 'string' }, limit: { type: 'string', default: '100' }, 'page-size': { type: 'string', default: '100' } },
  });
  if (help('ls', values)) return CLIENT_EXIT.ok;
  if (positionals.length > 0) throw new ConfigError(`runwatch ls takes no arguments, got ${positionals.length}; filter with --state`);
  const state = values.state;
  if (state !== undefined && !WATCH_STATES.includes(state as WatchState)) throw new ConfigError(`invalid --state ${JSON.stringify(state)}: use ${WATCH_STATES.join(', ')}`);
  const limit = positiveInteger('--limit', values.limit, 1_000_000_000);
  const pageSize = positiveInteger('--page-size', values['page-size'], 500);
  const client = clientFrom(values, env);
  return run(async () => {
    const truncated = { value: false };
    for await (const watch of client.list({ state: state as WatchState | undefined, limit, pageSize }, truncated)) await writeLine(JSON.stringify(watch));
    if (truncated.value) process.stderr.write(`runwatch: more watches than --limit ${limit}; raise --limit or filter with --state\n`);
    return CLIENT_EXIT.ok;
  });
}

/** Parses `--metadata KEY=VALUE` flags into an object; a repeated key is an error. */
function metadataFrom(pairs: readonly string[]): Record<string, string> | undefined {
  if (pairs.length === 0) return undefined;
  const metadata: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new ConfigError(`invalid --metadata ${JSON.stringify(pair.slice(0, 80))}: use KEY=VALUE, e.g. ticket=42`);
    const key = pair.slice(0, eq);
    if (Object.hasOwn(metadata, key)) throw new ConfigError(`--metadata ${JSON.stringify(key)} given twice: keep one`);
    metadata[key] = pair.slice(eq + 1);
  }
  return metadata;
}

/** `runwatch add`. */
export async function addCommand(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { ...DAEMON_FLAGS, response: { type: 'string' }, metadata: { type: 'string', multiple: true, default: [] }, 'callback-url': { type: 'string' } },
  });
  if (help('add', values)) return CLIENT_EXIT.ok;
  const body: Record<string, unknown> = {};
  if (values.response !== undefined) {
    if (positionals.length > 0) throw new ConfigError('give <thread_id> <run_id> (a run) or --response <response_id> (a background response), not both');
    body.response_id = validId('response_id', values.response);
  } else {
    if (positionals.length !== 2) throw new ConfigError(`expected <thread_id> <run_id> (or --response <response_id>), got ${positionals.length} argument(s)`);
    body.thread_id = validId('thread_id', positionals[0]!);
    body.run_id = validId('run_id', positionals[1]!);
  }
  const metadata = metadataFrom(values.metadata);
  if (metadata) body.metadata = metadata;
  const callbackUrl = values['callback-url'];
  if (callbackUrl !== undefined) {
    if (!/^https?:\/\/[^/]/i.test(callbackUrl) || !URL.canParse(callbackUrl)) throw new ConfigError(`invalid --callback-url ${JSON.stringify(callbackUrl.slice(0, 80))}: use an http(s) URL`);
    body.callback_url = callbackUrl;
  }
  const client = clientFrom(values, env);
  return run(async () => {
    await writeLine(JSON.stringify((await client.add(body)).watch));
    return CLIENT_EXIT.ok;
  });
}

/** `runwatch get`, `rm` and `cancel-watch`: one watch id, one request, the watch printed. */
export async function watchIdCommand(command: 'get' | 'rm' | 'cancel-watch', args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: DAEMON_FLAGS });
  if (help(command, values)) return CLIENT_EXIT.ok;
  if (positionals.length !== 1) throw new ConfigError(`expected <watch_id>, got ${positionals.length} argument(s); runwatch ls lists the watches`);
  const id = validId('watch id', positionals[0]!);
  const client = clientFrom(values, env);
  return run(async () => {
    const watch = command === 'get' ? await client.get(id) : command === 'rm' ? await client.remove(id) : await client.cancel(id);
    await writeLine(JSON.stringify(watch));
    return CLIENT_EXIT.ok;
  });
}

/** Waits between reconnections of `runwatch tail`: 500 ms doubling to 10 s, half jittered, never below the server's `retry:`. */
const RECONNECT: BackoffPolicy = Object.freeze({ baseMs: 500, capMs: 10_000, growth: 2, jitter: 0.5, maxFloorMs: 10_000 });

/** A stream silent this long is dropped and reopened: the daemon sends a keep-alive every 15 s. */
const TAIL_IDLE_TIMEOUT_MS = 45_000;

/** An SSE id of the daemon: a log position, or one per shard, dot-separated. */
const LOG_CURSOR = /^\d{1,15}(\.\d{1,15}){0,63}$/;

/**
 * True when log cursor `a` is past `b`: a position above it, or (one per shard) above it in
 * some shard; `0` is before everything. Each event of a stream moves one shard's position on.
 */
export function cursorAfter(a: string, b: string): boolean {
  const [x, y] = [a.split('.').map(Number), b.split('.').map(Number)];
  if (y.length === 1 && y[0] === 0) return x.some((pos) => pos > 0);
  return x.length === y.length && x.some((pos, i) => pos > y[i]!);
}

/** `runwatch tail`. */
export async function tailCommand(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { ...DAEMON_FLAGS, 'run-id': { type: 'string' }, 'thread-id': { type: 'string' }, 'response-id': { type: 'string' }, from: { type: 'string', default: '0' } },
  });
  if (help('tail', values)) return CLIENT_EXIT.ok;
  if (positionals.length > 0) throw new ConfigError(`runwatch tail takes no arguments, got ${positionals.length}; filter with --run-id, --thread-id or --response-id`);
  const filter: Record<string, string> = {};
  for (const [flag, field] of [['run-id', 'run_id'], ['thread-id', 'thread_id'], ['response-id', 'response_id']] as const) {
    const value = values[flag];
    if (value !== undefined) filter[field] = validId(`--${flag}`, value);
  }
  if (!LOG_CURSOR.test(values.from)) throw new ConfigError(`invalid --from ${JSON.stringify(values.from.slice(0, 20))}: use a log position (the id of an earlier event, 12.40.7 from a sharded daemon), e.g. 0`);
  const client = clientFrom(values, env);

  const controller = new AbortController();
  let signalExit: number | null = null;
  const onSignal = (name: NodeJS.Signals): void => {
    signalExit ??= name === 'SIGINT' ? CLIENT_EXIT.sigint : CLIENT_EXIT.sigterm;
    controller.abort(new Error(`received ${name}`));
  };
  // the reader went away (e.g. piped into head): nothing more to do
  const onStdoutError = (): void => {
    signalExit ??= CLIENT_EXIT.ok;
    controller.abort(new Error('stdout closed'));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.stdout.on('error', onStdoutError);
  let last = values.from;
  let opened = false;
  let cutReported = false;
  let failures = 0;
  let retryMs = 0;
  const onOpen = (): void => {
    opened = true;
    failures = 0;
    cutReported = false;
  };
  try {
    for (;;) {
      let reason: string;
      try {
        for await (const event of client.events(filter, last, { signal: controller.signal, idleTimeoutMs: TAIL_IDLE_TIMEOUT_MS, onOpen, onRetry: (ms) => (retryMs = ms) })) {
          // positions only grow; one at or below the last printed was printed already
          if (!cursorAfter(event.pos, last)) continue;
          await writeLine(event.data, controller.signal);
          last = event.pos;
        }
        if (controller.signal.aborted) break;
        reason = `the daemon at ${client.url} ended the event stream`;
      } catch (error) {
        if (controller.signal.aborted) break;
        if (!(error instanceof DaemonClientError)) throw error;
        // never connected, or the daemon refuses (401, 4xx): waiting would not help
        if (!opened || error.exitCode !== CLIENT_EXIT.unreachable) return fail(error.exitCode, error.message);
        reason = error.message;
      }
      failures += 1;
      if (!cutReported) {
        cutReported = true;
        process.stderr.write(`runwatch: ${reason}; reconnecting with backoff after position ${last}\n`);
      }
      try {
        await sleep(backoffDelayMs(RECONNECT, { attempt: failures, floorMs: retryMs }), controller.signal);
      } catch {
        break;
      }
    }
    process.stderr.write(`runwatch: stopped after position ${last}; runwatch tail --from ${last} resumes\n`);
    return signalExit ?? CLIENT_EXIT.ok;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    process.stdout.off('error', onStdoutError);
  }
}
