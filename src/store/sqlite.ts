// node:sqlite answers synchronously: the methods are async only to meet the WatchStore interface
/* eslint-disable @typescript-eslint/require-await */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import type { StatementSync } from 'node:sqlite';
import { ConfigError, StoreOpenError, StoreWriteError } from '../errors.js';
import type { Progress } from '../step.js';
import type { CommitResult, DeliveryLog, EventFilter, NewWatch, PendingDelivery, Retention, SinkStats, StoredEvent, StoredProgress, StoredWatchEvent, WatchChange, WatchRecord, WatchQuery, WatchState, WatchStore, WatchTarget } from './store.js';
import { committedFields, eventTarget, idFieldsOfTarget, isCheckpoint, needsScan, parseJson, targetKey } from './store.js';

/** `attentionRank` (src/store/store.ts) of a row, in SQL: the same four ranks from the same fields. */
const ATTENTION_RANK_SQL = `CASE
  WHEN state = 'active' AND (status = 'requires_action' OR json_extract(progress, '$.stallReported') = 1 OR json_extract(progress, '$.consecutiveErrors') > 0) THEN 0
  WHEN state = 'failed' THEN 1
  WHEN state = 'active' THEN 2
  ELSE 3 END`;

/** The schema version this code writes (`PRAGMA user_version`); 0 is the run-only schema of 0.x, 2 had no progress column. */
const SCHEMA_VERSION = 3;

/** Since version 3 a watch's state is its `progress` (JSON); status, seq and next_poll_at are kept beside it for queries, and the older columns are read only from rows written before. */
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
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  progress TEXT
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

/** From version 2: the progress column; rows keep their older columns, read until their next write. */
const MIGRATE_FROM_2 = 'ALTER TABLE watches ADD COLUMN progress TEXT;';

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
  created_at: number;
  updated_at: number;
  finished_at: number | null;
  handled_calls: string | null;
  cancel_requested: number;
  progress: string | null;
}

/** The progress of a row: its JSON, or (rows written before version 3) what the older columns held. */
function storedProgress(row: WatchRow): StoredProgress {
  const progress = parseJson<StoredProgress>(row.progress);
  if (progress) return progress;
  return {
    status: row.status,
    seq: row.seq,
    lastSnapshot: parseJson(row.last_snapshot),
    ...(row.status_since === null ? {} : { statusSinceMs: row.status_since }),
    handledCalls: row.handled_calls,
    cancelRequested: row.cancel_requested === 1,
  };
}

function toRecord(row: WatchRow, fresher?: Progress): WatchRecord {
  const target: WatchTarget = row.kind === 'response' ? { kind: 'response', response_id: row.response_id! } : { kind: 'run', thread_id: row.thread_id!, run_id: row.run_id! };
  return {
    ...target,
    id: row.id,
    metadata: parseJson(row.metadata),
    callback_url: row.callback_url,
    state: row.state as WatchState,
    progress: fresher ?? storedProgress(row),
    error: parseJson(row.error),
    created_at: row.created_at,
    updated_at: row.updated_at,
    finished_at: row.finished_at,
  };
}

/** How often checkpoints (steps without events) are written: they are a hint, a restart polls at once anyway. */
const CHECKPOINT_MS = 2_000;

/**
 * The embedded store: one SQLite file (Node's built-in `node:sqlite`, no native build) in WAL
 * mode. A step with events is written at once, in one transaction with its watch's progress
 * and one delivery row per sink; a step without events is a checkpoint, kept in memory and
 * written in a batch every 2 s. `synchronous=NORMAL` survives a process crash (`kill -9`),
 * not a power cut.
 */
export class SqliteStore implements WatchStore, DeliveryLog {
  readonly #db: DatabaseSync;
  readonly #statements = new Map<string, StatementSync>();
  readonly #sinks: readonly string[];
  /** The latest checkpoint of each watch not yet written. */
  readonly #checkpoints = new Map<string, Progress>();
  readonly #timer: NodeJS.Timeout;

