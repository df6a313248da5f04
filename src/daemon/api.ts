import { createHash, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type { Logger } from 'pino';
import { z } from 'zod';
import { StoreUnavailableError, WatchError } from '../errors.js';
import type { WatchErrorDetails } from '../events.js';
import { ID_PATTERN } from '../resource.js';
import type { Snapshot } from '../resource.js';
import type { EventFilter, StoredEvent, WatchQuery, WatchState, WatchTarget } from '../store/store.js';
import type { ShardedEvent } from '../store/sharded.js';
import { formatLogCursor, parseLogCursor } from '../store/sharded.js';
import { WATCH_STATES } from '../store/store.js';
import { serveUi } from './ui.js';

/** A watch as the API shows it: `kind` and its ids (`thread_id`, `run_id` or `response_id`), then its fields. */
export type WatchView = WatchTarget & WatchViewFields;

/** The fields of a watch view besides its target. */
export interface WatchViewFields {
  readonly id: string;
  readonly state: WatchState;
  readonly status: string | null;
  readonly seq: number;
  readonly metadata: Readonly<Record<string, string>> | null;
  readonly callback_url: string | null;
  readonly next_poll_at: string | null;
  readonly error: WatchErrorDetails | null;
  readonly last_snapshot: Snapshot | null;
  readonly created_at: string;
  readonly updated_at: string;
  /** Since when the watch has had `status` (ISO-8601), `null` before the first poll. */
  readonly status_since: string | null;
  /** Polls sent for this watch (answered or failed). */
  readonly polls: number;
  /** True while the status has lasted past the stall threshold (a `.stalled` event was sent for it). */
  readonly stalled: boolean;
  /** Why it ended (as `error`), else the failure of its last poll while polls fail; `null` when all is well. */
  readonly last_error: { readonly code: string; readonly message: string } | null;
  /** Deliveries of its events not yet made (every sink); `null` where the store does not count them per watch (Redis). */
  readonly sink_backlog: number | null;
}

/** The fleet summary of `GET /v1/fleet`: what the daemon already counts, for the web view's header. */
export interface FleetView {
  /** Active watches by last status (`none` before the first poll): this process's, or the fleet's in Redis mode. */
  readonly active_by_status: Readonly<Record<string, number>>;
  /** Polls this process sent per second, over the last 10 s. */
  readonly polls_per_second: number;
  /** Share of this process's polls answered 429 over the last 60 s (0 to 1). */
  readonly throttled_share: number;
  /** The request budget now. */
  readonly budget: { readonly rate_per_second: number; readonly in_flight: number; readonly queued: number };
  /** Deliveries not yet made and given up on, per sink. */
  readonly outbox: ReadonlyArray<{ readonly sink: string; readonly pending: number; readonly dead: number }>;
  /** Active watches owned by each replica (Redis mode only; absent elsewhere). */
  readonly replicas?: Readonly<Record<string, number>>;
  /** The log's last position (with shards: theirs added up, a count that grows, not a cursor). */
  readonly last_event_pos: number;
  /** The log's end as an SSE id: a stream resumed from it (`Last-Event-ID`) sees every later event; one position per shard with shards (`12.40.7`). */
  readonly last_event_id: string;
}

/** A value, or a promise of it: the embedded store answers at once, a remote one later. */
type MaybePromise<T> = T | Promise<T>;

/** A watch as a client asks for it over the API (validated). */
export type NewWatchInput = WatchTarget & { readonly metadata: Record<string, string> | null; readonly callback_url: string | null };

/** What the API needs from the daemon. */
export interface ControlApiDeps {
  /** Returns `undefined` when the daemon no longer accepts watches (shutting down). */
  addWatch(input: NewWatchInput): MaybePromise<{ watch: WatchView; created: boolean } | undefined>;
  getWatch(id: string): MaybePromise<WatchView | undefined>;
  listWatches(query: WatchQuery): MaybePromise<WatchView[]>;
  /** The fleet summary (`GET /v1/fleet`). */
  fleet(): Promise<FleetView>;
  deleteWatch(id: string): MaybePromise<WatchView | undefined>;
  /**
   * Asks the provider to cancel the watched run or response; the watch goes on to `cancelled`.
   * Resolves `undefined` for an unknown watch; rejects with `WatchError` when the provider refused.
   */
  cancelWatch(id: string): Promise<WatchView | undefined>;
  eventsAfter(pos: number, filter: EventFilter, limit: number): MaybePromise<StoredEvent[]>;
  /**
   * The log of a sharded store (`store.shards` > 1), read instead of `eventsAfter`: the SSE id is
   * one position per shard (`12.40.7`, see `parseLogCursor`).
   * @default undefined (one log: the SSE id is a position)
   */
  readonly shardedLog?: { readonly shards: number; eventsAfter(cursor: readonly number[], filter: EventFilter, limit: number): MaybePromise<ShardedEvent[]> } | undefined;
  /** Calls `listener` whenever events were recorded; returns the unsubscribe function. */
  subscribe(listener: () => void): () => void;
  ready(): MaybePromise<boolean>;
  metrics(): Promise<{ contentType: string; body: string }>;
  /** The inbound webhook route (no token: its signature authenticates it), when configured. */
  readonly hook?: { readonly path: string; receive(headers: http.IncomingHttpHeaders, body: string): Promise<{ status: number; body: unknown }> } | undefined;
}

/** Options of the control API. */
export interface ControlApiOptions {
  /** When set, every route but /healthz and /readyz needs `Authorization: Bearer <token>`. */
  readonly token?: string | undefined;
  readonly maxBodyBytes: number;
  /** Hosts a `callback_url` may point at: `host`, `host:port` or `*.domain`. */
  readonly callbackHosts: readonly string[];
  readonly logger: Logger;
  /** Comment line sent on idle SSE streams. @default 15000 */
  readonly sseKeepAliveMs?: number;
}

/** How much of a refused body is read and dropped so the client gets the answer (a close with unread data resets the connection, and the reset may lose it); past this, the connection is cut. */
const DRAIN_LIMIT_BYTES = 64 * 1024 * 1024;

/** Reads and drops what is left of a request's body, up to `DRAIN_LIMIT_BYTES`. */
function drain(req: http.IncomingMessage): void {
  let size = 0;
  req.on('data', (chunk: Buffer) => {
    size += chunk.length;
    if (size > DRAIN_LIMIT_BYTES) req.destroy();
  });
  req.resume();
}

/** An API error: status, stable code, one-line message. */
class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

const metadataSchema = z
  .record(z.string().min(1).max(64), z.string().max(512))
  .refine((m) => Object.keys(m).length <= 16, 'at most 16 keys');
const createSchema = z
  .object({
    thread_id: z.string().optional(),
    run_id: z.string().optional(),
    response_id: z.string().optional(),
    metadata: metadataSchema.nullable().optional(),
    callback_url: z.string().max(2048).nullable().optional(),
  })
  .strict();

function checkId(field: string, value: string): void {
  if (!ID_PATTERN.test(value)) throw new ApiError(400, 'invalid_id', `${field} must match ${ID_PATTERN.source}`);
}

/** True when `url`'s host is in the allow-list (exact host, host:port, or a `*.` suffix). */
export function callbackAllowed(rawUrl: string, allowed: readonly string[]): boolean {
  let url: URL;
  try {
    url = new URL(rawUrl);
  } catch {
    return false;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return false;
  if (url.username || url.password) return false;
  const host = url.hostname.toLowerCase();
  return allowed.some((entry) => {
    const rule = entry.toLowerCase();
    if (rule.startsWith('*.')) return host.endsWith(rule.slice(1));
    return rule === host || rule === url.host.toLowerCase();
  });
}

function digest(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}

/**
 * Creates the control API server (not yet listening). Bad input gets a 4xx with
 * `{ error: { code, message } }`; nothing a client sends causes a 5xx.
 */
export function createControlApi(deps: ControlApiDeps, options: ControlApiOptions): { server: http.Server; closeStreams(): void } {
  const tokenDigest = options.token ? digest(options.token) : undefined;
  const streams = new Set<http.ServerResponse>();

  const send = (res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void => {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store', ...headers }).end(text);
  };

  const authorize = (req: http.IncomingMessage): void => {
    if (!tokenDigest) return;
    const header = req.headers.authorization ?? '';
    const given = header.startsWith('Bearer ') ? header.slice(7) : '';
    // compare digests: equal length, constant time, whatever the client sent
    if (!timingSafeEqual(digest(given), tokenDigest)) throw new ApiError(401, 'unauthorized', 'missing or wrong bearer token', { 'www-authenticate': 'Bearer' });
  };

  const readBody = async (req: http.IncomingMessage): Promise<string> => {
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > options.maxBodyBytes) throw new ApiError(413, 'body_too_large', `bodies are limited to ${options.maxBodyBytes} bytes`);
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of req) {
      size += (chunk as Buffer).length;
      // read on (and drop) past the limit: leaving the loop would destroy the socket, and the reset could lose the 413
      if (size > DRAIN_LIMIT_BYTES) break;
      if (size <= options.maxBodyBytes) chunks.push(chunk as Buffer);
    }
    if (size > options.maxBodyBytes) throw new ApiError(413, 'body_too_large', `bodies are limited to ${options.maxBodyBytes} bytes`);
    return Buffer.concat(chunks).toString('utf8');
  };

  const readJson = async (req: http.IncomingMessage): Promise<unknown> => {
    const type = req.headers['content-type'] ?? '';
    if (!/^application\/json\b/i.test(type)) throw new ApiError(415, 'unsupported_media_type', 'send Content-Type: application/json');
    const body = await readBody(req);
    try {
      return JSON.parse(body) as unknown;
    } catch {
      throw new ApiError(400, 'invalid_json', 'the body is not valid JSON');
    }
  };

  const createWatch = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    const parsed = createSchema.safeParse(await readJson(req));
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new ApiError(400, 'invalid_request', issue ? `${issue.path.join('.') || 'body'}: ${issue.message}` : 'invalid body');
    }
    const { thread_id, run_id, response_id, metadata, callback_url } = parsed.data;
    let target: WatchTarget;
    if (response_id !== undefined) {
      if (thread_id !== undefined || run_id !== undefined) throw new ApiError(400, 'invalid_request', 'give thread_id and run_id (a run) or response_id (a background response), not both');
      checkId('response_id', response_id);
      target = { kind: 'response', response_id };
    } else {
      if (thread_id === undefined || run_id === undefined) throw new ApiError(400, 'invalid_request', 'thread_id and run_id are required (or response_id for a background response)');
      checkId('thread_id', thread_id);
      checkId('run_id', run_id);
      target = { kind: 'run', thread_id, run_id };
    }
    if (callback_url && !callbackAllowed(callback_url, options.callbackHosts)) {
      throw new ApiError(400, 'callback_not_allowed', 'callback_url must be http(s) on a host listed in daemon.callbackHosts');
    }
    const added = await deps.addWatch({ ...target, metadata: metadata ?? null, callback_url: callback_url ?? null });
    if (!added) throw new ApiError(503, 'shutting_down', 'the daemon is shutting down; retry on another replica or after the restart', { 'retry-after': '5' });
    const { watch, created } = added;
    send(res, created ? 201 : 200, watch, created ? { location: `/v1/watches/${watch.id}` } : {});
  };

  const listWatches = async (url: URL, res: http.ServerResponse): Promise<void> => {
    const state = url.searchParams.get('state') ?? undefined;
    if (state !== undefined && !WATCH_STATES.includes(state as WatchState)) throw new ApiError(400, 'invalid_request', `state must be one of ${WATCH_STATES.join(', ')}`);
    const rawLimit = url.searchParams.get('limit') ?? '100';
    const limit = Number(rawLimit);
    if (!/^\d+$/.test(rawLimit) || limit < 1 || limit > 500) throw new ApiError(400, 'invalid_request', 'limit must be an integer from 1 to 500');
    const after = url.searchParams.get('after') ?? undefined;
    if (after !== undefined) checkId('after', after);
    const status = url.searchParams.get('status') ?? undefined;
    if (status !== undefined && !/^[a-z_]{1,64}$/.test(status)) throw new ApiError(400, 'invalid_request', 'status must be a status name (lower case and _), or none');
    const search = url.searchParams.get('q') || undefined;
    if (search !== undefined && !ID_PATTERN.test(search)) throw new ApiError(400, 'invalid_request', `q must match ${ID_PATTERN.source}`);
    const order = url.searchParams.get('order') ?? 'created';
    if (order !== 'created' && order !== 'attention') throw new ApiError(400, 'invalid_request', 'order must be created or attention');
    const data = await deps.listWatches({ state: state as WatchState | undefined, status, search, order, limit, after });
    send(res, 200, { data, next_after: data.length === limit ? (data.at(-1)?.id ?? null) : null });
  };

  const streamEvents = (req: http.IncomingMessage, url: URL, res: http.ServerResponse): void => {
    const filter: { -readonly [K in keyof EventFilter]: EventFilter[K] } = {};
    for (const field of ['run_id', 'thread_id', 'response_id'] as const) {
      const value = url.searchParams.get(field);
      if (value !== null) {
        checkId(field, value);
        filter[field] = value;
      }
    }
    const rawCursor = (req.headers['last-event-id'] as string | undefined) ?? url.searchParams.get('last_event_id') ?? '0';
    const log = deps.shardedLog ?? { shards: 1, eventsAfter: async (at: readonly number[], f: EventFilter, limit: number) => (await deps.eventsAfter(at[0]!, f, limit)).map((e) => ({ ...e, shard: 0, cursor: [e.pos] })) };
    const parsed = parseLogCursor(rawCursor, log.shards);
    if (!parsed) {
      const shape = log.shards === 1 ? 'a position' : `${log.shards} dot-separated positions, one per shard (or 0)`;
      throw new ApiError(400, 'invalid_request', `Last-Event-ID must be the id of an earlier event: ${shape}`);
    }
    let cursor: readonly number[] = parsed;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    res.write('retry: 1000\n\n');
    streams.add(res);
    let pumping = false;
    let again = false;
    // pull from the store after every notification: ordered, and nothing missed in between
    const pump = async (): Promise<void> => {
      if (pumping) {
        again = true;
        return;
      }
      pumping = true;
      try {
        do {
          again = false;
          for (let batch = await log.eventsAfter(cursor, filter, 500); batch.length > 0 && !res.destroyed; batch = await log.eventsAfter(cursor, filter, 500)) {
            for (const event of batch) {
              const type = (JSON.parse(event.payload) as { type: string }).type;
              cursor = event.cursor;
              if (!res.write(`id: ${formatLogCursor(event.cursor)}\nevent: ${type}\ndata: ${event.payload}\n\n`)) await new Promise((resolve) => res.once('drain', resolve));
            }
          }
        } while (again && !res.destroyed);
      } catch (error) {
        options.logger.warn({ err: error }, 'SSE stream failed');
        res.destroy();
      } finally {
        pumping = false;
      }
    };
    const unsubscribe = deps.subscribe(() => void pump());
    const keepAlive = setInterval(() => res.write(': keep-alive\n\n'), options.sseKeepAliveMs ?? 15_000);
    res.once('close', () => {
      clearInterval(keepAlive);
      unsubscribe();
      streams.delete(res);
    });
    void pump();
  };

  const route = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://runwatch');
    const method = req.method ?? 'GET';
    const path = url.pathname;
    const only = (...allowed: string[]): void => {
      if (!allowed.includes(method)) throw new ApiError(405, 'method_not_allowed', `${method} is not allowed on ${path}`, { allow: allowed.join(', ') });
    };
    if (path === '/healthz') {
      only('GET', 'HEAD');
      send(res, 200, { status: 'ok' });
      return;
    }
    if (path === '/readyz') {
      only('GET', 'HEAD');
      const ready = await deps.ready();
      send(res, ready ? 200 : 503, { status: ready ? 'ready' : 'not_ready' });
      return;
    }
    // the page and its files are public (the page asks for the token); everything under /v1 is not
    if (path === '/ui' || path.startsWith('/ui/')) {
      only('GET', 'HEAD');
      await serveUi(path, method, res);
      return;
    }
    if (deps.hook && path === deps.hook.path) {
      only('POST');
      const answer = await deps.hook.receive(req.headers, await readBody(req));
      send(res, answer.status, answer.body);
      return;
    }
    authorize(req);
    if (path === '/metrics') {
      only('GET');
      const { contentType, body } = await deps.metrics();
      res.writeHead(200, { 'content-type': contentType }).end(body);
      return;
    }
    if (path === '/v1/watches') {
      only('GET', 'POST');
      if (method === 'POST') await createWatch(req, res);
      else await listWatches(url, res);
      return;
    }
    const watchMatch = /^\/v1\/watches\/([^/]+)$/.exec(path);
    if (watchMatch) {
      only('GET', 'DELETE');
      const id = decodeURIComponent(watchMatch[1]!);
      checkId('watch id', id);
      const watch = await (method === 'DELETE' ? deps.deleteWatch(id) : deps.getWatch(id));
      if (!watch) throw new ApiError(404, 'not_found', `no watch ${id}`);
      send(res, 200, watch);
      return;
    }
    const cancelMatch = /^\/v1\/watches\/([^/]+)\/cancel$/.exec(path);
    if (cancelMatch) {
      only('POST');
      const id = decodeURIComponent(cancelMatch[1]!);
      checkId('watch id', id);
      const current = await deps.getWatch(id);
      if (!current) throw new ApiError(404, 'not_found', `no watch ${id}`);
      if (current.state !== 'active') throw new ApiError(409, 'conflict', `watch ${id} is ${current.state}: only an active watch can be cancelled`);
      let watch: WatchView | undefined;
      try {
        watch = await deps.cancelWatch(id);
      } catch (error) {
        if (error instanceof WatchError) throw new ApiError(502, 'cancel_refused', `the provider refused the cancel: ${error.message} (${error.code})`);
        throw error;
      }
      if (!watch) throw new ApiError(404, 'not_found', `no watch ${id}`);
      send(res, 202, watch);
      return;
    }
    if (path === '/v1/fleet') {
      only('GET');
      send(res, 200, await deps.fleet());
      return;
    }
    if (path === '/v1/events') {
      only('GET');
      streamEvents(req, url, res);
      return;
    }
    throw new ApiError(404, 'not_found', `no route ${path}`);
  };

  const server = http.createServer((req, res) => {
    route(req, res).catch((error: unknown) => {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      if (error instanceof ApiError) {
        send(res, error.status, { error: { code: error.code, message: error.message } }, error.headers);
        // read what is left of the body (up to a bound), so the client gets the answer and the next request parses
        if (!req.complete && !req.destroyed) drain(req);
        return;
      }
      if (error instanceof StoreUnavailableError) {
        send(res, 503, { error: { code: 'store_unavailable', message: `${error.message}; retry later` } }, { 'retry-after': '5' });
        return;
      }
      if (error instanceof URIError) {
        send(res, 400, { error: { code: 'invalid_request', message: 'malformed percent-encoding in the path' } });
        return;
      }
      options.logger.error({ err: error, method: req.method, path: req.url?.split('?')[0] }, 'control API handler failed');
      send(res, 500, { error: { code: 'internal', message: 'internal error; see the daemon log' } });
    });
  });
  server.requestTimeout = 30_000;
  server.headersTimeout = 10_000;
  return {
    server,
    closeStreams: () => {
      for (const res of streams) res.end();
    },
  };
}
