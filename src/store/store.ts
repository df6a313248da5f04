import type { ActionMemory } from '../actions.js';
import { toolCallsKey } from '../actions.js';
import type { ResponseEvent, RunEvent, WatchErrorDetails } from '../events.js';
import { RESPONSE_KIND, RUN_KIND } from '../resource.js';
import type { ResourceKind, Snapshot } from '../resource.js';

/** Where a watch is in its life. */
export type WatchState = 'active' | 'finished' | 'failed' | 'deleted';

/** Every watch state. */
export const WATCH_STATES: readonly WatchState[] = ['active', 'finished', 'failed', 'deleted'];

/** What a stored watch watches: a run (`thread_id`, `run_id`) or a background response (`response_id`). */
export type WatchTarget =
  | { readonly kind: 'run'; readonly thread_id: string; readonly run_id: string }
  | { readonly kind: 'response'; readonly response_id: string };

/** The kinds a stored watch can have. */
export type WatchKindName = WatchTarget['kind'];

/** The events of stored watches (thread guards are a library and CLI feature, never stored). */
export type StoredWatchEvent = RunEvent | ResponseEvent;

/** Fields of a stored watch besides its target. Times are epoch milliseconds. */
export interface WatchFields {
  readonly id: string;
  readonly metadata: Readonly<Record<string, string>> | null;
  readonly callback_url: string | null;
  readonly state: WatchState;
  /** Last status seen, `null` before the first poll. */
  readonly status: string | null;
  /** Last event seq handed out. */
  readonly seq: number;
  readonly last_snapshot: Snapshot | null;
  readonly error: WatchErrorDetails | null;
  /** Since when the run has had `status`. */
  readonly status_since: number | null;
  readonly next_poll_at: number | null;
  readonly created_at: number;
  readonly updated_at: number;
  readonly finished_at: number | null;
  /** What was done to the resource already, so a restart or another replica does not do it again. */
  readonly actions: ActionMemory;
}

/**
 * What an event adds to a watch's action memory: a submission or a failed handling marks its
 * tool calls handled, a cancel (sent or refused) marks the cancel done; other events add nothing.
 */
export function actionMemoryOf(event: StoredWatchEvent): Partial<ActionMemory> {
  if (event.type === 'watch.error') return {};
  const action = event.type.slice(event.type.indexOf('.') + 1);
  const ids = 'tool_call_ids' in event ? event.tool_call_ids : undefined;
  if ((action === 'tool_outputs_submitted' || (action === 'action_failed' && event.reason === 'submit_tool_outputs')) && ids) return { handledCalls: toolCallsKey(ids) };
  if (action === 'cancel_requested' || (action === 'action_failed' && event.reason === 'cancel')) return { cancelRequested: true };
  return {};
}

export type { ActionMemory } from '../actions.js';

/** A watch as stored: its target and its fields. */
export type WatchRecord = WatchTarget & WatchFields;

/** What a client asks to watch. */
export type NewWatch = WatchTarget & {
  readonly id: string;
  readonly metadata?: Readonly<Record<string, string>> | null;
  readonly callback_url?: string | null;
};

/** The target alone (the id fields), e.g. to build a view or a request. */
export function targetOf(target: WatchTarget): WatchTarget {
  return target.kind === 'run' ? { kind: 'run', thread_id: target.thread_id, run_id: target.run_id } : { kind: 'response', response_id: target.response_id };
}

/** The resource kind that polls a target. */
export function kindOf(target: WatchTarget | WatchKindName): ResourceKind<object, Snapshot> {
  const name = typeof target === 'string' ? target : target.kind;
  return (name === 'run' ? RUN_KIND : RESPONSE_KIND) as unknown as ResourceKind<object, Snapshot>;
}

/**
 * The unique key of a target: one watch per run or response. A run's key is the one earlier
 * versions stored (`thread\nrun`); `:` never occurs in an id, so the two forms cannot collide.
 */
export function targetKey(target: WatchTarget): string {
  return target.kind === 'run' ? `${target.thread_id}\n${target.run_id}` : `response:${target.response_id}`;
}

