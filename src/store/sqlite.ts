import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import type { StatementSync } from 'node:sqlite';
import { ConfigError } from '../errors.js';
import { snapshotOf } from '../events.js';
import type { EventFilter, NewWatch, PendingDelivery, SinkStats, Store, StoredEvent, StoredWatchEvent, WatchRecord, WatchState, WatchTarget } from './store.js';
import { actionMemoryOf, eventTarget, idFieldsOfTarget, stateAfter, targetKey } from './store.js';

/** The schema version this code writes (`PRAGMA user_version`); 0 is the run-only schema of 0.x. */
const SCHEMA_VERSION = 2;

const WATCHES = `
CREATE TABLE watches (
  id TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  target TEXT NOT NULL,
  thread_id TEXT,
  run_id TEXT,
  response_id TEXT,
  metadata TEXT,
  callback_url TEXT,
  state TEXT NOT NULL DEFAULT 'active',
  status TEXT,
  seq INTEGER NOT NULL DEFAULT 0,
  last_snapshot TEXT,
  error TEXT,
  status_since INTEGER,
  next_poll_at INTEGER,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  finished_at INTEGER,
  created_order INTEGER NOT NULL,
  handled_calls TEXT,
  cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX watches_target ON watches (target);
CREATE INDEX watches_state ON watches (state, created_order);
`;

/** The event log and the outbox; events of a response watch have '' as thread_id and run_id (NOT NULL since 0.x). */
const LOG = `
CREATE TABLE events (
  pos INTEGER PRIMARY KEY AUTOINCREMENT,
  event_id TEXT NOT NULL UNIQUE,
  watch_id TEXT NOT NULL,
  thread_id TEXT NOT NULL,
  run_id TEXT NOT NULL,
  payload TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  response_id TEXT
);
CREATE INDEX events_run ON events (run_id, pos);
CREATE INDEX events_response ON events (response_id, pos);
CREATE TABLE deliveries (
  sink TEXT NOT NULL,
  pos INTEGER NOT NULL,
  state TEXT NOT NULL DEFAULT 'pending',
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_at INTEGER NOT NULL DEFAULT 0,
  first_attempt_at INTEGER,
  last_error TEXT,
  updated_at INTEGER NOT NULL,
  PRIMARY KEY (sink, pos)
) WITHOUT ROWID;
CREATE INDEX deliveries_pending ON deliveries (sink, state, pos);
`;

/**
 * From the run-only schema (version 0): watches get a kind and a target key (rebuilt: the
 * unique index changes), events a response_id column (added in place: positions, deliveries
 * and the AUTOINCREMENT counter stay as they are).
 */
const MIGRATE_FROM_0 = `
ALTER TABLE watches RENAME TO watches_v0;
DROP INDEX IF EXISTS watches_run;
DROP INDEX IF EXISTS watches_state;
${WATCHES}
INSERT INTO watches (id, kind, target, thread_id, run_id, response_id, metadata, callback_url, state, status, seq, last_snapshot, error,
                     status_since, next_poll_at, created_at, updated_at, finished_at, created_order)
  SELECT id, 'run', thread_id || char(10) || run_id, thread_id, run_id, NULL, metadata, callback_url, state, status, seq, last_snapshot, error,
         status_since, next_poll_at, created_at, updated_at, finished_at, created_order FROM watches_v0;
DROP TABLE watches_v0;
ALTER TABLE events ADD COLUMN response_id TEXT;
CREATE INDEX events_response ON events (response_id, pos);
`;

interface WatchRow {
  id: string;
  kind: string;
  thread_id: string | null;
  run_id: string | null;
  response_id: string | null;
  metadata: string | null;
  callback_url: string | null;
  state: string;
  status: string | null;
  seq: number;
  last_snapshot: string | null;
  error: string | null;
  status_since: number | null;
  next_poll_at: number | null;
  created_at: number;
  updated_at: number;
  finished_at: number | null;
  handled_calls: string | null;
  cancel_requested: number;
}

