#!/usr/bin/env node
// first: catches the daemon's stop signals before the other modules load (see the module)
import { daemonStopSignal, stopSignalReceived } from './early-signals.js';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import type { ParseArgsConfig } from 'node:util';
import type { Logger } from 'pino';
import type { Credentials, Provider } from './client.js';
import { ApiClient, assertValidHeader, DEFAULT_AZURE_API_VERSION, DEFAULT_BASE_URLS, PROVIDERS } from './client.js';
import { parsePolicyArgument } from './config.js';
import { credentialsFromEnv, readSecret, SECRET_ENV } from './credentials.js';
import type { ConfigSources, DaemonConfig } from './daemon/config.js';
import type { DaemonSecrets } from './daemon/daemon.js';
import { addCommand, lsCommand, tailCommand, watchIdCommand } from './daemon-client.js';
import { parseDurationMs } from './duration.js';
import type { ErrorCode } from './errors.js';
import { ConfigError, ListenError, RunwatchError, StoreOpenError, StoreUnavailableError, StoreWriteError } from './errors.js';
import { createLogger } from './logger.js';
import type { Snapshot } from './resource.js';
import { RESPONSE_KIND, RUN_KIND } from './resource.js';
import { SinkDispatcher } from './sinks/sink.js';
import type { SimulatedResponse, SimulatedRun, SimulatedWebhooks } from './simulator.js';
import { webhookKey } from './standard-webhooks.js';
import { submitToolOutputsCommand } from './submit-tool-outputs.js';
import { quietLogLevel, Terminal } from './terminal.js';
import { VERSION } from './version.js';
import { RunWatcher } from './watcher.js';

/** Exit codes of the CLI; the README's "Exit codes" table lists the same. */
export const EXIT = Object.freeze({
  completed: 0,
  internal: 1,
  watchError: 2,
  requiresAction: 10,
  failed: 20,
  cancelled: 21,
  expired: 22,
  incomplete: 23,
  otherFinal: 24,
  usage: 64,
  unavailable: 69,
  shutdownTimeout: 70,
  cannotCreate: 73,
  sigint: 130,
  sigterm: 143,
});

const STATUS_EXIT: Readonly<Record<string, number>> = {
  completed: EXIT.completed,
  requires_action: EXIT.requiresAction,
  failed: EXIT.failed,
  cancelled: EXIT.cancelled,
  expired: EXIT.expired,
  incomplete: EXIT.incomplete,
};

/** What to do about each watch error, appended to the one-line message. */
const HINTS: Partial<Record<ErrorCode, string>> = {
  run_not_found: 'check the thread and run ids, the base URL, and that the key belongs to the project that owns the run',
  response_not_found: 'check the response id and the base URL; only responses created with background: true (and store: true) can be polled',
  unauthorized: 'check the API key (PORTKEY_API_KEY or OPENAI_API_KEY) and --provider',
  forbidden: 'the key may not read this run; use a key of the project that owns it',
  bad_request: 'check --base-url and --provider: the server rejected the request',
  http_error: 'check --base-url and --provider',
  invalid_id: 'pass the ids exactly as the API returned them (letters, digits, _ and -)',
  deadline_exceeded: 'the run did not finish in time; raise --timeout or check the provider status',
  invalid_config: 'see runwatch --help',
  response_too_large: 'raise --max-response-bytes (watch.maxResponseBytes in the daemon)',
};

const MAIN_HELP = `runwatch ${VERSION}: watch long-running LLM runs until they finish

Usage:
  runwatch watch <thread_id> <run_id> [options]   watch one run, one line per event on stdout
  runwatch watch-response <response_id> [options] watch one background response (Responses API)
  runwatch wait-thread <thread_id> [options]      wait until a thread has no active run
  runwatch cancel <thread_id> <run_id> [options]  cancel a run; cancel-response <response_id> for a response
  runwatch submit-tool-outputs <thread_id> <run_id> --output CALL_ID=VALUE ...
                                                  answer a run at requires_action (after exit 10)
  runwatch daemon [options]                       run the service: control API, durable watches, sinks
  runwatch config [--check] [options]             print the effective daemon configuration (secrets redacted),
                                                  or --check it: every problem listed, exit 64
  runwatch healthcheck [options]                  exit 0 when that daemon answers /healthz, else 1
  runwatch sim [options]                          start the runs simulator on loopback
  runwatch --help | --version

Daemon client (--daemon-url, env RUNWATCH_DAEMON_URL [http://127.0.0.1:8080]; RUNWATCH_CONTROL_TOKEN):
  runwatch ls [--state STATE] [--limit N]         list the daemon's watches, one JSON line each
  runwatch add <thread_id> <run_id> | --response <response_id> [--metadata K=V] [--callback-url URL]
                                                  hand a run or a background response to the daemon
  runwatch get <watch_id>                         show one watch
  runwatch rm <watch_id>                          stop watching (the run goes on)
  runwatch cancel-watch <watch_id>                cancel the watched run at the provider, via the daemon
  runwatch tail [--run-id|--thread-id|--response-id ID] [--from POS]
                                                  follow the daemon's events as NDJSON, resuming after cuts

Run "runwatch <command> --help" for a command's options.
`;

