// an in-memory store answers at once: its methods are async only to meet the WatchStore interface
/* eslint-disable @typescript-eslint/require-await */
import type { Progress } from '../step.js';
import type {
  CommitResult,
  DeliveryLog,
  EventFilter,
  NewWatch,
  PendingDelivery,
  Retention,
  SinkStats,
  StoredEvent,
  StoredWatchEvent,
  WatchChange,
  WatchRecord,
  WatchState,
  WatchStore,
} from './store.js';
import { eventTarget, idFieldsOfTarget, targetKey, targetOf } from './store.js';

/** A delivery not yet made (or given up on); a delivered one is dropped. */
interface Delivery {
  state: 'pending' | 'dead';
  attempts: number;
  nextAttemptAt: number;
  firstAttemptAt: number | null;
}

interface LoggedEvent extends StoredEvent {
  readonly ids: ReturnType<typeof idFieldsOfTarget>;
  readonly createdAt: number;
}

/**
 * The store in this process's memory: the same contract as SQLite and Redis (seq-checked
 * commits, an event log with positions, one delivery per event and sink), nothing survives the
 * process. For development (`store.kind: "memory"`), tests, and library users who want the
 * daemon's semantics without a disk.
 */
export class MemoryStore implements WatchStore, DeliveryLog {
  readonly #sinks: readonly string[];
  readonly #watches = new Map<string, WatchRecord>();
  readonly #targets = new Map<string, string>();
  readonly #events = new Map<number, LoggedEvent>();
  readonly #deliveries = new Map<string, Map<number, Delivery>>();
  #pos = 0;
  #open = true;

  /** @param options.sinks - the sinks every event gets a delivery for */
  constructor(options: { readonly sinks?: readonly string[] } = {}) {
    this.#sinks = options.sinks ?? [];
  }

