import { SqliteStore } from './sqlite.js';

/**
 * The store in this process's memory: SQLite's `:memory:` database, so the same code and the
 * same contract as the embedded store (seq-checked commits, an event log, one delivery per
 * event and sink) with nothing on disk and nothing surviving the process. For development
 * (`store.kind: "memory"`), tests, and library users who want the daemon's semantics.
 */
export class MemoryStore extends SqliteStore {
  /** @param options.sinks - the sinks every event gets a delivery for */
  constructor(options: { readonly sinks?: readonly string[] } = {}) {
    super(':memory:', options);
  }
}
