// OpenTelemetry through its API only (`@opentelemetry/api`): a span per watch with an event per
// committed event, optional client spans per request, and the trace headers of every request.
// No SDK is loaded here; the daemon brings one when OTEL_EXPORTER_OTLP_ENDPOINT is set
// (`src/daemon/telemetry.ts`). Until something registers a tracer provider, a propagator or a
// context manager, every API call would be a no-op: the API is not even loaded then, so a
// process without OpenTelemetry pays neither its memory nor a call per poll.
import { createRequire } from 'node:module';
import type * as OtelApi from '@opentelemetry/api';
import type { Attributes, Context, Span, TextMapSetter } from '@opentelemetry/api';
import type { WatchErrorDetails, WatchEvent } from './events.js';
import type { ResourceKind, Snapshot } from './resource.js';
import type { WatchState } from './driver.js';
import { VERSION } from './version.js';

/** The instrumentation scope of every span runwatch starts. */
export const TRACER_NAME = 'runwatch';

/** `SpanStatusCode.ERROR` (the API's enum, without loading the API). */
const STATUS_ERROR = 2;

/** The name of a watch's span. */
export const WATCH_SPAN = 'runwatch.watch';

/** Attribute names of OpenTelemetry's stable HTTP client semantic conventions (a test checks them against `@opentelemetry/semantic-conventions`). */
export const HTTP_ATTRIBUTES = Object.freeze({
  method: 'http.request.method',
  url: 'url.full',
  status: 'http.response.status_code',
  serverAddress: 'server.address',
  serverPort: 'server.port',
  errorType: 'error.type',
});

/** What a request carries of its watch's trace (`RequestContext.trace`). */
export interface RequestTrace {
  /** The context of the watch's span: the request's trace headers come from it, its own span (if any) is a child. */
  readonly context: Context;
  /** Give the request a client span of its own (the per-poll spans). */
  readonly span: boolean;
}

/** The span of a watch, for as long as its host holds the watch object. */
export interface WatchTrace {
  readonly span: Span;
  /** Given to every request of the watch: built once, so a poll allocates nothing for it. */
  readonly request: RequestTrace;
  /** Ended: nothing more is recorded on it. */
  ended: boolean;
}

/** What a watch span is started from. */
interface Traced {
  readonly id: string;
  readonly kind: ResourceKind<object, Snapshot>;
  readonly ref: object;
  readonly progress: { readonly seq: number; readonly status: string | null };
}

/**
 * Where every copy of the API (major version 1) keeps what was registered: the tracer
 * provider, the propagator, the context manager. Absent until something registers one.
 */
const API_GLOBAL = Symbol.for('opentelemetry.js.api.1');
let loaded: typeof OtelApi | undefined;

/**
 * The OpenTelemetry API once anything was registered with it (by the application's SDK, or
 * the daemon's), else `undefined`: loaded then (its CommonJS build, synchronously; every copy
 * shares the registrations through the global above), never before.
 */
export function otelApi(): typeof OtelApi | undefined {
  if (loaded) return loaded;
  if ((globalThis as Record<symbol, unknown>)[API_GLOBAL] === undefined) return undefined;
  loaded = createRequire(import.meta.url)('@opentelemetry/api') as typeof OtelApi;
  return loaded;
}

/** The active context (the caller's span, with a context manager registered), `undefined` without OpenTelemetry. */
export function activeContext(): Context | undefined {
  return otelApi()?.context.active();
}

/** Runs `fn` in the watch's context (spans it starts are children of the watch's, with a context manager registered). */
export function inWatchContext<T>(t: WatchTrace | null, fn: () => T): T {
  const api = t ? otelApi() : undefined;
  return api ? api.context.with(t!.request.context, fn) : fn();
}

/** The attributes naming a watch and what it watches: `runwatch.watch.id`, `runwatch.watch.kind`, `runwatch.thread.id`, `runwatch.run.id`, `runwatch.response.id`. */
export function watchAttributes(w: Pick<Traced, 'id' | 'kind' | 'ref'>): Attributes {
  const attributes: Attributes = { 'runwatch.watch.id': w.id, 'runwatch.watch.kind': w.kind.name };
  for (const field of w.kind.idFields as readonly string[]) attributes[`runwatch.${field.replace(/_id$/, '.id')}`] = (w.ref as Record<string, string>)[field];
  return attributes;
}

/**
 * Starts the span of a watch (`runwatch.watch`), a child of `parent` (the caller's context
 * when the watch was started), or a root; `null` without OpenTelemetry. `runwatch.watch.resumed`
 * says it continues a stored watch (a restart, another replica's step).
 */
export function startWatchSpan(w: Traced, parent: Context | undefined, tracePolls: boolean): WatchTrace | null {
  const api = otelApi();
  if (!api) return null;
  const attributes = watchAttributes(w);
  attributes['runwatch.watch.resumed'] = w.progress.seq > 0;
  if (w.progress.status !== null) attributes['runwatch.status'] = w.progress.status;
  const base = parent ?? api.ROOT_CONTEXT;
  const span = api.trace.getTracer(TRACER_NAME, VERSION).startSpan(WATCH_SPAN, { kind: api.SpanKind.INTERNAL, attributes }, base);
  // a span nobody records (no SDK, or not sampled) gets no child spans either
  return { span, request: { context: api.trace.setSpan(base, span), span: tracePolls && span.isRecording() }, ended: false };
}