const WATCH_HELP = `Usage: runwatch watch <thread_id> <run_id> [options]

Polls GET {base-url}/threads/{thread_id}/runs/{run_id} until the run ends and writes one
event per status change to stdout: a readable line on a terminal, a JSON object (NDJSON)
when piped. Logs go to stderr; on a terminal a status line there (elapsed, polls, next poll,
last error) is redrawn in place between changes.

Options:
  --provider portkey|openai|azure
                              API dialect (env RUNWATCH_PROVIDER)          [portkey]
  --base-url URL              API base URL (env RUNWATCH_BASE_URL)
                              [portkey: ${DEFAULT_BASE_URLS.portkey}, openai: ${DEFAULT_BASE_URLS.openai},
                               azure: required, the project endpoint]
  --api-version V             azure: the api-version query parameter (env RUNWATCH_API_VERSION) [${DEFAULT_AZURE_API_VERSION}]
  --until terminal|requires_action
                              stop at a terminal status, or already at requires_action [terminal]
  --timeout DURATION          give up after this long (e.g. 90s, 10m)
                              [the run's expires_at + 2m, else 1h]
  --request-timeout DURATION  timeout of one request                       [30s]
  --header 'name: value'      extra request header, repeatable (e.g. x-portkey-custom-host)
  --portkey-provider @SLUG    portkey: the Model Catalog provider, sent as x-portkey-provider
                              (env PORTKEY_PROVIDER; replaces virtual keys)
  --max-response-bytes N      fail the watch when an answer is larger (response_too_large)
                              [runs 8 MiB, responses 64 MiB]
  --watch-id ID               id of the watch in events                    [random w_...]
  --cancel-after-stall DURATION
                              cancel the run when it stays in one status this long (event
                              run.cancel_requested), then watch it to cancelled   [never]
  --policy JSON|@FILE         polling policy overrides, e.g. '{"jitter":0.5}' (README: Polling policy)
  --output pretty|ndjson      one readable line per event, or NDJSON (colours off with NO_COLOR)
                              [pretty when stdout is a terminal, else ndjson]
  -q, --quiet                 no status line and no info logs: events, warnings and errors
  --log-level LEVEL           trace|debug|info|warn|error|silent (env LOG_LEVEL) [info]
  -h, --help                  show this help

A server that cannot be reached (connection refused, unknown host) is retried until the
deadline, and said once on stderr with the URL.

Secrets (each also as <NAME>_FILE, a path to a file holding it):
  portkey: PORTKEY_API_KEY, PORTKEY_VIRTUAL_KEY (deprecated by Portkey), PORTKEY_CONFIG
  openai:  OPENAI_API_KEY
  azure:   AZURE_AI_TOKEN (an Entra ID token); AZURE_AI_TOKEN_FILE is re-read when it changes
  A key is required for the hosted APIs; a self-hosted gateway may need none.

Exit codes: 0 completed, 10 requires_action (--until requires_action), 20 failed,
21 cancelled, 22 expired, 23 incomplete, 2 watch error, 64 usage, 130 SIGINT, 143 SIGTERM.
`;

const WATCH_RESPONSE_HELP = `Usage: runwatch watch-response <response_id> [options]

Polls GET {base-url}/responses/{response_id} (a response created with background: true)
until it is completed, failed, cancelled or incomplete, and writes one JSON event per status
change (response.queued, response.in_progress, response.completed, ...) to stdout, a
readable line on a terminal and NDJSON when piped.

Options: as for runwatch watch (--provider, --base-url, --timeout, --request-timeout,
--header, --watch-id, --policy, --output, --quiet, --log-level), without --until, and:
  --stream                    follow the response's resume stream (created with stream: true)
                              and poll every 30 s+ meanwhile; polls as usual if it cannot stream
A background response has no expires_at: without --timeout the watch gives up after 1h.

Exit codes: 0 completed, 20 failed, 21 cancelled, 23 incomplete, 24 another final status
(any but queued and in_progress ends a background response), 2 watch error, 64 usage,
130 SIGINT, 143 SIGTERM.
`;

const WAIT_THREAD_HELP = `Usage: runwatch wait-thread <thread_id> [options]

The thread guard: polls GET {base-url}/threads/{thread_id}/runs?limit=1 until the thread's
latest run is no longer active (queued, in_progress, requires_action, cancelling), so that
messages and runs may be added. Events thread.busy and thread.idle go to stdout, a readable
line on a terminal and NDJSON when piped.

Options: as for runwatch watch (--provider, --base-url, --api-version, --timeout, --header,
--watch-id, --policy, --output, --quiet, --log-level). Exit codes: 0 idle, 2 watch error (e.g. deadline_exceeded),
64 usage, 130 SIGINT, 143 SIGTERM.
`;

const CANCEL_HELP = `Usage: runwatch cancel <thread_id> <run_id> [options]
       runwatch cancel-response <response_id> [options]

Asks the server to cancel a run (POST .../cancel) or a background response, and prints the
snapshot it answers with (a run goes to cancelling, a response to cancelled) as one JSON line.
Follow it with runwatch watch to see it end.

Options: --provider, --base-url, --api-version, --header, --request-timeout (as for watch).
Exit codes: 0 accepted, 2 refused (e.g. the run already ended) or not found, 64 usage.
`;

