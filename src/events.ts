import type { ErrorCode } from './errors.js';
import type { ResourceKind, ResponseSnapshot, RunSnapshot, Snapshot } from './resource.js';
import type { Emission, Progress } from './step.js';

/** Fields every event has, whatever is watched. */
export interface EventEnvelope {
  /** Stable for the same watch and seq: a consumer de-duplicates redeliveries on it. */
  readonly id: string;
  /** Per watch, counting from 1, without gaps. */
  readonly seq: number;
  /** The watch that produced the event. */
  readonly watch_id: string;
  /** The status before (`null` on the first observation). */
  readonly from: string | null;
  /** When runwatch observed it: ISO-8601 with milliseconds, UTC. */
  readonly observed_at: string;
}

/** A run changed status; `type` is `run.<to>`. */
export interface RunTransitionEvent extends EventEnvelope {
  /** `run.` followed by the new status, e.g. `run.completed`. */
  readonly type: `run.${string}`;
  readonly thread_id: string;
  readonly run_id: string;
  /** The new status. */
  readonly to: string;
  /** The full run snapshot in which the new status was seen. */
  readonly run: RunSnapshot;
  /** Only on `run.stalled` (where `from` and `to` are the same status): how long it has lasted. */
  readonly stalled_for_ms?: number;
}

/** Details of why a watch ended without reaching a status it resolves on. */
export interface WatchErrorDetails {
  readonly code: ErrorCode;
  readonly message: string;
  readonly http_status?: number;
}

/** A watch on a run ended without a terminal (or `resolveOn`) status. */
export interface RunWatchErrorEvent extends EventEnvelope {
  readonly type: 'watch.error';
  readonly thread_id: string;
  readonly run_id: string;
  /** Always `null`: no new status was observed. */
  readonly to: null;
  readonly error: WatchErrorDetails;
  /** The last snapshot seen, or `null` if none was. */
  readonly run: RunSnapshot | null;
}

/** A background response changed status; `type` is `response.<to>`. */
export interface ResponseTransitionEvent extends EventEnvelope {
  /** `response.` followed by the new status, e.g. `response.completed`. */
  readonly type: `response.${string}`;
  readonly response_id: string;
  /** The new status. */
  readonly to: string;
  /** The full response snapshot in which the new status was seen. */
  readonly response: ResponseSnapshot;
  /** Only on `response.stalled`. */
  readonly stalled_for_ms?: number;
}

/** A watch on a background response ended without a terminal (or `resolveOn`) status. */
export interface ResponseWatchErrorEvent extends EventEnvelope {
  readonly type: 'watch.error';
  readonly response_id: string;
  readonly to: null;
  readonly error: WatchErrorDetails;
  /** The last snapshot seen, or `null` if none was. */
  readonly response: ResponseSnapshot | null;
}

/** The events of a run watch. */
export type RunEvent = RunTransitionEvent | RunWatchErrorEvent;

/** The events of a background response watch. */
export type ResponseEvent = ResponseTransitionEvent | ResponseWatchErrorEvent;

/** Every event runwatch emits, delivered alike to every sink; `run.*` / `response.*` by what is watched. */
export type WatchEvent = RunEvent | ResponseEvent;

/** True for the events of a run watch (they carry `thread_id` and `run_id`). */
export function isRunEvent(event: WatchEvent): event is RunEvent {
  return 'run_id' in event;
}

/** Builds the stable event id from the watch id and seq. */
export function eventId(watchId: string, seq: number): string {
  return `${watchId}.${seq}`;
}

/** True for events that end a watch with an error. */
export function isWatchError(event: WatchEvent): event is RunWatchErrorEvent | ResponseWatchErrorEvent {
  return event.type === 'watch.error';
}

/** The details of a `watch.error`: a code, a one-line message, the HTTP status if one answered. */
export interface WatchErrorCause {
  readonly code: ErrorCode;
  readonly message: string;
  readonly httpStatus?: number | undefined;
}

/** The fields every event of one watch starts with: `id`, `type`, `seq`, `watch_id`, then the kind's id fields. */
function envelope(kind: ResourceKind<object, Snapshot>, watchId: string, ref: object, type: string, seq: number): Record<string, unknown> {
  const event: Record<string, unknown> = { id: eventId(watchId, seq), type, seq, watch_id: watchId };
  for (const field of kind.idFields) event[field] = (ref as Record<string, unknown>)[field];
  return event;
}

/** The event for a step's emission (a transition, or `<prefix>.stalled`): the one schema both engines emit. */
export function emissionEvent(kind: ResourceKind<object, Snapshot>, watchId: string, ref: object, emission: Emission, nowMs: number): WatchEvent {
  const stalled = emission.kind === 'stalled';
  const to = stalled ? emission.status : emission.to;
  const event = envelope(kind, watchId, ref, `${kind.eventPrefix}.${stalled ? 'stalled' : to}`, emission.seq);
  event.from = stalled ? emission.status : emission.from;
  event.to = to;
  event.observed_at = new Date(nowMs).toISOString();
  event[kind.snapshotField] = emission.snapshot;
  if (stalled) event.stalled_for_ms = emission.stalledForMs;
  return event as unknown as WatchEvent;
}

/** The `watch.error` that ends a watch, with the seq after `progress.seq`. */
export function watchErrorEvent(kind: ResourceKind<object, Snapshot>, watchId: string, ref: object, progress: Progress, cause: WatchErrorCause, nowMs: number): RunWatchErrorEvent | ResponseWatchErrorEvent {
  const event = envelope(kind, watchId, ref, 'watch.error', progress.seq + 1);
  event.from = progress.status;
  event.to = null;
  event.observed_at = new Date(nowMs).toISOString();
  event.error = cause.httpStatus === undefined ? { code: cause.code, message: cause.message } : { code: cause.code, message: cause.message, http_status: cause.httpStatus };
  event[kind.snapshotField] = progress.lastSnapshot;
  return event as unknown as RunWatchErrorEvent | ResponseWatchErrorEvent;
}