function toRecord(row: WatchRow): WatchRecord {
  const target: WatchTarget = row.kind === 'response' ? { kind: 'response', response_id: row.response_id! } : { kind: 'run', thread_id: row.thread_id!, run_id: row.run_id! };
  return {
    ...target,
    id: row.id,
    metadata: row.metadata === null ? null : (JSON.parse(row.metadata) as Record<string, string>),
    callback_url: row.callback_url,
    state: row.state as WatchState,
    status: row.status,
    seq: row.seq,
    last_snapshot: row.last_snapshot === null ? null : (JSON.parse(row.last_snapshot) as WatchRecord['last_snapshot']),
    error: row.error === null ? null : (JSON.parse(row.error) as WatchRecord['error']),
    status_since: row.status_since,
    next_poll_at: row.next_poll_at,
    created_at: row.created_at,
    updated_at: row.updated_at,
    finished_at: row.finished_at,
    actions: { handledCalls: row.handled_calls, cancelRequested: row.cancel_requested === 1 },
  };
}

/**
 * The embedded store: one SQLite file (Node's built-in `node:sqlite`, no native build) in WAL
 * mode. Synchronous calls, so an event and its watch update are written before anything else
 * runs; `synchronous=NORMAL` survives a process crash (`kill -9`), not a power cut.
 */
export class SqliteStore implements Store {
  readonly #db: DatabaseSync;
  readonly #statements = new Map<string, StatementSync>();

  /** @param file - the database file, or `:memory:`; its folder is created when missing */
  constructor(file: string) {
    if (file !== ':memory:') mkdirSync(path.dirname(file), { recursive: true });
    this.#db = new DatabaseSync(file);
    this.#db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = OFF;');
    this.#migrate(file);
  }