const SIM_HELP = `Usage: runwatch sim [options]

Starts an OpenAI/Portkey-compatible runs server with scripted timelines and faults; it also
serves background responses (streamed with ?stream=true&starting_after=N when created with
stream: true) and can POST signed webhooks when they end.
Prints one JSON line with its base URL to stdout; logs go to stderr. Stops on SIGINT/SIGTERM.

Options:
  --port N          port to listen on (0 picks a free one)              [4010]
  --host HOST       address to bind                                    [127.0.0.1]
  --demo            serve the demo runs (thread_demo: run_completed, run_failed, ...)
  --runs FILE       serve the runs in FILE (a JSON array of SimulatedRun)
  --api-key KEY     require this key (env RUNWATCH_SIM_API_KEY)
  --error-style openai|portkey|azure   azure: serves under /api/projects/sim, needs ?api-version= [openai]
  --webhook-url URL POST a signed response.<status> event here when a background response
                    ends; the whsec_ secret comes from env RUNWATCH_SIM_WEBHOOK_SECRET (or _FILE)
  --webhook-drop-rate N   share of those webhooks never sent, 0 to 1   [0]
  --log-level LEVEL                                                     [info]
`;

/** Writes the one-line error and returns the exit code. */
function fail(code: number, message: string): number {
  process.stderr.write(`runwatch: ${message}\n`);
  return code;
}

function parseHeaders(values: readonly string[]): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const raw of values) {
    const colon = raw.indexOf(':');
    if (colon <= 0) throw new ConfigError(`invalid --header ${JSON.stringify(raw.split(':')[0])}: use 'name: value'`);
    const name = raw.slice(0, colon).trim().toLowerCase();
    const value = raw.slice(colon + 1).trim();
    assertValidHeader(name, value);
    headers[name] = value;
  }
  return headers;
}

function oneOf<T extends string>(name: string, value: string, allowed: readonly T[]): T {
  if (!allowed.includes(value as T)) throw new ConfigError(`invalid ${name} ${JSON.stringify(value)}: use ${allowed.join(' or ')}`);
  return value as T;
}

/** The flags that say how to reach the API, shared by every command that sends requests. */
export const CONNECTION_FLAGS = {
  provider: { type: 'string' },
  'base-url': { type: 'string' },
  'api-version': { type: 'string' },
  'request-timeout': { type: 'string', default: '30s' },
  header: { type: 'string', multiple: true, default: [] as string[] },
  'portkey-provider': { type: 'string' },
  'max-response-bytes': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} satisfies NonNullable<ParseArgsConfig['options']>;

/** Client options from the connection flags and the environment (secrets from env only). */
export function connection(
  values: { provider?: string | undefined; 'base-url'?: string | undefined; 'api-version'?: string | undefined; 'request-timeout': string; header: string[]; 'portkey-provider'?: string | undefined; 'max-response-bytes'?: string | undefined },
  env: NodeJS.ProcessEnv,
): { provider: Provider; baseUrl: string | undefined; apiVersion: string | undefined; credentials: Credentials; headers: Record<string, string>; requestTimeoutMs: number; maxResponseBytes: number | undefined } {
  const provider = oneOf<Provider>('--provider', values.provider ?? env.RUNWATCH_PROVIDER ?? 'portkey', PROVIDERS);
  const baseUrl = values['base-url'] ?? env.RUNWATCH_BASE_URL ?? DEFAULT_BASE_URLS[provider];
  if (values['portkey-provider'] !== undefined && provider !== 'portkey') throw new ConfigError('--portkey-provider applies to --provider portkey only');
  const rawMax = values['max-response-bytes'];
  if (rawMax !== undefined && !/^\d{4,12}$/.test(rawMax)) throw new ConfigError(`invalid --max-response-bytes ${JSON.stringify(rawMax.slice(0, 20))}: use a number of bytes of at least 1024, e.g. 134217728`);
  const credentials = credentialsFromEnv(provider, baseUrl, env);
  return {
    provider,
    baseUrl,
    apiVersion: values['api-version'] ?? env.RUNWATCH_API_VERSION,
    credentials: values['portkey-provider'] === undefined ? credentials : { ...credentials, portkeyProvider: values['portkey-provider'] },
    maxResponseBytes: rawMax === undefined ? undefined : Number(rawMax),
    headers: parseHeaders(values.header),
    requestTimeoutMs: parseDurationMs('--request-timeout', values['request-timeout']),
  };
}

