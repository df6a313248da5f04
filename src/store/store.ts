import type { CommitPort, WatchChange, WatchState } from '../driver.js';
import type { ResponseEvent, RunEvent, WatchErrorDetails } from '../events.js';
import { RESPONSE_KIND, RUN_KIND } from '../resource.js';
import type { ResourceKind, Snapshot } from '../resource.js';
import type { Progress, StoredProgress } from '../step.js';

export type { CommitPort, CommitResult, WatchChange, WatchState } from '../driver.js';
export type { StoredProgress } from '../step.js';

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
  /** The engine's progress; `null` before the first step. */
  readonly progress: StoredProgress | null;
  /** Why the watch ended, when it ended with a `watch.error`. */
  readonly error: WatchErrorDetails | null;
  readonly created_at: number;
  readonly updated_at: number;
  readonly finished_at: number | null;
}

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

/** How `list` orders watches: by creation, or those needing attention first (then by creation). */
export type WatchOrder = 'created' | 'attention';

/** What `WatchStore.list` selects. Filters combine (all must hold). */
export interface WatchQuery {
  readonly state?: WatchState | undefined;
  /** Only watches whose last status is this; `none` selects those not polled yet. */
  readonly status?: string | undefined;
  /** Only watches one of whose ids (watch, run, thread or response id) contains this. */
  readonly search?: string | undefined;
  /** @default 'created' */
  readonly order?: WatchOrder | undefined;
  readonly limit: number;
  /** The cursor: the last watch id of the previous page, in the same order. */
  readonly after?: string | undefined;
}

/**
 * How urgently a watch needs a person, lowest first: 0 active and stalled, waiting for an
 * action (`requires_action`) or failing its polls; 1 ended with an error; 2 active; 3 ended
 * otherwise. The SQLite store computes the same rank in SQL (`ATTENTION_RANK_SQL`).
 */
export function attentionRank(record: Pick<WatchRecord, 'state' | 'progress'>): number {
  const progress = record.progress;
  if (record.state === 'active') {
    const stuck = progress?.status === 'requires_action' || progress?.stallReported === true || (progress?.consecutiveErrors ?? 0) > 0;
    return stuck ? 0 : 2;
  }
  return record.state === 'failed' ? 1 : 3;
}

/** True when a watch matches a query's filters (state, status, search). */
export function matchesQuery(record: WatchRecord, query: Pick<WatchQuery, 'state' | 'status' | 'search'>): boolean {
  if (query.state && record.state !== query.state) return false;
  if (query.status !== undefined && (record.progress?.status ?? 'none') !== query.status) return false;
  if (query.search) {
    const ids = idFieldsOfTarget(record);
    return [record.id, ids.thread_id, ids.run_id, ids.response_id].some((id) => id?.includes(query.search!) === true);
  }
  return true;
}

/** True when a query needs more than the creation-order index (a status, a search or the attention order). */
export function needsScan(query: WatchQuery): boolean {
  return query.status !== undefined || Boolean(query.search) || query.order === 'attention';
}

/**
 * One page of a query over every watch in creation order (a store that cannot filter or order
 * by itself reads them all): filtered, ordered as asked, after the cursor.
 */
export function pageOf(recordsInCreationOrder: readonly WatchRecord[], query: WatchQuery): WatchRecord[] {
  const selected = recordsInCreationOrder.filter((record) => matchesQuery(record, query));
  // Array.prototype.sort is stable: creation order holds within a rank
  if (query.order === 'attention') selected.sort((a, b) => attentionRank(a) - attentionRank(b));
  const start = query.after === undefined ? 0 : selected.findIndex((record) => record.id === query.after) + 1;
  return selected.slice(start, start + query.limit);
}

/** Filters for reading the event log. */
export interface EventFilter {
  readonly thread_id?: string;
  readonly run_id?: string;
  readonly response_id?: string;
}

/** How long ended watches and delivered events are kept. */
export interface Retention {
  readonly eventsMs: number;
  readonly watchesMs: number;
}

/**
 * Durable state of the daemon: watches, their progress and the event log. One interface, three
 * implementations (memory, SQLite, Redis). A step's events and its watch's new progress are
 * written in one transaction, only if the stored seq is still the one the step started from.
 */
export interface WatchStore extends CommitPort {
  /** Creates a watch, or returns the one for the same target (run or response). */
  create(input: NewWatch, nowMs: number): Promise<{ watch: WatchRecord; created: boolean }>;
  get(id: string): Promise<WatchRecord | undefined>;
  /** Watches ordered by creation (or needing attention first), filtered, after the cursor `after` (a watch id). */
  list(query: WatchQuery): Promise<WatchRecord[]>;
  /** Every watch in state `active`, in creation order. */
  active(): AsyncIterable<WatchRecord>;
  /** The stored progress of a watch. */
  loadProgress(id: string): Promise<Progress | undefined>;
  /** Events after a position, optionally filtered, in order. */
  eventsAfter(pos: number, filter: EventFilter, limit: number): Promise<StoredEvent[]>;
  /** The last position written (0 when empty). */
  lastPosition(): Promise<number>;
  /** Deletes ended watches (and delivered events) older than the retention. Returns how many were removed. */
  prune(nowMs: number, retention: Retention): Promise<number>;
  /** True while the store answers. */
  healthy(): boolean;
  close(): Promise<void>;
}

/**
 * The outbox rows of a store that keeps one delivery per event and sink (memory, SQLite), read
 * by `OutboxWorker`. Redis keeps partition streams instead.
 */
export interface DeliveryLog {
  /** The oldest pending deliveries for a sink, in log order. */
  pendingDeliveries(sink: string, limit: number): Promise<PendingDelivery[]>;
  markDelivered(sink: string, pos: number, nowMs: number): Promise<void>;
  markRetry(sink: string, pos: number, nextAttemptAt: number, error: string, nowMs: number): Promise<void>;
  markDead(sink: string, pos: number, error: string, nowMs: number): Promise<void>;
  sinkStats(): Promise<SinkStats[]>;
  /** Deliveries not yet made (pending, any sink) of each of these watches' events; a watch with none is absent. @default not known (the API shows `null`) */
  backlogByWatch?(watchIds: readonly string[]): Promise<ReadonlyMap<string, number>>;
}

/** The fields a commit writes beside the events, as every store derives them from the change. */
export function committedFields(change: { readonly progress: Progress; readonly state: WatchState; readonly error?: WatchErrorDetails | undefined }, nowMs: number) {
  const { progress, state } = change;
  return {
    state,
    status: progress.status,
    seq: progress.seq,
    progress: JSON.stringify(progress),
    error: change.error ? JSON.stringify(change.error) : null,
    next_poll_at: progress.next?.kind === 'poll' ? progress.next.atMs : null,
    updated_at: nowMs,
    finished_at: state === 'active' ? null : nowMs,
  };
}

/**
 * True when a step is a checkpoint a store may keep in memory and write in a later batch: it
 * changed nothing a consumer sees (no events, still active) and holds no server `retry-after`
 * not yet passed (that one is written at once, never left in a batch a crash would lose).
 */
export function isCheckpoint(change: Pick<WatchChange, 'events' | 'state' | 'progress'>, nowMs: number = Date.now()): boolean {
  const { notBeforeMs } = change.progress;
  return change.events.length === 0 && change.state === 'active' && !(notBeforeMs !== null && notBeforeMs > nowMs);
}

/** Parses a stored JSON field, `null` when empty. */
export function parseJson<T>(value: string | null | undefined): T | null {
  return value ? (JSON.parse(value) as T) : null;
}
