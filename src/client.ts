import { hash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import type { Context } from '@opentelemetry/api';
import zlib from 'node:zlib';
import type { ErrorCode } from './errors.js';
import { ConfigError } from './errors.js';
import type { ResourceKind, Snapshot } from './resource.js';
import type { ServerHints } from './schedule.js';
import type { RequestTarget, RequestTrace } from './telemetry.js';
import { endRequestSpan, startRequestSpan, withTraceHeaders } from './telemetry.js';
import { VERSION } from './version.js';

/** Which API dialect to speak: Portkey's gateway, OpenAI (and compatible servers), or Azure AI Foundry Agent Service. */
export type Provider = 'portkey' | 'openai' | 'azure';

/** Every supported provider. */
export const PROVIDERS: readonly Provider[] = ['portkey', 'openai', 'azure'];

/** The `api-version` sent to Azure when none is configured (Foundry Agent Service GA). */
export const DEFAULT_AZURE_API_VERSION = '2025-05-01';

/** What an `api-version` may look like (it goes into the query string as is). */
export const API_VERSION_PATTERN = /^[A-Za-z0-9._-]{1,40}$/;

/** Base URL used when none is given, per provider; Azure has none (each project has its endpoint). */
export const DEFAULT_BASE_URLS: Readonly<Partial<Record<Provider, string>>> = Object.freeze({
  portkey: 'https://api.portkey.ai/v1',
  openai: 'https://api.openai.com/v1',
});

/** Defaults of `ClientOptions`. */
export const DEFAULT_CLIENT: Readonly<{ provider: Provider; requestTimeoutMs: number; maxSockets: number; traceId: boolean }> = Object.freeze({
  provider: 'portkey',
  requestTimeoutMs: 30_000,
  maxSockets: 64,
  traceId: true,
});

/** Credentials for one provider; every field is a secret and never logged. */
export interface Credentials {
  /** `x-portkey-api-key` (portkey) or the `Authorization: Bearer` token (openai). */
  readonly apiKey?: string | undefined;
  /** Portkey only: `x-portkey-virtual-key`. */
  readonly virtualKey?: string | undefined;
  /** Portkey only: `x-portkey-config`, a config id or JSON (may carry provider keys). */
  readonly portkeyConfig?: string | undefined;
  /**
   * Portkey only: `x-portkey-provider`, the `@provider-slug` of a Model Catalog provider
   * (e.g. `@openai-prod`; what replaced virtual keys: a GET has no model to carry it), or a
   * provider name (`openai`) with the provider's own key. Not a secret.
   */
  readonly portkeyProvider?: string | undefined;
  /**
   * Azure only: a file holding the bearer token (e.g. written by a sidecar that refreshes it).
   * Re-read when it changes (checked at most once a second) and after a 401. Not a secret itself.
   */
  readonly tokenFile?: string | undefined;
}

/** Options of an `ApiClient`. */
export interface ClientOptions {
  /**
   * API dialect: auth headers and error shapes.
   * @default 'portkey'
   */
  readonly provider?: Provider;
  /**
   * Base URL; resource paths are appended to it.
   * @default 'https://api.portkey.ai/v1' for portkey, 'https://api.openai.com/v1' for openai
   */
  readonly baseUrl?: string;
  /** Default credentials; a watch may bring its own. */
  readonly credentials?: Credentials;
  /**
   * Extra headers sent with every request (e.g. `x-portkey-provider`, `x-portkey-custom-host`).
   * @default {}
   */
  readonly headers?: Readonly<Record<string, string>>;
  /**
   * Timeout of one request, from start to the last byte.
   * @default 30000
   */
  readonly requestTimeoutMs?: number;
  /**
   * Largest answer body read; a bigger one fails the watch with `response_too_large` (it would
   * be as big on every retry).
   * @default each kind's: 8 MiB for runs and threads, 64 MiB for responses (base64 images)
   */
  readonly maxResponseBytes?: number;
  /**
   * Keep-alive sockets per origin.
   * @default 64
   */
  readonly maxSockets?: number;
  /**
   * Portkey only: send the watch id as `x-portkey-trace-id`.
   * @default true
   */
  readonly traceId?: boolean;
  /**
   * Azure only: the `api-version` query parameter of every request.
   * @default '2025-05-01'
   */
  readonly apiVersion?: string;
}

/** Per-request additions: which watch asks, its signal, its own credentials and headers. */
export interface RequestContext {
  /** The watch id (sent as the Portkey trace id). */
  readonly watchId: string;
  /** Aborts the request. */
  readonly signal?: AbortSignal | undefined;
  /** Overrides the client's credentials for this request. */
  readonly credentials?: Credentials | undefined;
  /** Added to (and overriding) the client's headers for this request. */
  readonly headers?: Readonly<Record<string, string>> | undefined;
  /**
   * OpenTelemetry: the watch's trace. The registered propagator's headers (`traceparent`,
   * `tracestate`) are sent from its context; with `span`, the request gets a client span.
   */
  readonly trace?: RequestTrace | undefined;
  /**
   * The snapshot the watch's last poll gave (`null` before the first). An answer whose body is
   * the one that snapshot was parsed from gives it back instead of a new one: an unchanged
   * poll builds no objects that outlive it.
   * @default undefined (every answer is parsed)
   */
  readonly lastSnapshot?: Snapshot | null | undefined;
}

/** A successful poll: a snapshot and the server's hints. */
export interface PollSuccess<TSnapshot extends Snapshot> {
  readonly ok: true;
  readonly snapshot: TSnapshot;
  readonly hints: ServerHints;
  readonly httpStatus: number;
}

/** A failed poll, already classified. */
export interface PollFailure {
  readonly ok: false;
  /** Transient failures are retried until the deadline; permanent ones end the watch. */
  readonly retryable: boolean;
  readonly code: ErrorCode;
  /** One line, no credentials. */
  readonly message: string;
  readonly httpStatus?: number | undefined;
  readonly requestId?: string | undefined;
  readonly hints: ServerHints;
  /** True when our own signal aborted the request. */
  readonly aborted?: boolean;
}

/** The outcome of a request our own signal aborted: not an error to retry or report. */
export const ABORTED: PollFailure = Object.freeze({ ok: false, retryable: false, code: 'aborted', message: 'request aborted', hints: Object.freeze({}), aborted: true });

/** The outcome of one poll; `retrieve` never throws. */
export type PollOutcome<TSnapshot extends Snapshot> = PollSuccess<TSnapshot> | PollFailure;

type HeaderBag = Readonly<Record<string, string | string[] | undefined>>;

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const SENSITIVE_HEADER = /authorization|api-key|apikey|token|secret|password|cookie|x-portkey-config|x-portkey-virtual-key/i;
const MAX_MESSAGE_LENGTH = 300;

/** Validates a header name and value; throws `ConfigError` naming the header (not the value). */
/** What a Portkey provider may look like: `@slug` from the Model Catalog, or a provider name. */
export const PORTKEY_PROVIDER_PATTERN = /^@?[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** Checks `credentials.portkeyProvider`; throws `ConfigError` with an example. */
export function assertValidPortkeyProvider(value: string | undefined): void {
  if (value !== undefined && !PORTKEY_PROVIDER_PATTERN.test(value)) {
    throw new ConfigError(`invalid Portkey provider ${JSON.stringify(value.slice(0, 60))}: expected a Model Catalog slug such as @openai-prod`);
  }
}

export function assertValidHeader(name: string, value: string): void {
  if (!HEADER_NAME.test(name)) throw new ConfigError(`invalid header name ${JSON.stringify(name)}`);
  if (/[\r\n\0]/.test(value)) throw new ConfigError(`invalid value for header ${name}: it contains a line break`);
}

/** True for headers whose values are secrets (redacted from logs and config dumps). */
export function isSensitiveHeader(name: string): boolean {
  return SENSITIVE_HEADER.test(name);
}

/**
 * Builds the headers of one request; pure, so every watch may carry its own keys. The kind's
 * headers (`openai-beta` for runs) are OpenAI's dialect: sent for `openai` and `portkey`, not
 * for `azure`, whose Agent Service API takes none.
 */
export function buildHeaders(
  provider: Provider,
  credentials: Credentials,
  extra: Readonly<Record<string, string>>,
  watchId: string,
  traceId = true,
  kindHeaders: Readonly<Record<string, string>> = {},
): Record<string, string> {
  const headers: Record<string, string> = { accept: 'application/json', 'user-agent': `runwatch/${VERSION}`, ...(provider === 'azure' ? {} : kindHeaders) };
  if (provider === 'openai' || provider === 'azure') {
    if (credentials.apiKey) headers.authorization = `Bearer ${credentials.apiKey}`;
  } else {
    if (credentials.apiKey) headers['x-portkey-api-key'] = credentials.apiKey;
    if (credentials.virtualKey) headers['x-portkey-virtual-key'] = credentials.virtualKey;
    if (credentials.portkeyConfig) headers['x-portkey-config'] = credentials.portkeyConfig;
    if (credentials.portkeyProvider) headers['x-portkey-provider'] = credentials.portkeyProvider;
    if (traceId) headers['x-portkey-trace-id'] = watchId;
  }
  for (const [name, value] of Object.entries(extra)) headers[name.toLowerCase()] = value;
  return headers;
}

/** Every secret value in credentials and sensitive headers, for redaction. */
export function secretsOf(credentials: Credentials, headers: Readonly<Record<string, string>> = {}): string[] {
  const values = [credentials.apiKey, credentials.virtualKey, credentials.portkeyConfig];
  for (const [name, value] of Object.entries(headers)) if (isSensitiveHeader(name)) values.push(value);
  return values.filter((v): v is string => typeof v === 'string' && v.length >= 4);
}

/**
 * Removes secrets from text that may echo them (a server's 401 message, a URL). Known secret
 * values are replaced, and so is anything shaped like an OpenAI or Portkey key.
 */
export function redactSecrets(text: string, secrets: readonly string[]): string {
  let out = text;
  for (const secret of secrets) out = out.split(secret).join('[REDACTED]');
  return out.replace(/\b(sk|pk|rk)-[A-Za-z0-9_*-]{6,}/g, '$1-[REDACTED]');
}

function header(headers: HeaderBag, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** The hints of an answer that gives none: shared, so the usual answer builds no object for them. */
const NO_HINTS: ServerHints = Object.freeze({ retryAfterMs: undefined, pollAfterMs: undefined });

/** Parses `retry-after-ms`, `retry-after` (seconds or HTTP date) and `openai-poll-after-ms`. */
export function parseHints(headers: HeaderBag, nowMs: number): ServerHints {
  let retryAfterMs = parseNonNegative(header(headers, 'retry-after-ms'));
  if (retryAfterMs === undefined) {
    const raw = header(headers, 'retry-after')?.trim();
    if (raw !== undefined && raw !== '') {
      const seconds = parseNonNegative(raw);
      if (seconds !== undefined) retryAfterMs = seconds * 1000;
      else {
        const at = Date.parse(raw);
        if (Number.isFinite(at)) retryAfterMs = Math.max(0, at - nowMs);
      }
    }
  }
  const pollAfterMs = parseNonNegative(header(headers, 'openai-poll-after-ms'));
  return retryAfterMs === undefined && pollAfterMs === undefined ? NO_HINTS : { retryAfterMs, pollAfterMs };
}

function parseNonNegative(raw: string | undefined): number | undefined {
  if (raw === undefined || !/^\s*\d+(\.\d+)?\s*$/.test(raw)) return undefined;
  const value = Number(raw);
  return Number.isFinite(value) ? value : undefined;
}

/** A JSON text's object, or `undefined` when it is not JSON or not an object. */
export function jsonObject(text: string): Record<string, unknown> | undefined {
  try {
    const parsed = JSON.parse(text) as unknown;
    return typeof parsed === 'object' && parsed !== null ? (parsed as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** Extracts the server's message from an OpenAI/Azure `{error:{message,code}}` or Portkey `{status:"failure",message}` body. */
export function parseServerMessage(body: string): string | undefined {
  const record = jsonObject(body);
  if (!record) return undefined;
  const error = record.error;
  if (typeof error === 'object' && error !== null) {
    const { message, code } = error as Record<string, unknown>;
    if (typeof message === 'string' && message !== '') return typeof code === 'string' && code !== '' ? `${message} (${code})` : message;
  }
  if (typeof error === 'string' && error !== '') return error;
  if (typeof record.message === 'string' && record.message !== '') return record.message;
  return undefined;
}

function oneLine(text: string): string {
  const line = text.replace(/\s+/g, ' ').trim();
  return line.length > MAX_MESSAGE_LENGTH ? `${line.slice(0, MAX_MESSAGE_LENGTH)}...` : line;
}

const PERMANENT_CODES: Readonly<Record<number, ErrorCode>> = { 400: 'bad_request', 401: 'unauthorized', 403: 'forbidden', 422: 'bad_request' };
const TRANSIENT_STATUSES = new Set([408, 409, 429]);

/**
 * Classifies one HTTP answer: the single place that decides what is transient and what is
 * permanent. Transient: 408, 409, 429, 5xx, a 2xx whose body is not a snapshot, an error
 * with `x-should-retry: true`. Permanent: other 4xx (and 3xx: a redirect means a wrong base
 * URL) and `x-should-retry: false`.
 */
export function classifyResponse<TRef extends object, TSnapshot extends Snapshot>(
  kind: ResourceKind<TRef, TSnapshot>,
  statusCode: number,
  headers: HeaderBag,
  body: string,
  options: {
    readonly nowMs: number;
    readonly secrets?: readonly string[];
    /** A 2xx answer's snapshot when its body is known to be the one this snapshot was parsed from: not parsed again. */
    readonly unchanged?: TSnapshot | undefined;
  },
): PollOutcome<TSnapshot> {
  const hints = parseHints(headers, options.nowMs);
  const requestId = header(headers, 'x-request-id') ?? header(headers, 'apim-request-id') ?? header(headers, 'x-ms-request-id');
  const shouldRetry = header(headers, 'x-should-retry');
  if (statusCode >= 200 && statusCode < 300) {
    if (options.unchanged !== undefined) return { ok: true, snapshot: options.unchanged, hints, httpStatus: statusCode };
    let parsed: unknown;
    try {
      parsed = JSON.parse(body);
    } catch {
      parsed = undefined;
    }
    const snapshot = kind.parseSnapshot(parsed);
    if (snapshot) return { ok: true, snapshot, hints, httpStatus: statusCode };
    return { ok: false, retryable: true, code: 'transient', message: `HTTP ${statusCode} with a body that is not a ${kind.name} object`, httpStatus: statusCode, requestId, hints };
  }
  const retryable =
    shouldRetry === 'true' ? true : shouldRetry === 'false' ? false : TRANSIENT_STATUSES.has(statusCode) || statusCode >= 500 || statusCode < 200;
  const code: ErrorCode = retryable ? 'transient' : statusCode === 404 ? kind.notFoundCode : (PERMANENT_CODES[statusCode] ?? 'http_error');
  const serverMessage = parseServerMessage(body);
  const message = oneLine(redactSecrets(`HTTP ${statusCode}${serverMessage ? `: ${serverMessage}` : ''}`, options.secrets ?? []));
  return { ok: false, retryable, code, message, httpStatus: statusCode, requestId, hints };
}

/** Classifies a request that got no HTTP answer (network error, timeout, abort). */
export function classifyRequestError(error: unknown, timeoutMs: number): PollFailure {
  const code = (error as { code?: unknown } | null)?.code;
  if (code === 'ERR_ABORTED' || code === 'ABORT_ERR' || (error instanceof Error && error.name === 'AbortError')) {
    return ABORTED;
  }
  if (code === 'ETIMEDOUT') {
    return { ok: false, retryable: true, code: 'transient', message: `request timed out after ${timeoutMs} ms`, hints: {} };
  }
  // error messages may quote the URL; keep only the code
  return { ok: false, retryable: true, code: 'transient', message: `network error ${typeof code === 'string' ? code : 'unknown'}`, hints: {} };
}

/** Validates and normalises a base URL (http or https, no trailing slash). */
export function normalizeBaseUrl(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(`invalid base URL ${JSON.stringify(raw.slice(0, 200))}: expected e.g. https://api.portkey.ai/v1`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new ConfigError(`invalid base URL protocol ${url.protocol}: use http or https`);
  }
  if (url.username || url.password) throw new ConfigError('the base URL must not carry credentials: use the API key settings');
  return url.toString().replace(/\/+$/, '');
}

/** Actions runwatch can take on a resource: `POST {path}/{action}`. */
export type ResourceAction = 'submit_tool_outputs' | 'cancel';

/** What the engine needs from a client: one classified poll, actions, and closing. */
export interface PollClient {
  /** Polls a resource once; never throws. */
  retrieve<TRef extends object, TSnapshot extends Snapshot>(kind: ResourceKind<TRef, TSnapshot>, ref: TRef, context: RequestContext): Promise<PollOutcome<TSnapshot>>;
  /**
   * POSTs an action (submit tool outputs, cancel); the answer is the resource's new snapshot.
   * Never throws. Optional: a client without it cannot run tool handlers or cancel.
   */
  act?<TRef extends object, TSnapshot extends Snapshot>(kind: ResourceKind<TRef, TSnapshot>, ref: TRef, action: ResourceAction, body: unknown, context: RequestContext): Promise<PollOutcome<TSnapshot>>;
  /**
   * Opens a server-sent event stream on a resource (`{path}?{query}`), e.g. a background
   * response's resume stream. Never throws. Optional: without it a watch only polls.
   */
  openStream?<TRef extends object, TSnapshot extends Snapshot>(kind: ResourceKind<TRef, TSnapshot>, ref: TRef, query: string, context: RequestContext): Promise<StreamOpening>;
  /** Releases sockets. */
  close(): void;
}

/** An event stream as opened: its text body, or why the server did not stream. */
export type StreamOpening =
  /**
   * Status 200 and `text/event-stream`: `body` yields the decoded text; `close()` drops the
   * connection; `complete()` says, once `body` is done, whether the server ended it (not a cut).
   */
  | { readonly ok: true; readonly body: AsyncIterable<string>; close(): void; complete(): boolean }
  /**
   * No stream. `refused`: the server will not stream this resource (a 4xx other than 408, 409
   * and 429, or an answer that is not an event stream); else a transient failure to retry.
   */
  | { readonly ok: false; readonly refused: boolean; readonly failure: PollFailure };

/** An answer body larger than the cap: permanent, it would be as large on every retry. */
class BodyTooLarge extends Error {
  readonly code = 'EBODYTOOLARGE';
}

/** One request to send. */
interface OutgoingRequest {
  readonly method: 'GET' | 'POST';
  readonly path: string;
  /** JSON; a POST without one sends `content-length: 0`. */
  readonly body: string | undefined;
  /** Largest answer body read. */
  readonly maxBytes: number;
  /** The OpenTelemetry context its trace headers come from. */
  readonly trace: Context | undefined;
}

/** An HTTP answer, read whole. */
interface RawResponse {
  readonly statusCode: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: string;
}

/** A request that took longer than `requestTimeoutMs`, end to end. */
class RequestTimeout extends Error {
  readonly code = 'ETIMEDOUT';
}

/**
 * Sends one retrieve request (or an action's POST) and classifies the answer. Keeps one
 * keep-alive agent per client; headers are built once per kind, or per request when a watch
 * brings its own credentials or headers (and for Portkey's per-watch trace id). Never retries
 * by itself (the scheduler does).
 *
 * Built on `node:http`, not got: the poll is the hot path, and in `npm run bench` got cost
 * about twice the CPU per poll and most of the memory at 10,000 watches (see the README).
 */
export class ApiClient implements PollClient {
  /** The provider spoken. */
  readonly provider: Provider;
  /** The normalised base URL. */
  readonly baseUrl: string;
  /** Timeout of one request. */
  readonly requestTimeoutMs: number;
  readonly #credentials: Credentials;
  readonly #headers: Readonly<Record<string, string>>;
  readonly #traceId: boolean;
  readonly #agent: http.Agent;
  /** Created on the first stream: streams never share the polls' sockets. */
  #streamAgent: http.Agent | undefined;
  readonly #transport: typeof http | typeof https;
  readonly #target: { readonly protocol: string; readonly hostname: string; readonly port: string; readonly basePath: string };
  readonly #secrets: readonly string[];
  /** `maxResponseBytes` when set, else each kind's own. */
  readonly #maxResponseBytes: number | undefined;
  /** Per kind, the headers of a request that has no per-watch part, built once (unused when the trace id is per watch). */
  readonly #sharedHeaders = new WeakMap<object, Readonly<Record<string, string>>>();
  /** Azure: `api-version=...` (joined with ? or &); empty for the other providers. */
  readonly #query: string;
  /** Azure: the token file, when the token comes from one. */
  readonly #tokenFile: TokenFile | null;
  /** The origin and server of every request, for its span. */
  readonly #server: { readonly origin: string; readonly address: string; readonly port: number };
  /** The `host` header of every request (sent by us: raw header lists get none from Node). */
  readonly #host: string;
  /** Per header record (shared or traced), its raw `[name, value, ...]` list, built once. */
  readonly #rawHeaders = new WeakMap<object, readonly string[]>();
  /** Per snapshot, the digest of the body it was parsed from: an unchanged answer is not parsed again. */
  readonly #digests = new WeakMap<Snapshot, string>();

  constructor(options: ClientOptions = {}) {
    this.provider = options.provider ?? DEFAULT_CLIENT.provider;
    if (!PROVIDERS.includes(this.provider)) throw new ConfigError(`unknown provider ${JSON.stringify(this.provider)}: use ${PROVIDERS.join(' or ')}`);
    const baseUrl = options.baseUrl ?? DEFAULT_BASE_URLS[this.provider];
    if (baseUrl === undefined) throw new ConfigError('provider azure needs a base URL: the project endpoint, e.g. https://<resource>.services.ai.azure.com/api/projects/<project>');
    this.baseUrl = normalizeBaseUrl(baseUrl);
    this.requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_CLIENT.requestTimeoutMs;
    if (!Number.isInteger(this.requestTimeoutMs) || this.requestTimeoutMs < 1) {
      throw new ConfigError(`Expected \`requestTimeoutMs\` to be a positive integer, got ${JSON.stringify(options.requestTimeoutMs)}`);
    }
    this.#credentials = options.credentials ?? {};
    assertValidPortkeyProvider(this.#credentials.portkeyProvider);
    this.#maxResponseBytes = options.maxResponseBytes;
    if (this.#maxResponseBytes !== undefined && !(Number.isInteger(this.#maxResponseBytes) && this.#maxResponseBytes >= 1024)) {
      throw new ConfigError(`Expected \`maxResponseBytes\` to be an integer of at least 1024, got ${JSON.stringify(options.maxResponseBytes)}`);
    }
    this.#tokenFile = this.provider === 'azure' && this.#credentials.tokenFile && !this.#credentials.apiKey ? new TokenFile(this.#credentials.tokenFile) : null;
    const apiVersion = options.apiVersion ?? DEFAULT_AZURE_API_VERSION;
    if (!API_VERSION_PATTERN.test(apiVersion)) throw new ConfigError(`invalid apiVersion ${JSON.stringify(apiVersion.slice(0, 60))}: expected e.g. ${DEFAULT_AZURE_API_VERSION}`);
    this.#query = this.provider === 'azure' ? `api-version=${apiVersion}` : '';
    this.#headers = options.headers ?? {};
    for (const [name, value] of Object.entries(this.#headers)) assertValidHeader(name, value);
    this.#traceId = options.traceId ?? DEFAULT_CLIENT.traceId;
    this.#secrets = secretsOf(this.#credentials, this.#headers);
    const maxSockets = options.maxSockets ?? DEFAULT_CLIENT.maxSockets;
    const url = new URL(this.baseUrl);
    // parsed once: a URL per request is measurable at thousands of polls per second
    this.#target = { protocol: url.protocol, hostname: url.hostname.replace(/^\[|\]$/g, ''), port: url.port, basePath: url.pathname.replace(/\/+$/, '') };
    this.#transport = url.protocol === 'https:' ? https : http;
    this.#server = { origin: url.origin, address: this.#target.hostname, port: url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : Number(url.port) };
    // what Node would send: the URL's host, with the port only when it is not the default
    this.#host = url.host;
    this.#agent = url.protocol === 'https:' ? new https.Agent({ keepAlive: true, maxSockets }) : new http.Agent({ keepAlive: true, maxSockets });
  }

  /** Polls a resource once. Never throws: every outcome is a `PollOutcome`. */
  retrieve<TRef extends object, TSnapshot extends Snapshot>(kind: ResourceKind<TRef, TSnapshot>, ref: TRef, context: RequestContext): Promise<PollOutcome<TSnapshot>> {
    return this.#call(kind, 'GET', this.#path(kind.path(ref)), undefined, context);
  }

  /** POSTs `{path}/{action}`: a JSON body, none for a cancel (the specs give it none). Never throws; the outcome carries the new snapshot. */
  act<TRef extends object, TSnapshot extends Snapshot>(kind: ResourceKind<TRef, TSnapshot>, ref: TRef, action: ResourceAction, body: unknown, context: RequestContext): Promise<PollOutcome<TSnapshot>> {
    return this.#call(kind, 'POST', this.#path(`${kind.path(ref)}/${action}`), action === 'cancel' ? undefined : JSON.stringify(body ?? {}), context);
  }

  /**
   * Opens `{path}?{query}` as an event stream, on its own agent (a stream holds its socket for
   * minutes; the polls' keep-alive pool must not lend it). Headers must come within
   * `requestTimeoutMs`; after that the stream lasts until either side closes it.
   */
  async openStream<TRef extends object, TSnapshot extends Snapshot>(kind: ResourceKind<TRef, TSnapshot>, ref: TRef, query: string, context: RequestContext): Promise<StreamOpening> {
    const credentials = context.credentials ?? (this.#tokenFile ? { apiKey: this.#tokenFile.current(Date.now()) } : this.#credentials);
    const extra = context.headers ? { ...this.#headers, ...context.headers } : this.#headers;
    const built = { ...buildHeaders(this.provider, credentials, extra, context.watchId, this.#traceId, kind.requestHeaders), accept: 'text/event-stream' };
    const headers = context.trace ? withTraceHeaders(built, context.trace.context) : built;
    const { protocol, hostname, port } = this.#target;
    this.#streamAgent ??= this.#target.protocol === 'https:' ? new https.Agent({ keepAlive: false }) : new http.Agent({ keepAlive: false });
    let res: http.IncomingMessage;
    const req = this.#transport.request({ protocol, hostname, port, path: this.#path(`${kind.path(ref)}?${query}`), method: 'GET', headers, agent: this.#streamAgent, signal: context.signal });
    try {
      res = await new Promise<http.IncomingMessage>((resolve, reject) => {
        const timer = setTimeout(() => req.destroy(new RequestTimeout(`no answer within ${this.requestTimeoutMs} ms`)), this.requestTimeoutMs);
        req.once('error', (error) => {
          clearTimeout(timer);
          reject(error);
        });
        req.once('response', (answer) => {
          clearTimeout(timer);
          resolve(answer);
        });
        req.end();
      });
    } catch (error) {
      if (context.signal?.aborted) return { ok: false, refused: false, failure: ABORTED };
      return { ok: false, refused: false, failure: classifyRequestError(error, this.requestTimeoutMs) };
    }
    const statusCode = res.statusCode ?? 0;
    const eventStream = /^text\/event-stream\b/i.test(res.headers['content-type'] ?? '');
    if (statusCode === 200 && eventStream) {
      const body = decoded(res);
      body.setEncoding('utf8');
      // a failure mid-stream ends the iteration (the caller reconnects), it is not thrown at it
      body.on('error', () => undefined);
      return { ok: true, body: body as AsyncIterable<string>, close: () => req.destroy(), complete: () => res.complete };
    }
    // read a little of the answer for its message, then let the socket go
    const chunks: Buffer[] = [];
    let size = 0;
    try {
      for await (const chunk of decoded(res) as AsyncIterable<Buffer>) {
        chunks.push(chunk);
        size += chunk.length;
        if (size > 64 * 1024) break;
      }
    } catch {
      // the status says enough
    } finally {
      req.destroy();
    }
    const secrets = secretsOf(credentials, extra);
    const text = Buffer.concat(chunks).toString('utf8');
    if (statusCode === 200) {
      return { ok: false, refused: true, failure: { ok: false, retryable: false, code: 'http_error', message: `HTTP 200 without an event stream (content-type ${JSON.stringify(res.headers['content-type'] ?? '')})`, httpStatus: 200, hints: {} } };
    }
    const failure = classifyResponse(kind, statusCode, res.headers, text, { nowMs: Date.now(), secrets });
    if (failure.ok) return { ok: false, refused: true, failure: { ok: false, retryable: false, code: 'http_error', message: `HTTP ${statusCode} without an event stream`, httpStatus: statusCode, hints: {} } };
    return { ok: false, refused: !failure.retryable, failure };
  }

  /** The request path: base path, resource path, then Azure's api-version (after any query the kind has). */
  #path(resourcePath: string): string {
    const path = `${this.#target.basePath}/${resourcePath}`;
    return this.#query === '' ? path : `${path}${path.includes('?') ? '&' : '?'}${this.#query}`;
  }

  /** One request, classified; with `context.trace.span`, inside a client span of its own. */
  #call<TRef extends object, TSnapshot extends Snapshot>(kind: ResourceKind<TRef, TSnapshot>, method: 'GET' | 'POST', path: string, body: string | undefined, context: RequestContext): Promise<PollOutcome<TSnapshot>> {
    const maxBytes = this.#maxResponseBytes ?? kind.maxResponseBytes;
    const parent = context.trace;
    const child = parent?.span ? startRequestSpan(parent.context, method, this.#requestTarget(path), context.watchId) : undefined;
    if (!child) return this.#outcome(kind, { method, path, body, maxBytes, trace: parent?.context }, context);
    return this.#outcome(kind, { method, path, body, maxBytes, trace: child.context }, context).then((outcome) => {
      endRequestSpan(child.span, outcome);
      return outcome;
    });
  }

  /** Where a request goes, for its span. */
  #requestTarget(path: string): RequestTarget {
    const { origin, address, port } = this.#server;
    return { url: `${origin}${path}`, address, port };
  }

  async #outcome<TRef extends object, TSnapshot extends Snapshot>(kind: ResourceKind<TRef, TSnapshot>, request: OutgoingRequest, context: RequestContext): Promise<PollOutcome<TSnapshot>> {
    try {
      const tokens = context.credentials === undefined ? this.#tokenFile : null;
      if (!tokens) return await this.#attempt(kind, request, context, context.credentials);
      // Azure with a token file: after a 401, the file once more and, if the token changed (tokens rotate), one retry
      const token = tokens.current(Date.now());
      const outcome = await this.#attempt(kind, request, context, { apiKey: token });
      if (outcome.ok || outcome.httpStatus !== 401) return outcome;
      const fresh = tokens.current(Date.now(), true);
      return fresh !== undefined && fresh !== token ? await this.#attempt(kind, request, context, { apiKey: fresh }) : outcome;
    } catch (error) {
      if (context.signal?.aborted) return ABORTED;
      if (error instanceof BodyTooLarge) {
        return { ok: false, retryable: false, code: 'response_too_large', message: `the answer is larger than ${request.maxBytes} bytes: raise maxResponseBytes (watch.maxResponseBytes, --max-response-bytes)`, hints: {} };
      }
      return classifyRequestError(error, this.requestTimeoutMs);
    }
  }

  /** One request with these credentials (the client's when `undefined`), classified; rejects on network errors. */
  async #attempt<TRef extends object, TSnapshot extends Snapshot>(
    kind: ResourceKind<TRef, TSnapshot>,
    request: OutgoingRequest,
    context: RequestContext,
    own: Credentials | undefined,
  ): Promise<PollOutcome<TSnapshot>> {
    const credentials = own ?? this.#credentials;
    const extra = context.headers ? { ...this.#headers, ...context.headers } : this.#headers;
    const shared = own === undefined && context.headers === undefined;
    const secrets = shared ? this.#secrets : secretsOf(credentials, extra);
    const once = shared && !(this.provider === 'portkey' && this.#traceId);
    const built = once ? this.#shared(kind) : buildHeaders(this.provider, credentials, extra, context.watchId, this.#traceId, kind.requestHeaders);
    const headers = request.trace ? withTraceHeaders(built, request.trace) : built;
    const response = await this.#send(request, this.#raw(headers, once && headers === built), context.signal);
    const { statusCode, body } = response;
    const last = context.lastSnapshot;
    // a digest, not the body: a run's body (instructions, tools) can be many times the digest's size
    const digest = last !== undefined && statusCode >= 200 && statusCode < 300 ? hash('sha256', body, 'base64') : undefined;
    const unchanged = last && digest !== undefined && this.#digests.get(last) === digest ? (last as TSnapshot) : undefined;
    const outcome = classifyResponse(kind, statusCode, response.headers, body, { nowMs: Date.now(), secrets, unchanged });
    if (digest !== undefined && outcome.ok && outcome.snapshot !== unchanged) this.#digests.set(outcome.snapshot, digest);
    return outcome;
  }

  /** A header record as Node's raw list, with `host` first unless the record brings its own; built once for a shared record. */
  #raw(headers: Readonly<Record<string, string>>, cache: boolean): readonly string[] {
    const known = cache ? this.#rawHeaders.get(headers) : undefined;
    if (known) return known;
    const raw: string[] = headers.host === undefined ? ['host', this.#host] : [];
    for (const name in headers) raw.push(name, headers[name]!);
    if (cache) this.#rawHeaders.set(headers, raw);
    return raw;
  }

  #shared(kind: { readonly requestHeaders: Readonly<Record<string, string>> }): Readonly<Record<string, string>> {
    let headers = this.#sharedHeaders.get(kind);
    if (!headers) {
      headers = buildHeaders(this.provider, this.#credentials, this.#headers, '', false, kind.requestHeaders);
      this.#sharedHeaders.set(kind, headers);
    }
    return headers;
  }

  /**
   * One request, its answer read whole (up to `maxBytes`) within `requestTimeoutMs`; rejects on
   * network errors, abort, timeout and size. Headers go as Node's raw list and the signal is
   * watched here: both spare Node per-request objects (a header map, a stream-end watcher).
   */
  #send({ method, path, body, maxBytes }: OutgoingRequest, headers: readonly string[], signal: AbortSignal | undefined): Promise<RawResponse> {
    return new Promise<RawResponse>((resolve, reject) => {
      if (signal?.aborted) {
        reject(abortError(signal));
        return;
      }
      const { protocol, hostname, port } = this.#target;
      const all = body === undefined ? (method === 'POST' ? [...headers, 'content-length', '0'] : headers) : [...headers, 'content-type', 'application/json', 'content-length', String(Buffer.byteLength(body))];
      const req = this.#transport.request({ protocol, hostname, port, path, method, headers: all as string[], agent: this.#agent });
      let settled = false;
      const done = (): void => {
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const fail = (error: Error): void => {
        if (settled) return;
        done();
        req.destroy();
        reject(error);
      };
      const onAbort = (): void => fail(abortError(signal!));
      const timer = setTimeout(() => fail(new RequestTimeout(`request timed out after ${this.requestTimeoutMs} ms`)), this.requestTimeoutMs);
      signal?.addEventListener('abort', onAbort);
      // `on`, not `once`: each fires at most once here (or is guarded by `settled`), and `once` wraps every listener
      req.on('error', fail);
      req.on('response', (res) => {
        const stream = decoded(res);
        let first: Buffer | undefined;
        let chunks: Buffer[] | undefined;
        let size = 0;
        stream.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size > maxBytes) fail(new BodyTooLarge(`answer larger than ${maxBytes} bytes`));
          else if (first === undefined) first = chunk;
          else (chunks ??= [first]).push(chunk);
        });
        stream.on('error', fail);
        if (stream !== res) res.on('error', fail);
        // a connection cut mid-body closes the response without 'end'
        res.on('close', () => {
          if (!res.complete) fail(Object.assign(new Error('response aborted'), { code: 'ECONNRESET' }));
        });
        stream.on('end', () => {
          if (settled) return;
          done();
          const text = chunks ? Buffer.concat(chunks).toString('utf8') : (first?.toString('utf8') ?? '');
          resolve({ statusCode: res.statusCode ?? 0, headers: res.headers, body: text });
        });
      });
      req.end(body);
    });
  }

  /** Closes idle keep-alive sockets. Idempotent. */
  close(): void {
    this.#agent.destroy();
    this.#streamAgent?.destroy();
  }
}

/** A bearer token kept in a file that another process refreshes. */
class TokenFile {
  readonly #path: string;
  #token: string | undefined;
  #mtimeMs = -1;
  #checkedAtMs = -Infinity;

  constructor(path: string) {
    this.#path = path;
  }

  /** The token; the file is looked at again when a second has passed since, or when forced. */
  current(nowMs: number, force = false): string | undefined {
    if (!force && nowMs - this.#checkedAtMs < 1000) return this.#token;
    this.#checkedAtMs = nowMs;
    try {
      const { mtimeMs } = statSync(this.#path);
      if (force || mtimeMs !== this.#mtimeMs) {
        this.#token = readFileSync(this.#path, 'utf8').trim() || undefined;
        this.#mtimeMs = mtimeMs;
      }
    } catch {
      // keep the last token: a file being replaced may be missing for a moment, and a bad token answers 401 by itself
    }
    return this.#token;
  }
}

/** The error a request our signal stopped rejects with (classified as `aborted`). */
function abortError(signal: AbortSignal): Error {
  return Object.assign(new Error('request aborted', { cause: signal.reason }), { name: 'AbortError', code: 'ABORT_ERR' });
}

/** The body stream, decompressed when a server compressed it although we did not ask. */
function decoded(res: http.IncomingMessage): Readable {
  const encoding = res.headers['content-encoding']?.trim().toLowerCase();
  if (encoding === 'gzip' || encoding === 'x-gzip') return res.pipe(zlib.createGunzip());
  if (encoding === 'deflate') return res.pipe(zlib.createInflate());
  if (encoding === 'br') return res.pipe(zlib.createBrotliDecompress());
  return res;
}