async function watchCommand(args: string[], env: NodeJS.ProcessEnv, target: 'run' | 'response' | 'thread'): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      ...CONNECTION_FLAGS,
      until: { type: 'string', default: 'terminal' },
      timeout: { type: 'string' },
      'cancel-after-stall': { type: 'string' },
      'watch-id': { type: 'string' },
      policy: { type: 'string' },
      'log-level': { type: 'string' },
      stream: { type: 'boolean', default: false },
      output: { type: 'string' },
      quiet: { type: 'boolean', short: 'q', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(target === 'run' ? WATCH_HELP : target === 'response' ? WATCH_RESPONSE_HELP : WAIT_THREAD_HELP);
    return EXIT.completed;
  }
  const [first, second] = idArguments(target, positionals);
  if (target !== 'run' && values.until !== 'terminal') throw new ConfigError('--until applies to runs only: a background response has no requires_action');
  if (target !== 'response' && values.stream) throw new ConfigError('--stream applies to background responses only (runwatch watch-response)');
  if (target === 'thread' && values['cancel-after-stall'] !== undefined) throw new ConfigError('--cancel-after-stall applies to runs and responses, not to a thread');
  const cancelAfterStallMs = values['cancel-after-stall'] === undefined ? undefined : parseDurationMs('--cancel-after-stall', values['cancel-after-stall']);
  const until = oneOf('--until', values.until, ['terminal', 'requires_action'] as const);
  const timeoutMs = values.timeout === undefined ? undefined : parseDurationMs('--timeout', values.timeout);
  const terminal = new Terminal({ output: values.output, quiet: values.quiet, env });
  const client = connection(values, env);
  const policy = values.policy === undefined ? undefined : parsePolicyArgument(values.policy);
  const logger = await createLogger(quietLogLevel(values['log-level'] ?? env.LOG_LEVEL ?? 'info', values.quiet), terminal.loggerOptions);
  const watcher = new RunWatcher({ ...client, policy, logger, maxInFlight: 1 });
  const dispatcher = new SinkDispatcher([terminal.sink()], { logger });
  watcher.on('event', (event) => dispatcher.dispatch(event));

  const controller = new AbortController();
  let signalExit: number | null = null;
  const onSignal = (name: NodeJS.Signals): void => {
    // a second signal means "now": skip the graceful path
    if (signalExit !== null) process.exit(signalExit);
    signalExit = name === 'SIGINT' ? EXIT.sigint : EXIT.sigterm;
    logger.info({ signal: name }, 'stopping');
    controller.abort(new Error(`received ${name}`));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const common = { watchId: values['watch-id'], timeoutMs, signal: controller.signal };
    const resolveOn = until === 'requires_action' ? ['requires_action'] : [];
    const handle =
      target === 'run'
        ? watcher.watchRun({ ...common, threadId: first, runId: second, resolveOn, cancelAfterStallMs })
        : target === 'response'
          ? watcher.watchResponse({ ...common, responseId: first, cancelAfterStallMs, push: values.stream ? 'stream' : 'none' })
          : watcher.waitForIdleThread({ ...common, threadId: first });
    terminal.follow(watcher, handle.id, client.baseUrl ?? '', logger);
    // the last event is printed and the status line erased before the closing line
    const snapshot: Snapshot = await handle.promise.finally(async () => {
      await dispatcher.flush();
      terminal.close();
    });
    logger.info({ status: snapshot.status }, `${target} ended`);
    if (target === 'thread') return EXIT.completed;
    // a background response ends on any status but queued and in_progress, documented or not
    return STATUS_EXIT[snapshot.status] ?? (target === 'response' ? EXIT.otherFinal : EXIT.watchError);
  } catch (error) {
    if (signalExit !== null) return signalExit;
    if (error instanceof RunwatchError) {
      if (error.code === 'invalid_config') return fail(EXIT.usage, error.message);
      const hint = (error.code === 'deadline_exceeded' ? terminal.deadlineHint() : undefined) ?? HINTS[error.code];
      return fail(EXIT.watchError, `${error.message} (${error.code})${hint ? `; ${hint}` : ''}`);
    }
    throw error;
  } finally {
    terminal.close();
    await watcher.close();
    await dispatcher.close();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

async function cancelCommand(args: string[], env: NodeJS.ProcessEnv, target: 'run' | 'response'): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: CONNECTION_FLAGS,
  });
  if (values.help) {
    process.stdout.write(CANCEL_HELP);
    return EXIT.completed;
  }
  const [first, second] = idArguments(target, positionals);
  const client = new ApiClient(connection(values, env));
  try {
    const outcome =
      target === 'run'
        ? await client.act(RUN_KIND, validRef(RUN_KIND, { thread_id: first, run_id: second }), 'cancel', {}, { watchId: 'cancel' })
        : await client.act(RESPONSE_KIND, validRef(RESPONSE_KIND, { response_id: first }), 'cancel', {}, { watchId: 'cancel' });
    if (!outcome.ok) {
      const hint = HINTS[outcome.code];
      return fail(EXIT.watchError, `cancel refused: ${outcome.message} (${outcome.code})${hint && outcome.code !== 'bad_request' ? `; ${hint}` : ''}`);
    }
    process.stdout.write(`${JSON.stringify(outcome.snapshot)}\n`);
    return EXIT.completed;
  } finally {
    client.close();
  }
}