  /**
   * Opens (creating when missing) the store in `file` (or `:memory:`); throws `StoreOpenError`
   * when it cannot, `ConfigError` when the file was written by a newer runwatch.
   * @param options.sinks - the sinks every event gets a delivery row for
   */
  constructor(file: string, options: { readonly sinks?: readonly string[] } = {}) {
    this.#sinks = options.sinks ?? [];
    try {
      if (file !== ':memory:') mkdirSync(path.dirname(file), { recursive: true });
      this.#db = new DatabaseSync(file);
      this.#db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = OFF;');
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? (error instanceof Error ? error.message : 'error');
      throw new StoreOpenError(`cannot open the store ${file} (${code}): check that the data dir is a writable directory`, { cause: error });
    }
    this.#migrate(file);
    this.#timer = setInterval(() => {
      try {
        this.#flush();
      } catch {
        // checkpoints are hints; a store that cannot be written fails the next step with events, which stops the daemon
      }
    }, CHECKPOINT_MS);
    this.#timer.unref();
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
      if (!hasWatches) this.#db.exec(WATCHES + LOG);
      else if (version === 0) this.#db.exec(MIGRATE_FROM_0);
      else this.#db.exec(MIGRATE_FROM_2);
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

  async create(input: NewWatch, nowMs: number): Promise<{ watch: WatchRecord; created: boolean }> {
    const key = targetKey(input);
    return this.#transaction(() => {
      const existing = this.#sql('SELECT * FROM watches WHERE target = ?').get(key) as WatchRow | undefined;
      if (existing) return { watch: this.#record(existing), created: false };
      const order = (this.#sql('SELECT COALESCE(MAX(created_order), 0) + 1 AS n FROM watches').get() as { n: number }).n;
      const ids = idFieldsOfTarget(input);
      this.#sql(
        `INSERT INTO watches (id, kind, target, thread_id, run_id, response_id, metadata, callback_url, state, seq, created_at, updated_at, created_order)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'active', 0, ?, ?, ?)`,
      ).run(input.id, input.kind, key, ids.thread_id, ids.run_id, ids.response_id, input.metadata ? JSON.stringify(input.metadata) : null, input.callback_url ?? null, nowMs, nowMs, order);
      return { watch: this.#getSync(input.id)!, created: true };
    });
  }

  async get(id: string): Promise<WatchRecord | undefined> {
    return this.#getSync(id);
  }

  #getSync(id: string): WatchRecord | undefined {
    const row = this.#sql('SELECT * FROM watches WHERE id = ?').get(id) as WatchRow | undefined;
    return row ? this.#record(row) : undefined;
  }

  /** A row as a record, with its checkpoint when one is newer than the row. */
  #record(row: WatchRow): WatchRecord {
    return toRecord(row, row.state === 'active' ? this.#checkpoints.get(row.id) : undefined);
  }

  async list(query: WatchQuery): Promise<WatchRecord[]> {
    if (needsScan(query)) return this.#query(query);
    const afterOrder = query.after ? ((this.#sql('SELECT created_order FROM watches WHERE id = ?').get(query.after) as { created_order: number } | undefined)?.created_order ?? 0) : 0;
    const rows = query.state
      ? this.#sql('SELECT * FROM watches WHERE state = ? AND created_order > ? ORDER BY created_order LIMIT ?').all(query.state, afterOrder, query.limit)
      : this.#sql('SELECT * FROM watches WHERE created_order > ? ORDER BY created_order LIMIT ?').all(afterOrder, query.limit);
    return (rows as unknown as WatchRow[]).map((row) => this.#record(row));
  }

  /** A list with a status, a search or the attention order: one query, ranked in SQL. */
  #query(query: WatchQuery): WatchRecord[] {
    // the rank reads progress: checkpoints (a failing poll's error count) go in first
    if (query.order === 'attention') this.#flush();
    const clauses: string[] = [];
    const params: Array<string | number> = [];
    if (query.state) {
      clauses.push('state = ?');
      params.push(query.state);
    }
    if (query.status === 'none') clauses.push('status IS NULL');
    else if (query.status !== undefined) {
      clauses.push('status = ?');
      params.push(query.status);
    }
    if (query.search) {
      clauses.push("(instr(id, ?) > 0 OR instr(COALESCE(run_id, ''), ?) > 0 OR instr(COALESCE(thread_id, ''), ?) > 0 OR instr(COALESCE(response_id, ''), ?) > 0)");
      params.push(query.search, query.search, query.search, query.search);
    }
    const rank = query.order === 'attention' ? ATTENTION_RANK_SQL : '0';
    let cursor = '';
    if (query.after) {
      const from = this.#sql(`SELECT ${rank} AS rank, created_order FROM watches WHERE id = ?`).get(query.after) as { rank: number; created_order: number } | undefined;
      if (from) {
        cursor = 'WHERE (rank, created_order) > (?, ?)';
        params.push(from.rank, from.created_order);
      }
    }
    params.push(query.limit);
    const where = clauses.length > 0 ? `WHERE ${clauses.join(' AND ')}` : '';
    const rows = this.#db.prepare(`SELECT * FROM (SELECT *, ${rank} AS rank FROM watches ${where}) ${cursor} ORDER BY rank, created_order LIMIT ?`).all(...params);
    return (rows as unknown as WatchRow[]).map((row) => this.#record(row));
  }

  async *active(): AsyncIterable<WatchRecord> {
    const rows = this.#sql("SELECT * FROM watches WHERE state = 'active' ORDER BY created_order").all() as unknown as WatchRow[];
    for (const row of rows) yield this.#record(row);
  }

  async loadProgress(id: string): Promise<Progress | undefined> {
    const record = await this.get(id);
    return (record?.progress as Progress | null | undefined) ?? undefined;
  }

  /** Runs synchronously up to its result, so steps of one process are written in the order they were committed. */
  async commit(watchId: string, expectedSeq: number, change: WatchChange): Promise<CommitResult> {
    // a step that changed nothing a consumer sees is a checkpoint: written with the next batch (unless a server's retry-after must survive a crash)
    if (isCheckpoint(change)) {
      this.#checkpoints.set(watchId, change.progress);
      return 'ok';
    }
    try {
      return this.#write(watchId, expectedSeq, change, Date.now());
    } catch (error) {
      throw new StoreWriteError(`could not write watch ${watchId}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
    }
  }

  #write(watchId: string, expectedSeq: number, change: WatchChange, nowMs: number): CommitResult {
    return this.#transaction((): CommitResult => {
      const fields = committedFields(change, nowMs);
      const updated = this.#sql(
        `UPDATE watches SET state = ?, status = ?, seq = ?, progress = ?, error = COALESCE(?, error), next_poll_at = ?, updated_at = ?, finished_at = ?
          WHERE id = ? AND seq = ? AND state = 'active'`,
      ).run(fields.state, fields.status, fields.seq, fields.progress, fields.error, fields.next_poll_at, fields.updated_at, fields.finished_at, watchId, expectedSeq);
      if (Number(updated.changes) === 0) return this.#refusal(watchId);
      this.#checkpoints.delete(watchId);
      const watch = this.#sql('SELECT callback_url FROM watches WHERE id = ?').get(watchId) as { callback_url: string | null };
      const sinks = watch.callback_url ? [...this.#sinks, 'callback'] : this.#sinks;
      for (const event of change.events as readonly StoredWatchEvent[]) this.#append(event, sinks, nowMs);
      return 'ok';
    });
  }

  /** Why an update matched no row. */
  #refusal(watchId: string): Exclude<CommitResult, 'ok'> {
    const row = this.#sql('SELECT state FROM watches WHERE id = ?').get(watchId) as { state: string } | undefined;
    return !row ? 'missing' : row.state !== 'active' ? 'ended' : 'stale';
  }

  /** Appends one event to the log and queues a delivery per sink. */
  #append(event: StoredWatchEvent, sinks: readonly string[], nowMs: number): void {
    // the seq check makes a repeated event id impossible; the unique index would turn one into a failed step, so skip it instead
    if (this.#sql('SELECT 1 FROM events WHERE event_id = ?').get(event.id)) return;
    const ids = idFieldsOfTarget(eventTarget(event));
    const pos = Number(
      this.#sql('INSERT INTO events (event_id, watch_id, thread_id, run_id, response_id, payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)').run(
        event.id,
        event.watch_id,
        ids.thread_id ?? '',
        ids.run_id ?? '',
        ids.response_id,
        JSON.stringify(event),
        nowMs,
      ).lastInsertRowid,
    );
    const queue = this.#sql('INSERT INTO deliveries (sink, pos, updated_at) VALUES (?, ?, ?)');
    for (const sink of sinks) queue.run(sink, pos, nowMs);
  }

  /** Writes the checkpoints kept since the last batch (only where no newer step was written meanwhile). */
  #flush(): void {
    if (this.#checkpoints.size === 0 || !this.#db.isOpen) return;
    const nowMs = Date.now();
    const update = this.#sql("UPDATE watches SET progress = ?, next_poll_at = ?, updated_at = ? WHERE id = ? AND seq = ? AND state = 'active'");
    const batch = [...this.#checkpoints];
    this.#checkpoints.clear();
    this.#transaction(() => {
      for (const [id, progress] of batch) update.run(JSON.stringify(progress), progress.next?.kind === 'poll' ? progress.next.atMs : null, nowMs, id, progress.seq);
    });
  }

  async pendingDeliveries(sink: string, limit: number): Promise<PendingDelivery[]> {
    return this.#sql(
      `SELECT d.pos, e.event_id, e.watch_id, e.payload, d.attempts, d.next_attempt_at, d.first_attempt_at, w.callback_url
         FROM deliveries d JOIN events e ON e.pos = d.pos LEFT JOIN watches w ON w.id = e.watch_id
        WHERE d.sink = ? AND d.state = 'pending' ORDER BY d.pos LIMIT ?`,
    ).all(sink, limit) as unknown as PendingDelivery[];
  }

  async markDelivered(sink: string, pos: number, nowMs: number): Promise<void> {
    this.#sql("UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, updated_at = ?, last_error = NULL WHERE sink = ? AND pos = ?").run(nowMs, sink, pos);
  }

  async markRetry(sink: string, pos: number, nextAttemptAt: number, error: string, nowMs: number): Promise<void> {
    this.#sql(
      'UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?, first_attempt_at = COALESCE(first_attempt_at, ?), updated_at = ? WHERE sink = ? AND pos = ?',
    ).run(nextAttemptAt, error, nowMs, nowMs, sink, pos);
  }

  async markDead(sink: string, pos: number, error: string, nowMs: number): Promise<void> {
    this.#sql("UPDATE deliveries SET state = 'dead', attempts = attempts + 1, last_error = ?, first_attempt_at = COALESCE(first_attempt_at, ?), updated_at = ? WHERE sink = ? AND pos = ?").run(
      error,
      nowMs,
      nowMs,
      sink,
      pos,
    );
  }

  async eventsAfter(pos: number, filter: EventFilter, limit: number): Promise<StoredEvent[]> {
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

  async lastPosition(): Promise<number> {
    return (this.#sql('SELECT COALESCE(MAX(pos), 0) AS pos FROM events').get() as { pos: number }).pos;
  }

  async backlogByWatch(watchIds: readonly string[]): Promise<ReadonlyMap<string, number>> {
    if (watchIds.length === 0) return new Map();
    const rows = this.#db
      .prepare(`SELECT e.watch_id AS id, COUNT(*) AS n FROM deliveries d JOIN events e ON e.pos = d.pos WHERE d.state = 'pending' AND e.watch_id IN (${watchIds.map(() => '?').join(', ')}) GROUP BY e.watch_id`)
      .all(...watchIds) as Array<{ id: string; n: number }>;
    return new Map(rows.map((row) => [row.id, row.n]));
  }

  async sinkStats(): Promise<SinkStats[]> {
    return this.#sql("SELECT sink, SUM(state = 'pending') AS pending, SUM(state = 'dead') AS dead FROM deliveries GROUP BY sink ORDER BY sink").all() as unknown as SinkStats[];
  }

  async prune(nowMs: number, retention: Retention): Promise<number> {
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

  /** Writes the last checkpoints and closes the file. Idempotent. */
  async close(): Promise<void> {
    clearInterval(this.#timer);
    if (!this.#db.isOpen) return;
    this.#flush();
    this.#db.close();
  }
}