  /** Creates the schema, or brings an older one up to date in one transaction; refuses a newer one. */
  #migrate(file: string): void {
    const version = (this.#db.prepare('PRAGMA user_version').get() as { user_version: number }).user_version;
    if (version === SCHEMA_VERSION) return;
    if (version > SCHEMA_VERSION) {
      this.#db.close();
      throw new ConfigError(`${file} was written by a newer runwatch (schema ${version}, this one knows ${SCHEMA_VERSION}): run that version, or start on an empty data dir`);
    }
    const hasWatches = this.#db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'watches'").get() !== undefined;
    this.#transaction(() => {
      this.#db.exec(hasWatches ? MIGRATE_FROM_0 : WATCHES + LOG);
      this.#db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
    });
  }

  #sql(sql: string): StatementSync {
    let statement = this.#statements.get(sql);
    if (!statement) {
      statement = this.#db.prepare(sql);
      this.#statements.set(sql, statement);
    }
    return statement;
  }

  #transaction<T>(work: () => T): T {
    this.#db.exec('BEGIN IMMEDIATE');
    try {
      const result = work();
      this.#db.exec('COMMIT');
      return result;
    } catch (error) {
      this.#db.exec('ROLLBACK');
      throw error;
    }
  }

  createWatch(input: NewWatch, nowMs: number): { watch: WatchRecord; created: boolean } {
    const key = targetKey(input);
    return this.#transaction(() => {
      const existing = this.#sql('SELECT * FROM watches WHERE target = ?').get(key) as WatchRow | undefined;
      if (existing) return { watch: toRecord(existing), created: false };
      const order = (this.#sql('SELECT COALESCE(MAX(created_order), 0) + 1 AS n FROM watches').get() as { n: number }).n;
      const ids = idFieldsOfTarget(input);
      this.#sql(
        `INSERT INTO watches (id, kind, target, thread_id, run_id, response_id, metadata, callback_url, state, seq, created_at, updated_at, created_order)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'active', 0, ?, ?, ?)`,
      ).run(input.id, input.kind, key, ids.thread_id, ids.run_id, ids.response_id, input.metadata ? JSON.stringify(input.metadata) : null, input.callback_url ?? null, nowMs, nowMs, order);
      return { watch: this.getWatch(input.id)!, created: true };
    });
  }

  getWatch(id: string): WatchRecord | undefined {
    const row = this.#sql('SELECT * FROM watches WHERE id = ?').get(id) as WatchRow | undefined;
    return row ? toRecord(row) : undefined;
  }

  listWatches(options: { state?: WatchState; limit: number; after?: string }): WatchRecord[] {
    const afterOrder = options.after ? ((this.#sql('SELECT created_order FROM watches WHERE id = ?').get(options.after) as { created_order: number } | undefined)?.created_order ?? 0) : 0;
    const rows = options.state
      ? this.#sql('SELECT * FROM watches WHERE state = ? AND created_order > ? ORDER BY created_order LIMIT ?').all(options.state, afterOrder, options.limit)
      : this.#sql('SELECT * FROM watches WHERE created_order > ? ORDER BY created_order LIMIT ?').all(afterOrder, options.limit);
    return (rows as unknown as WatchRow[]).map(toRecord);
  }

  activeWatches(): WatchRecord[] {
    return (this.#sql("SELECT * FROM watches WHERE state = 'active' ORDER BY created_order").all() as unknown as WatchRow[]).map(toRecord);
  }

  recordEvent(event: StoredWatchEvent, sinks: readonly string[], nowMs: number): number {
    const payload = JSON.stringify(event);
    const ids = idFieldsOfTarget(eventTarget(event));
    return this.#transaction(() => {
      // a redelivered engine event (same id) must not become a second, different payload
      const existing = this.#sql('SELECT pos FROM events WHERE event_id = ?').get(event.id) as { pos: number } | undefined;
      if (existing) return existing.pos;
      const pos = Number(
        this.#sql('INSERT INTO events (event_id, watch_id, thread_id, run_id, response_id, payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)').run(
          event.id,
          event.watch_id,
          ids.thread_id ?? '',
          ids.run_id ?? '',
          ids.response_id,
          payload,
          nowMs,
        ).lastInsertRowid,
      );
      const watch = this.#sql('SELECT callback_url FROM watches WHERE id = ?').get(event.watch_id) as { callback_url: string | null } | undefined;
      const targets = watch?.callback_url ? [...sinks, 'callback'] : sinks;
      const queue = this.#sql('INSERT INTO deliveries (sink, pos, updated_at) VALUES (?, ?, ?)');
      for (const sink of targets) queue.run(sink, pos, nowMs);
      const state = stateAfter(event);
      const ended = state === 'active' ? null : nowMs;
      if (event.type === 'watch.error') {
        this.#sql('UPDATE watches SET state = ?, seq = ?, error = ?, next_poll_at = NULL, updated_at = ?, finished_at = ? WHERE id = ?').run(
          state,
          event.seq,
          JSON.stringify(event.error),
          nowMs,
          ended,
          event.watch_id,
        );
      } else {
        const changed = event.from !== event.to;
        const memory = actionMemoryOf(event);
        this.#sql(
          `UPDATE watches SET state = ?, status = ?, seq = ?, last_snapshot = ?, updated_at = ?, finished_at = ?,
             status_since = CASE WHEN ? THEN ? ELSE status_since END,
             handled_calls = COALESCE(?, handled_calls), cancel_requested = MAX(cancel_requested, ?) WHERE id = ?`,
        ).run(state, event.to, event.seq, JSON.stringify(snapshotOf(event)), nowMs, ended, changed ? 1 : 0, nowMs, memory.handledCalls ?? null, memory.cancelRequested ? 1 : 0, event.watch_id);
      }
      return pos;
    });
  }

  markDeleted(id: string, nowMs: number): WatchRecord | undefined {
    this.#sql("UPDATE watches SET state = 'deleted', next_poll_at = NULL, updated_at = ?, finished_at = COALESCE(finished_at, ?) WHERE id = ? AND state = 'active'").run(nowMs, nowMs, id);
    return this.getWatch(id);
  }

  saveNextPolls(entries: ReadonlyArray<readonly [string, number | null]>): void {
    if (entries.length === 0) return;
    const update = this.#sql('UPDATE watches SET next_poll_at = ? WHERE id = ?');
    this.#transaction(() => {
      for (const [id, at] of entries) update.run(at, id);
    });
  }

  pendingDeliveries(sink: string, limit: number): PendingDelivery[] {
    return this.#sql(
      `SELECT d.pos, e.event_id, e.watch_id, e.payload, d.attempts, d.next_attempt_at, d.first_attempt_at, w.callback_url
         FROM deliveries d JOIN events e ON e.pos = d.pos LEFT JOIN watches w ON w.id = e.watch_id
        WHERE d.sink = ? AND d.state = 'pending' ORDER BY d.pos LIMIT ?`,
    ).all(sink, limit) as unknown as PendingDelivery[];
  }

  markDelivered(sink: string, pos: number, nowMs: number): void {
    this.#sql("UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, updated_at = ?, last_error = NULL WHERE sink = ? AND pos = ?").run(nowMs, sink, pos);
  }

  markRetry(sink: string, pos: number, nextAttemptAt: number, error: string, nowMs: number): void {
    this.#sql(
      'UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?, first_attempt_at = COALESCE(first_attempt_at, ?), updated_at = ? WHERE sink = ? AND pos = ?',
    ).run(nextAttemptAt, error, nowMs, nowMs, sink, pos);
  }

  markDead(sink: string, pos: number, error: string, nowMs: number): void {
    this.#sql("UPDATE deliveries SET state = 'dead', attempts = attempts + 1, last_error = ?, first_attempt_at = COALESCE(first_attempt_at, ?), updated_at = ? WHERE sink = ? AND pos = ?").run(
      error,
      nowMs,
      nowMs,
      sink,
      pos,
    );
  }

  eventsAfter(pos: number, filter: EventFilter, limit: number): StoredEvent[] {
    const clauses = ['pos > ?'];
    const params: Array<string | number> = [pos];
    for (const field of ['run_id', 'thread_id', 'response_id'] as const) {
      const value = filter[field];
      if (value) {
        clauses.push(`${field} = ?`);
        params.push(value);
      }
    }
    params.push(limit);
    return this.#sql(`SELECT pos, event_id, watch_id, payload FROM events WHERE ${clauses.join(' AND ')} ORDER BY pos LIMIT ?`).all(...params) as unknown as StoredEvent[];
  }

  lastPosition(): number {
    return (this.#sql('SELECT COALESCE(MAX(pos), 0) AS pos FROM events').get() as { pos: number }).pos;
  }

  sinkStats(): SinkStats[] {
    return this.#sql(
      "SELECT sink, SUM(state = 'pending') AS pending, SUM(state = 'dead') AS dead FROM deliveries GROUP BY sink ORDER BY sink",
    ).all() as unknown as SinkStats[];
  }

  prune(nowMs: number, retention: { readonly eventsMs: number; readonly watchesMs: number }): number {
    return this.#transaction(() => {
      const events = this.#sql(
        "DELETE FROM events WHERE created_at < ? AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.pos = events.pos AND d.state = 'pending')",
      ).run(nowMs - retention.eventsMs).changes;
      this.#sql('DELETE FROM deliveries WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.pos = deliveries.pos)').run();
      const watches = this.#sql("DELETE FROM watches WHERE state != 'active' AND finished_at < ?").run(nowMs - retention.watchesMs).changes;
      return Number(events) + Number(watches);
    });
  }

  healthy(): boolean {
    try {
      this.#sql('SELECT 1').get();
      return true;
    } catch {
      return false;
    }
  }

  close(): void {
    if (this.#db.isOpen) this.#db.close();
  }
}