/** The ids a command takes: `<thread_id> <run_id>`, `<response_id>` or `<thread_id>`; throws `ConfigError` on a wrong count. */
function idArguments(target: 'run' | 'response' | 'thread', positionals: readonly string[]): [string, string] {
  const usage = { run: '<thread_id> <run_id>', response: '<response_id>', thread: '<thread_id>' }[target];
  if (positionals.length !== (target === 'run' ? 2 : 1)) throw new ConfigError(`expected ${usage}, got ${positionals.length} argument(s)`);
  return positionals as [string, string];
}

/** Validates ids before any request (InvalidIdError is a usage error). */
function validRef<TRef extends object>(kind: { validate(ref: TRef): void }, ref: TRef): TRef {
  try {
    kind.validate(ref);
  } catch (error) {
    throw new ConfigError(error instanceof Error ? error.message : String(error));
  }
  return ref;
}

async function simCommand(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      port: { type: 'string', default: '4010' },
      host: { type: 'string', default: '127.0.0.1' },
      demo: { type: 'boolean', default: false },
      runs: { type: 'string' },
      'api-key': { type: 'string' },
      'error-style': { type: 'string', default: 'openai' },
      'webhook-url': { type: 'string' },
      'webhook-drop-rate': { type: 'string' },
      'log-level': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(SIM_HELP);
    return EXIT.completed;
  }
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65_535) throw new ConfigError(`invalid --port ${JSON.stringify(values.port)}: use 0 to 65535`);
  const errorStyle = oneOf('--error-style', values['error-style'], ['openai', 'portkey', 'azure'] as const);
  const webhooks = simWebhooks(values['webhook-url'], values['webhook-drop-rate'], env);
  const logger: Logger = await createLogger(values['log-level'] ?? env.LOG_LEVEL ?? 'info');
  // loaded here: the simulator (and zod) is not needed by the other commands
  const { DEMO_RESPONSES, DEMO_RUNS, startSimulator } = await import('./simulator.js');
  const runs: SimulatedRun[] = values.demo ? [...DEMO_RUNS] : [];
  const responses: SimulatedResponse[] = values.demo ? [...DEMO_RESPONSES] : [];
  if (values.runs) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(values.runs, 'utf8'));
    } catch (error) {
      throw new ConfigError(`cannot read --runs ${values.runs}: ${error instanceof Error ? error.message : String(error)}`);
    }
    if (!Array.isArray(parsed)) throw new ConfigError(`--runs ${values.runs} must hold a JSON array of runs`);
    // an entry with a responseId is a background response
    for (const entry of parsed as unknown[]) {
      if (typeof entry === 'object' && entry !== null && 'responseId' in entry) responses.push(entry as SimulatedResponse);
      else runs.push(entry as SimulatedRun);
    }
  }
  const apiKey = values['api-key'] ?? readSecret(env, 'RUNWATCH_SIM_API_KEY');
  // listened for before anyone can learn the address: until a listener exists, a SIGTERM kills the process outright
  const stopped = new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  let sim;
  try {
    sim = await startSimulator({ port, host: values.host, apiKey, errorStyle, runs, responses, webhooks });
  } catch (error) {
    if (error instanceof RunwatchError) throw error;
    const code = (error as NodeJS.ErrnoException).code ?? 'error';
    throw new ConfigError(`cannot listen on ${values.host}:${port} (${code}): pick another --port`);
  }
  process.stdout.write(
    `${JSON.stringify({ base_url: sim.baseUrl, runs: runs.map((r) => ({ thread_id: r.threadId, run_id: r.runId })), responses: responses.map((r) => ({ response_id: r.responseId })) })}\n`,
  );
  logger.info({ baseUrl: sim.baseUrl, runs: runs.length, webhookUrl: webhooks?.url }, 'simulator listening');
  const signal = await stopped;
  logger.info({ signal }, 'simulator stopping');
  await sim.close();
  return EXIT.completed;
}

/** The simulator's webhooks from `--webhook-url`, `--webhook-drop-rate` and the secret in the environment (never a flag: argv is visible to every user). */
function simWebhooks(url: string | undefined, dropRate: string | undefined, env: NodeJS.ProcessEnv): SimulatedWebhooks | undefined {
  if (url === undefined) {
    if (dropRate !== undefined) throw new ConfigError('--webhook-drop-rate needs --webhook-url');
    return undefined;
  }
  if (!/^https?:\/\/[^/]/i.test(url) || !URL.canParse(url)) throw new ConfigError(`invalid --webhook-url ${JSON.stringify(url)}: use an http(s) URL`);
  const secret = readSecret(env, 'RUNWATCH_SIM_WEBHOOK_SECRET');
  if (!secret) throw new ConfigError('--webhook-url needs a signing secret: set RUNWATCH_SIM_WEBHOOK_SECRET (or RUNWATCH_SIM_WEBHOOK_SECRET_FILE) to whsec_ followed by base64');
  try {
    webhookKey(secret);
  } catch (error) {
    throw new ConfigError(`RUNWATCH_SIM_WEBHOOK_SECRET: ${error instanceof Error ? error.message : String(error)}`);
  }
  const rate = dropRate === undefined ? undefined : Number(dropRate);
  if (rate !== undefined && (dropRate?.trim() === '' || !(rate >= 0 && rate <= 1))) throw new ConfigError(`invalid --webhook-drop-rate ${JSON.stringify(dropRate)}: use a number from 0 to 1`);
  return { url, secret, ...(rate === undefined ? {} : { dropRate: rate }) };
}

