import type { ErrorCode } from './errors.js';
import type { RunSnapshot } from './resource.js';

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

/** Every event runwatch emits, delivered alike to every sink. */
export type WatchEvent = RunTransitionEvent | RunWatchErrorEvent;

/** Builds the stable event id from the watch id and seq. */
export function eventId(watchId: string, seq: number): string {
  return `${watchId}.${seq}`;
}

/** True for events that end a watch with an error. */
export function isWatchError(event: WatchEvent): event is RunWatchErrorEvent {
  return event.type === 'watch.error';
}
