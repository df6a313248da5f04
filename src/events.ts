import type { ErrorCode } from './errors.js';
import type { ResourceKind, ResponseSnapshot, RunSnapshot, Snapshot, ThreadSnapshot } from './resource.js';
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
  /** On `run.tool_outputs_submitted`, `run.tool_approvals_submitted`, `run.approval_required` and `run.action_failed`: the tool calls concerned. */
  readonly tool_call_ids?: readonly string[];
  /** On `run.tool_approvals_submitted`: what was decided per tool call (the approvals' headers are never in an event). */
  readonly approvals?: ReadonlyArray<{ readonly tool_call_id: string; readonly approve: boolean }>;
  /** On `run.approval_required`: what the run asks for, as the server said it (`type: "submit_tool_approval"` and its tool calls). */
  readonly required_action?: RunSnapshot['required_action'];
  /** On `run.action_failed`: what went wrong (the handler threw, or the server refused). */
  readonly error?: WatchErrorDetails;
  /** On `run.cancel_requested` and `run.action_failed`: `requested`, `stalled` (the watch's threshold), or the action. */
  readonly reason?: string;
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
  /** On `response.action_failed`: what went wrong. */
  readonly error?: WatchErrorDetails;
  /** On `response.cancel_requested` and `response.action_failed`: why, or which action. */
  readonly reason?: string;
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

/** The thread guard saw the thread become busy or idle; `type` is `thread.busy` or `thread.idle`. */
export interface ThreadTransitionEvent extends EventEnvelope {
  readonly type: `thread.${string}`;
  readonly thread_id: string;
  readonly to: string;
  /** `{ status, latest_run }`. */
  readonly thread: ThreadSnapshot;
}

/** A thread guard ended without seeing the thread idle (deadline, 404, ...). */
export interface ThreadWatchErrorEvent extends EventEnvelope {
  readonly type: 'watch.error';
  readonly thread_id: string;
  readonly to: null;
  readonly error: WatchErrorDetails;
  readonly thread: ThreadSnapshot | null;
}

/** The events of a run watch. */
export type RunEvent = RunTransitionEvent | RunWatchErrorEvent;

/** The events of a background response watch. */
export type ResponseEvent = ResponseTransitionEvent | ResponseWatchErrorEvent;

/** The events of a thread guard. */
export type ThreadEvent = ThreadTransitionEvent | ThreadWatchErrorEvent;

/** Every event runwatch emits, delivered alike to every sink; `run.*`, `response.*` or `thread.*` by what is watched. */
export type WatchEvent = RunEvent | ResponseEvent | ThreadEvent;

/** The id fields of an event, in order: `thread_id`/`run_id`, `response_id` or `thread_id`. */
export function idFieldsOf(event: WatchEvent): Array<[string, string]> {
  if ('run_id' in event) return [['thread_id', event.thread_id], ['run_id', event.run_id]];
  if ('response_id' in event) return [['response_id', event.response_id]];
  return [['thread_id', event.thread_id]];
}

/** True for the events of a run watch (they carry `thread_id` and `run_id`). */
export function isRunEvent(event: WatchEvent): event is RunEvent {
  return 'run_id' in event;
}

/** True for the events of a background response watch (they carry `response_id`). */
export function isResponseEvent(event: WatchEvent): event is ResponseEvent {
  return 'response_id' in event;
}

/** The snapshot an event carries (`run`, `response` or `thread`), `null` when none was seen yet. */
export function snapshotOf(event: WatchEvent): Snapshot | null {
  if ('run' in event) return event.run;
  if ('response' in event) return event.response;
  return event.thread;
}

/** Builds the stable event id from the watch id and seq. */
export function eventId(watchId: string, seq: number): string {
  return `${watchId}.${seq}`;
}

/** True for events that end a watch with an error. */
export function isWatchError(event: WatchEvent): event is RunWatchErrorEvent | ResponseWatchErrorEvent | ThreadWatchErrorEvent {
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

/**
 * The event for a step's emission (a transition, `<prefix>.stalled`, or
 * `<prefix>.approval_required`): the one schema both engines emit.
 */
export function emissionEvent(kind: ResourceKind<object, Snapshot>, watchId: string, ref: object, emission: Emission, nowMs: number): WatchEvent {
  const transition = emission.kind === 'transition';
  const event = envelope(kind, watchId, ref, `${kind.eventPrefix}.${transition ? emission.to : emission.kind}`, emission.seq);
  // an event that is not a transition has the current status as both ends
  event.from = transition ? emission.from : emission.status;
  event.to = transition ? emission.to : emission.status;
  event.observed_at = new Date(nowMs).toISOString();
  if (emission.kind === 'approval_required') {
    event.tool_call_ids = emission.calls.map((call) => call.id);
    event.required_action = emission.snapshot.required_action;
  }
  event[kind.snapshotField] = emission.snapshot;
  if (emission.kind === 'stalled') event.stalled_for_ms = emission.stalledForMs;
  return event as unknown as WatchEvent;
}

/** The `watch.error` that ends a watch, with the seq after `progress.seq`. */
export function watchErrorEvent(kind: ResourceKind<object, Snapshot>, watchId: string, ref: object, progress: Progress, cause: WatchErrorCause, nowMs: number): RunWatchErrorEvent | ResponseWatchErrorEvent | ThreadWatchErrorEvent {
  const event = envelope(kind, watchId, ref, 'watch.error', progress.seq + 1);
  event.from = progress.status;
  event.to = null;
  event.observed_at = new Date(nowMs).toISOString();
  event.error = cause.httpStatus === undefined ? { code: cause.code, message: cause.message } : { code: cause.code, message: cause.message, http_status: cause.httpStatus };
  event[kind.snapshotField] = progress.lastSnapshot;
  return event as unknown as RunWatchErrorEvent | ResponseWatchErrorEvent | ThreadWatchErrorEvent;
}

/** What runwatch did to a resource: submitted tool outputs or approvals, asked for a cancel, or failed to. */
export type ActionEventName = 'tool_outputs_submitted' | 'tool_approvals_submitted' | 'cancel_requested' | 'action_failed';

/** What an action event says beside the envelope. */
export interface ActionDetails {
  readonly tool_call_ids?: readonly string[];
  readonly approvals?: ReadonlyArray<{ readonly tool_call_id: string; readonly approve: boolean }>;
  readonly error?: WatchErrorDetails;
  readonly reason?: string;
  readonly stalled_for_ms?: number;
}

/**
 * The event of an action (`<prefix>.tool_outputs_submitted`, `.tool_approvals_submitted`,
 * `.cancel_requested`, `.action_failed`) with the seq after `progress.seq`; `from` and `to` are
 * the current status.
 */
export function actionEvent(
  kind: ResourceKind<object, Snapshot>,
  watchId: string,
  ref: object,
  progress: Progress,
  action: ActionEventName,
  details: ActionDetails,
  nowMs: number,
): WatchEvent {
  const event = envelope(kind, watchId, ref, `${kind.eventPrefix}.${action}`, progress.seq + 1);
  event.from = progress.status;
  event.to = progress.status;
  event.observed_at = new Date(nowMs).toISOString();
  Object.assign(event, details);
  event[kind.snapshotField] = progress.lastSnapshot;
  return event as unknown as WatchEvent;
}