/**
 * One span event per committed event, named by its type (`run.in_progress`,
 * `run.tool_outputs_submitted`, `watch.error`, ...): `seq`, `from`, `to` and, where the event
 * has them, `reason`, `stalled_for_ms`, `tool_call_ids`, `error.code`, `http_status`. Never a
 * snapshot or a message: they may hold what a user or a server wrote.
 */
export function recordEvents(t: WatchTrace, events: readonly WatchEvent[]): void {
  if (t.ended || !t.span.isRecording()) return;
  for (const event of events) {
    const attributes: Attributes = { seq: event.seq };
    if (event.from !== null) attributes.from = event.from;
    if (event.to !== null) {
      attributes.to = event.to;
      t.span.setAttribute('runwatch.status', event.to);
    }
    if ('reason' in event && event.reason !== undefined) attributes.reason = event.reason;
    if ('stalled_for_ms' in event && event.stalled_for_ms !== undefined) attributes.stalled_for_ms = event.stalled_for_ms;
    if ('tool_call_ids' in event && event.tool_call_ids !== undefined) attributes.tool_call_ids = [...event.tool_call_ids];
    const error: WatchErrorDetails | undefined = 'error' in event ? event.error : undefined;
    if (error) {
      attributes['error.code'] = error.code;
      if (error.http_status !== undefined) attributes.http_status = error.http_status;
    }
    t.span.addEvent(event.type, attributes);
  }
}

/**
 * Ends a watch's span as the watch ends: `runwatch.watch.outcome` (`finished`, `failed`,
 * `deleted`), and for an error `runwatch.error.code`, `error.type` and, unless the watch was
 * deleted on purpose, status ERROR with the (already redacted) message.
 */
export function endWatchSpan(t: WatchTrace, state: Exclude<WatchState, 'active'>, error: WatchErrorDetails | undefined): void {
  if (t.ended) return;
  t.ended = true;
  t.span.setAttribute('runwatch.watch.outcome', state);
  if (error) {
    t.span.setAttribute('runwatch.error.code', error.code);
    t.span.setAttribute(HTTP_ATTRIBUTES.errorType, error.code);
    if (state === 'failed') t.span.setStatus({ code: STATUS_ERROR, message: error.message });
  }
  t.span.end();
}

/** Ends a watch's span when its host lets the watch object go without the watch ending (`runwatch.watch.outcome` `suspended`). */
export function suspendWatchSpan(t: WatchTrace): void {
  if (t.ended) return;
  t.ended = true;
  t.span.setAttribute('runwatch.watch.outcome', 'suspended');
  t.span.end();
}

/** Where `propagation.inject` writes: one holder, reused (injection is synchronous), so a poll with nothing to inject allocates nothing. */
const HOLDER: { headers: Record<string, string> | undefined } = { headers: undefined };
const SETTER: TextMapSetter<typeof HOLDER> = {
  set(carrier, key, value) {
    (carrier.headers ??= {})[key.toLowerCase()] = value;
  },
};

/**
 * The headers with those of the registered propagator added (`traceparent`, `tracestate`);
 * the same object when it adds none (no SDK: the no-op propagator). A propagator that throws
 * costs its headers, never the request.
 */
export function withTraceHeaders(headers: Readonly<Record<string, string>>, context: Context): Readonly<Record<string, string>> {
  const api = otelApi();
  if (!api) return headers;
  let injected: Record<string, string> | undefined;
  try {
    api.propagation.inject(context, HOLDER, SETTER);
    injected = HOLDER.headers;
  } catch {
    injected = undefined;
  } finally {
    HOLDER.headers = undefined;
  }
  return injected === undefined ? headers : { ...headers, ...injected };
}

/** Where a request goes, for its span: the full URL (no credentials: a base URL cannot carry any) and the server. */
export interface RequestTarget {
  readonly url: string;
  readonly address: string;
  readonly port: number;
}

/** Starts a request's client span (named by its method, per the HTTP conventions), a child of the watch's span; with the context to send. */
export function startRequestSpan(parent: Context, method: string, target: RequestTarget, watchId: string): { readonly span: Span; readonly context: Context } | undefined {
  const api = otelApi();
  if (!api) return undefined;
  const span = api.trace.getTracer(TRACER_NAME, VERSION).startSpan(
    method,
    {
      kind: api.SpanKind.CLIENT,
      attributes: {
        [HTTP_ATTRIBUTES.method]: method,
        [HTTP_ATTRIBUTES.url]: target.url,
        [HTTP_ATTRIBUTES.serverAddress]: target.address,
        [HTTP_ATTRIBUTES.serverPort]: target.port,
        'runwatch.watch.id': watchId,
      },
    },
    parent,
  );
  return { span, context: api.trace.setSpan(parent, span) };
}

/**
 * Ends a request's span with how it went: `http.response.status_code` when the server
 * answered, `runwatch.poll.outcome` (`ok`, `transient` or the error code), and for a failure
 * `error.type` (the status code, or the outcome when nothing answered) and status ERROR.
 */
export function endRequestSpan(span: Span, outcome: { readonly ok: boolean; readonly code?: string; readonly httpStatus?: number | undefined }): void {
  if (outcome.httpStatus !== undefined) span.setAttribute(HTTP_ATTRIBUTES.status, outcome.httpStatus);
  span.setAttribute('runwatch.poll.outcome', outcome.ok ? 'ok' : (outcome.code ?? 'transient'));
  if (!outcome.ok) {
    span.setAttribute(HTTP_ATTRIBUTES.errorType, outcome.httpStatus !== undefined && outcome.httpStatus >= 400 ? String(outcome.httpStatus) : (outcome.code ?? 'transient'));
    span.setStatus({ code: STATUS_ERROR });
  }
  span.end();
}