const DAEMON_HELP = `Usage: runwatch daemon [options]
       runwatch config [options]

Runs the service: the control API (default 127.0.0.1:8080), watches kept in a SQLite file
under the data dir, every event delivered at least once to every sink. "config" prints the
configuration the daemon would use, secrets and credentials in URLs redacted; "config --check"
checks it as the daemon's start would and lists every problem (exit 64), or prints one OK line.

Settings: config/default.json < --config FILE (or RUNWATCH_CONFIG) < RUNWATCH_* env < flags.
Options:
  --config FILE|NAME     JSON file merged over the defaults; a bare NAME is looked up as
                         config/NAME[.json] here, then among the shipped examples
                         (default, sqlite-service, redis-replicas)
  --check                config only: check, do not print
  --host HOST            control API address (env RUNWATCH_HOST)         [127.0.0.1]
  --port N               control API port (env RUNWATCH_PORT)            [8080]
  --data-dir DIR         the store, and the file sink's events.ndjson (env RUNWATCH_DATA_DIR) [./data]
  --log-level LEVEL      (env RUNWATCH_LOG_LEVEL)                        [info]
  --set PATH=VALUE       any setting, e.g. --set sinks.webhook.url=http://hooks:9000/runwatch
Secrets (each also as <NAME>_FILE): RUNWATCH_CONTROL_TOKEN (required off loopback),
RUNWATCH_WEBHOOK_SECRET (whsec_...), RUNWATCH_REDIS_URL (redis-stream sink), and the
provider keys of "runwatch watch".

Exit codes: 0 stopped by SIGTERM/SIGINT (also one received during the start), 64 configuration
error, 69 cannot listen, 73 cannot open the store, 70 shutdown took longer than
daemon.shutdownTimeoutMs + 1 s, 1 internal error.
`;

const HEALTHCHECK_HELP = `Usage: runwatch healthcheck [--ready] [--timeout DURATION] [daemon options]

Asks the daemon the configuration describes for GET /healthz (--ready: /readyz), on its
daemon.port, on loopback when daemon.host is every address (0.0.0.0 or ::). The configuration
comes from the same sources as runwatch daemon: config/default.json < --config FILE (or
RUNWATCH_CONFIG) < RUNWATCH_* env (RUNWATCH_PORT, RUNWATCH_DAEMON__PORT, ...) < flags.
The image's HEALTHCHECK runs it.

Options: --ready, --timeout DURATION [2s], and those of runwatch daemon (--config, --host,
--port, --set). Exit codes: 0 answered 200, 1 anything else (the reason on stderr).
`;