/** The id an event's target is ordered by (its run or response id): one target, one outbox partition. */
export function orderingId(target: WatchTarget): string {
  return target.kind === 'run' ? target.run_id : target.response_id;
}

/** Every id field of a target, `null` where its kind has none (a column or stream field per id). */
export function idFieldsOfTarget(target: WatchTarget): { readonly thread_id: string | null; readonly run_id: string | null; readonly response_id: string | null } {
  return target.kind === 'run' ? { thread_id: target.thread_id, run_id: target.run_id, response_id: null } : { thread_id: null, run_id: null, response_id: target.response_id };
}

/** The target of a stored event. */
export function eventTarget(event: StoredWatchEvent): WatchTarget {
  return 'run_id' in event ? { kind: 'run', thread_id: event.thread_id, run_id: event.run_id } : { kind: 'response', response_id: event.response_id };
}

/** Which state an event leaves its watch in. */
export function stateAfter(event: StoredWatchEvent): WatchState {
  if (event.type === 'watch.error') return event.error.code === 'aborted' ? 'deleted' : 'failed';
  return kindOf(eventTarget(event)).rules.terminal.has(event.to) ? 'finished' : 'active';
}

/** A stored event with its position in the log (the SSE id). */
export interface StoredEvent {
  readonly pos: number;
  readonly event_id: string;
  readonly watch_id: string;
  /** The exact JSON delivered every time, so a redelivery is byte-identical. */
  readonly payload: string;
}

/** One pending delivery of an event to a sink. */
export interface PendingDelivery extends StoredEvent {
  readonly attempts: number;
  readonly next_attempt_at: number;
  readonly first_attempt_at: number | null;
  /** The watch's callback URL (for the `callback` sink). */
  readonly callback_url: string | null;
}

/** Outbox figures per sink, for metrics and the API. */
export interface SinkStats {
  readonly sink: string;
  readonly pending: number;
  readonly dead: number;
}

/** Filters for reading the event log. */
export interface EventFilter {
  readonly thread_id?: string;
  readonly run_id?: string;
  readonly response_id?: string;
}

/**
 * Durable state of the daemon: watches, the event log and the outbox. Every event is written
 * with its watch's new state and one delivery row per sink in a single transaction.
 */
export interface Store {
  /** Creates a watch, or returns the one for the same target (run or response). */
  createWatch(input: NewWatch, nowMs: number): { watch: WatchRecord; created: boolean };
  getWatch(id: string): WatchRecord | undefined;
  /** Watches ordered by creation, after the cursor `after` (a watch id). */
  listWatches(options: { state?: WatchState; limit: number; after?: string }): WatchRecord[];
  /** Every watch in state `active`. */
  activeWatches(): WatchRecord[];
  /**
   * Appends an event, updates its watch, and queues a delivery per sink (and to the watch's
   * callback when it has one); one transaction. Returns the event's position.
   */
  recordEvent(event: StoredWatchEvent, sinks: readonly string[], nowMs: number): number;
  /** Marks a watch deleted (no more polling). */
  markDeleted(id: string, nowMs: number): WatchRecord | undefined;
  /** Saves planned poll times (best effort, batched). */
  saveNextPolls(entries: ReadonlyArray<readonly [id: string, nextPollAt: number | null]>): void;
  /** The oldest pending deliveries for a sink, in log order. */
  pendingDeliveries(sink: string, limit: number): PendingDelivery[];
  markDelivered(sink: string, pos: number, nowMs: number): void;
  markRetry(sink: string, pos: number, nextAttemptAt: number, error: string, nowMs: number): void;
  markDead(sink: string, pos: number, error: string, nowMs: number): void;
  /** Events after a position, optionally filtered, in order. */
  eventsAfter(pos: number, filter: EventFilter, limit: number): StoredEvent[];
  /** The last position written (0 when empty). */
  lastPosition(): number;
  sinkStats(): SinkStats[];
  /** Deletes delivered events and ended watches older than the retention. Returns rows removed. */
  prune(nowMs: number, retention: { readonly eventsMs: number; readonly watchesMs: number }): number;
  /** True when the store answers a trivial query. */
  healthy(): boolean;
  close(): void;
}