  async create(input: NewWatch, nowMs: number): Promise<{ watch: WatchRecord; created: boolean }> {
    const key = targetKey(input);
    const existing = this.#targets.get(key);
    if (existing !== undefined && this.#watches.has(existing)) return { watch: this.#watches.get(existing)!, created: false };
    const watch: WatchRecord = {
      ...targetOf(input),
      id: input.id,
      metadata: input.metadata ?? null,
      callback_url: input.callback_url ?? null,
      state: 'active',
      progress: null,
      error: null,
      created_at: nowMs,
      updated_at: nowMs,
      finished_at: null,
    };
    this.#watches.set(watch.id, watch);
    this.#targets.set(key, watch.id);
    return { watch, created: true };
  }

  async get(id: string): Promise<WatchRecord | undefined> {
    return this.#watches.get(id);
  }

  async list(query: { readonly state?: WatchState | undefined; readonly limit: number; readonly after?: string | undefined }): Promise<WatchRecord[]> {
    const all = [...this.#watches.values()];
    const from = query.after === undefined ? 0 : all.findIndex((w) => w.id === query.after) + 1;
    return all
      .slice(from)
      .filter((w) => !query.state || w.state === query.state)
      .slice(0, query.limit);
  }

  async *active(): AsyncIterable<WatchRecord> {
    for (const watch of [...this.#watches.values()]) if (watch.state === 'active') yield watch;
  }

  async loadProgress(id: string): Promise<Progress | undefined> {
    return (this.#watches.get(id)?.progress as Progress | null | undefined) ?? undefined;
  }

  async commit(watchId: string, expectedSeq: number, change: WatchChange): Promise<CommitResult> {
    const watch = this.#watches.get(watchId);
    if (!watch) return 'missing';
    if (watch.state !== 'active') return 'ended';
    if ((watch.progress?.seq ?? 0) !== expectedSeq) return 'stale';
    const nowMs = Date.now();
    this.#watches.set(watchId, {
      ...watch,
      state: change.state,
      progress: change.progress,
      error: change.error ?? watch.error,
      updated_at: nowMs,
      finished_at: change.state === 'active' ? null : nowMs,
    });
    const sinks = watch.callback_url ? [...this.#sinks, 'callback'] : this.#sinks;
    for (const event of change.events as readonly StoredWatchEvent[]) {
      this.#pos += 1;
      this.#events.set(this.#pos, { pos: this.#pos, event_id: event.id, watch_id: event.watch_id, payload: JSON.stringify(event), ids: idFieldsOfTarget(eventTarget(event)), createdAt: nowMs });
      for (const sink of sinks) this.#sinkRows(sink).set(this.#pos, { state: 'pending', attempts: 0, nextAttemptAt: 0, firstAttemptAt: null });
    }
    return 'ok';
  }

  async eventsAfter(pos: number, filter: EventFilter, limit: number): Promise<StoredEvent[]> {
    const out: StoredEvent[] = [];
    for (const event of this.#events.values()) {
      if (event.pos <= pos) continue;
      if (filter.run_id && event.ids.run_id !== filter.run_id) continue;
      if (filter.thread_id && event.ids.thread_id !== filter.thread_id) continue;
      if (filter.response_id && event.ids.response_id !== filter.response_id) continue;
      out.push({ pos: event.pos, event_id: event.event_id, watch_id: event.watch_id, payload: event.payload });
      if (out.length === limit) break;
    }
    return out;
  }

  async lastPosition(): Promise<number> {
    return this.#pos;
  }

  async prune(nowMs: number, retention: Retention): Promise<number> {
    const pending = (pos: number): boolean => [...this.#deliveries.values()].some((rows) => rows.get(pos)?.state === 'pending');
    let removed = 0;
    for (const event of [...this.#events.values()]) {
      if (event.createdAt >= nowMs - retention.eventsMs || pending(event.pos)) continue;
      this.#events.delete(event.pos);
      for (const rows of this.#deliveries.values()) rows.delete(event.pos);
      removed += 1;
    }
    for (const watch of [...this.#watches.values()]) {
      if (watch.state === 'active' || watch.finished_at === null || watch.finished_at >= nowMs - retention.watchesMs) continue;
      this.#watches.delete(watch.id);
      if (this.#targets.get(targetKey(watch)) === watch.id) this.#targets.delete(targetKey(watch));
      removed += 1;
    }
    return removed;
  }

  healthy(): boolean {
    return this.#open;
  }

  async close(): Promise<void> {
    this.#open = false;
  }

  async pendingDeliveries(sink: string, limit: number): Promise<PendingDelivery[]> {
    const out: PendingDelivery[] = [];
    // rows are kept in position order: they are added as events are appended
    for (const [pos, row] of this.#sinkRows(sink)) {
      const event = this.#events.get(pos);
      if (row.state !== 'pending' || !event) continue;
      out.push({
        pos: event.pos,
        event_id: event.event_id,
        watch_id: event.watch_id,
        payload: event.payload,
        attempts: row.attempts,
        next_attempt_at: row.nextAttemptAt,
        first_attempt_at: row.firstAttemptAt,
        callback_url: this.#watches.get(event.watch_id)?.callback_url ?? null,
      });
      if (out.length === limit) break;
    }
    return out;
  }

  async markDelivered(sink: string, pos: number): Promise<void> {
    this.#sinkRows(sink).delete(pos);
  }

  async markRetry(sink: string, pos: number, nextAttemptAt: number, _error: string, nowMs: number): Promise<void> {
    const row = this.#sinkRows(sink).get(pos);
    if (row) Object.assign(row, { attempts: row.attempts + 1, nextAttemptAt, firstAttemptAt: row.firstAttemptAt ?? nowMs });
  }

  async markDead(sink: string, pos: number, _error: string, nowMs: number): Promise<void> {
    const row = this.#sinkRows(sink).get(pos);
    if (row) Object.assign(row, { state: 'dead', attempts: row.attempts + 1, firstAttemptAt: row.firstAttemptAt ?? nowMs });
  }

  async sinkStats(): Promise<SinkStats[]> {
    return [...this.#deliveries]
      .map(([sink, rows]) => {
        const states = [...rows.values()].map((row) => row.state);
        return { sink, pending: states.filter((s) => s === 'pending').length, dead: states.filter((s) => s === 'dead').length };
      })
      .sort((a, b) => a.sink.localeCompare(b.sink));
  }

  #sinkRows(sink: string): Map<number, Delivery> {
    let rows = this.#deliveries.get(sink);
    if (!rows) this.#deliveries.set(sink, (rows = new Map<number, Delivery>()));
    return rows;
  }
}