function daemonSources(args: string[], env: NodeJS.ProcessEnv, extra: NonNullable<ParseArgsConfig['options']> = {}): { help: boolean; check: boolean; sources: ConfigSources; extra: Record<string, unknown> } {
  const { values } = parseArgs({
    args,
    options: {
      ...extra,
      config: { type: 'string' },
      host: { type: 'string' },
      port: { type: 'string' },
      'data-dir': { type: 'string' },
      'log-level': { type: 'string' },
      set: { type: 'string', multiple: true, default: [] },
      check: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const overrides: Array<[string, string]> = [];
  if (values.host !== undefined) overrides.push(['daemon.host', JSON.stringify(values.host)]);
  if (values.port !== undefined) overrides.push(['daemon.port', values.port]);
  if (values['data-dir'] !== undefined) overrides.push(['daemon.dataDir', JSON.stringify(values['data-dir'])]);
  if (values['log-level'] !== undefined) overrides.push(['daemon.logLevel', JSON.stringify(values['log-level'])]);
  for (const pair of values.set) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new ConfigError(`invalid --set ${JSON.stringify(pair)}: use PATH=VALUE, e.g. daemon.port=9090`);
    overrides.push([pair.slice(0, eq), pair.slice(eq + 1)]);
  }
  return { help: values.help ?? false, check: values.check, sources: { file: values.config, env, overrides }, extra: values };
}

// the daemon's modules (node:sqlite, prom-client) load only for the commands that need them
const loadDaemon = async () => ({
  ...(await import('./daemon/config.js')),
  ...(await import('./daemon/daemon.js')),
  ...(await import('./standard-webhooks.js')),
});

/**
 * The daemon's secrets from the environment. Throws `ConfigError` at the first malformed or
 * missing one; given `problems`, adds each to it instead and carries on without that secret.
 */
async function daemonSecrets(config: DaemonConfig, env: NodeJS.ProcessEnv, problems?: string[]): Promise<DaemonSecrets> {
  const { effectiveBaseUrl, webhookKey } = await loadDaemon();
  const attempt = <T>(read: () => T, fallback: T): T => {
    if (!problems) return read();
    try {
      return read();
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      problems.push(error.message);
      return fallback;
    }
  };
  const webhookSecret = attempt(() => {
    const secret = readSecret(env, 'RUNWATCH_WEBHOOK_SECRET');
    if (secret) webhookKey(secret);
    return secret;
  }, undefined);
  // several during a rotation, separated by spaces or commas
  const openaiWebhookSecrets = attempt(() => {
    const secrets = (readSecret(env, 'RUNWATCH_OPENAI_WEBHOOK_SECRET') ?? '').split(/[\s,]+/).filter((secret) => secret !== '');
    for (const secret of secrets) {
      try {
        webhookKey(secret);
      } catch {
        throw new ConfigError('invalid RUNWATCH_OPENAI_WEBHOOK_SECRET: expected the whsec_... secret of your OpenAI webhook endpoint (several separated by spaces during a rotation)');
      }
    }
    return secrets;
  }, []);
  return {
    openaiWebhookSecrets,
    credentials: attempt(() => credentialsFromEnv(config.watch.provider, effectiveBaseUrl(config), env), {}),
    controlToken: attempt(() => readSecret(env, 'RUNWATCH_CONTROL_TOKEN'), undefined),
    webhookSecret,
    redisUrl: attempt(() => readSecret(env, 'RUNWATCH_REDIS_URL'), undefined),
  };
}

async function configCommand(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { help, check, sources } = daemonSources(args, env);
  if (help) {
    process.stdout.write(DAEMON_HELP);
    return EXIT.completed;
  }
  if (check) return checkConfigCommand(sources, env);
  const { loadConfig, printableConfig } = await loadDaemon();
  const config = loadConfig(sources);
  const provider = config.watch.provider;
  const secrets: Record<string, string | null> = {};
  for (const name of [...Object.values(SECRET_ENV[provider]), 'RUNWATCH_CONTROL_TOKEN', 'RUNWATCH_WEBHOOK_SECRET', 'RUNWATCH_OPENAI_WEBHOOK_SECRET', 'RUNWATCH_REDIS_URL']) {
    if (name) secrets[name] = readSecret(env, name) ? '[REDACTED]' : null;
  }
  process.stdout.write(`${JSON.stringify({ ...printableConfig(config), secrets }, null, 2)}\n`);
  return EXIT.completed;
}

/**
 * `runwatch config --check`: the configuration and the secrets it needs, checked as the
 * daemon's start checks them before opening anything, but every problem listed (one line each,
 * exit 64) instead of the first; one OK line (exit 0) when there is none.
 */
async function checkConfigCommand(sources: ConfigSources, env: NodeJS.ProcessEnv): Promise<number> {
  const { checkConfig, preflightChecks } = await loadDaemon();
  const { config, file, problems: found } = checkConfig(sources);
  const problems = [...found];
  if (config) {
    const secrets = await daemonSecrets(config, env, problems);
    for (const check of preflightChecks(config, secrets)) {
      try {
        check();
      } catch (error) {
        if (!(error instanceof ConfigError)) throw error;
        problems.push(error.message);
      }
    }
  }
  if (!config || problems.length > 0) {
    for (const problem of problems) process.stderr.write(`runwatch: ${problem}\n`);
    return fail(EXIT.usage, `${problems.length} problem${problems.length === 1 ? '' : 's'} in the configuration${file ? ` (${file})` : ''}: fix each as its line says, then run runwatch config --check again`);
  }
  process.stdout.write(`runwatch: config OK (${file ?? 'defaults'}; store ${config.store.kind}, control API on ${config.daemon.host}:${config.daemon.port})\n`);
  return EXIT.completed;
}

async function daemonCommand(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  // installed before the imports when argv names the command; here for any other caller
  const stopping = daemonStopSignal();
  const { help, check, sources } = daemonSources(args, env);
  if (help) {
    process.stdout.write(DAEMON_HELP);
    return EXIT.completed;
  }
  if (check) throw new ConfigError('--check applies to runwatch config: run runwatch config --check');
  const { loadConfig, Daemon, HARD_STOP_MARGIN_MS } = await loadDaemon();
  const config = loadConfig(sources);
  const secrets = await daemonSecrets(config, env);
  const logger = await createLogger(config.daemon.logLevel);
  // from the first signal on, the process has shutdownTimeoutMs (+1 s) to end, started or not
  const armHardStop = (): void => {
    logger.info({ signal: stopSignalReceived() }, 'signal received');
    const hardStop = setTimeout(() => {
      process.stderr.write(`runwatch: shutdown took longer than ${config.daemon.shutdownTimeoutMs} ms; undelivered events stay in the store and go out after the restart\n`);
      process.exit(EXIT.shutdownTimeout);
    }, config.daemon.shutdownTimeoutMs + HARD_STOP_MARGIN_MS);
    hardStop.unref();
  };
  if (stopping.aborted) {
    logger.info({ signal: stopSignalReceived() }, 'signal received before the start: not starting');
    return EXIT.completed;
  }
  stopping.addEventListener('abort', armHardStop, { once: true });
  let daemon: Awaited<ReturnType<typeof Daemon.start>>;
  try {
    // errors of the start (store, address) reach main()'s table of exit codes
    daemon = await Daemon.start(config, secrets, logger, { signal: stopping });
  } catch (error) {
    if (!stopping.aborted || error !== stopping.reason) throw error;
    // what the start had opened is closed; the store holds whatever it had
    logger.info('stopped during the start');
    return EXIT.completed;
  }
  process.on('SIGHUP', () => void daemon.reopen());
  const stop = await Promise.race([
    new Promise<'signal'>((resolve) => {
      if (stopping.aborted) resolve('signal');
      else stopping.addEventListener('abort', () => resolve('signal'), { once: true });
    }),
    daemon.failed.catch((error: unknown) => (error instanceof Error ? error : new Error(String(error)))),
  ]);
  if (stop instanceof Error) {
    await daemon.shutdown();
    return fail(exitCodeOf(stop), `${stop.message}; the store is the source of truth: restart the daemon to resume from it`);
  }
  // repeated signals change nothing: shutdown is idempotent and bounded by the hard stop
  process.on('SIGINT', () => logger.info('already shutting down'));
  process.on('SIGTERM', () => logger.info('already shutting down'));
  await daemon.shutdown();
  return EXIT.completed;
}

async function healthcheckCommand(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { help, sources, extra } = daemonSources(args, env, { ready: { type: 'boolean' }, timeout: { type: 'string' } });
  if (help) {
    process.stdout.write(HEALTHCHECK_HELP);
    return EXIT.completed;
  }
  const timeoutMs = parseDurationMs('--timeout', typeof extra.timeout === 'string' ? extra.timeout : '2s');
  const [{ loadConfig }, { probe }] = await Promise.all([import('./daemon/config.js'), import('./healthcheck.js')]);
  const { daemon } = loadConfig(sources);
  const result = await probe(daemon.host, daemon.port, extra.ready === true ? '/readyz' : '/healthz', timeoutMs);
  if (result.ok) return EXIT.completed;
  return fail(EXIT.internal, `unhealthy: ${result.detail}`);
}

/** Runs the CLI with `argv` (without node and script) and returns the exit code. */
export async function main(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const [command, ...rest] = argv;
  const major = Number(process.versions.node.split('.')[0]);
  if (major < 22) return fail(EXIT.usage, `Node.js ${process.version} is too old: runwatch needs Node.js 22 or newer (24 LTS recommended); in a checkout, npm run runwatch -- ... fetches it`);
  try {
    switch (command) {
      case 'watch':
        return await watchCommand(rest, env, 'run');
      case 'watch-response':
        return await watchCommand(rest, env, 'response');
      case 'wait-thread':
        return await watchCommand(rest, env, 'thread');
      case 'cancel':
        return await cancelCommand(rest, env, 'run');
      case 'cancel-response':
        return await cancelCommand(rest, env, 'response');
      case 'submit-tool-outputs':
        return await submitToolOutputsCommand(rest, env, { flags: CONNECTION_FLAGS, connection, hints: HINTS });
      case 'ls':
        return await lsCommand(rest, env);
      case 'add':
        return await addCommand(rest, env);
      case 'get':
      case 'rm':
      case 'cancel-watch':
        return await watchIdCommand(command, rest, env);
      case 'tail':
        return await tailCommand(rest, env);
      case 'sim':
        return await simCommand(rest, env);
      case 'daemon':
        return await daemonCommand(rest, env);
      case 'config':
        return await configCommand(rest, env);
      case 'healthcheck':
        try {
          return await healthcheckCommand(rest, env);
        } catch (error) {
          // a health check answers 0 or 1 only (Docker reserves 2 and treats the rest alike)
          return fail(EXIT.internal, `unhealthy: ${error instanceof Error ? error.message : String(error)}`);
        }
      case '--version':
      case '-v':
        process.stdout.write(`${VERSION}\n`);
        return EXIT.completed;
      case undefined:
      case '--help':
      case '-h':
      case 'help':
        process.stdout.write(MAIN_HELP);
        return command === undefined ? EXIT.usage : EXIT.completed;
      default:
        return fail(EXIT.usage, `unknown command ${JSON.stringify(command)}; run runwatch --help`);
    }
  } catch (error) {
    if (error instanceof TypeError && 'code' in error && String(error.code).startsWith('ERR_PARSE_ARGS')) {
      return fail(EXIT.usage, `${error.message}; run runwatch ${command ?? ''} --help`);
    }
    const code = exitCodeOf(error);
    if (code !== EXIT.internal || error instanceof RunwatchError) return fail(code, (error as Error).message);
    return fail(EXIT.internal, `internal error: ${error instanceof Error ? error.message : String(error)}; please report it with the log above`);
  }
}

/** Errors at the process boundary, by class: the one table from error to exit code (the README lists the same). */
const EXIT_BY_ERROR: ReadonlyArray<readonly [abstract new (...args: never[]) => Error, number]> = [
  [ConfigError, EXIT.usage],
  [ListenError, EXIT.unavailable],
  [StoreUnavailableError, EXIT.unavailable],
  [StoreOpenError, EXIT.cannotCreate],
  [StoreWriteError, EXIT.internal],
];

/** The exit code of an error that reached the top: by its class, else 1. */
function exitCodeOf(error: unknown): number {
  return EXIT_BY_ERROR.find(([type]) => error instanceof type)?.[1] ?? EXIT.internal;
}

const code = await main(process.argv.slice(2));
process.exit(code);
