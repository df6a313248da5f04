import { mkdirSync } from 'node:fs';
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { WatchEvent } from '../events.js';
import type { Sink } from './sink.js';

/** When the file sink calls fsync. */
export type FsyncPolicy = 'always' | 'interval' | 'never';

/** Options of a `FileSink`. */
export interface FileSinkOptions {
  /** The NDJSON file to append to (created with its folder). */
  readonly path: string;
  /**
   * `always`: fsync after every event (nothing lost on power failure, slowest);
   * `interval`: at most every `fsyncIntervalMs`; `never`: leave it to the OS.
   * @default 'interval'
   */
  readonly fsync?: FsyncPolicy;
  /** @default 1000 */
  readonly fsyncIntervalMs?: number;
}

/**
 * Appends each event as one JSON line to a file. `reopen()` (the daemon calls it on SIGHUP)
 * lets logrotate move the file away.
 */
export class FileSink implements Sink {
  readonly name = 'file';
  readonly #path: string;
  readonly #fsync: FsyncPolicy;
  readonly #fsyncIntervalMs: number;
  #handle: Promise<FileHandle> | null = null;
  #lastSyncMs = 0;

  constructor(options: FileSinkOptions) {
    this.#path = options.path;
    this.#fsync = options.fsync ?? 'interval';
    this.#fsyncIntervalMs = options.fsyncIntervalMs ?? 1_000;
  }

  #file(): Promise<FileHandle> {
    if (!this.#handle) {
      mkdirSync(path.dirname(this.#path), { recursive: true });
      this.#handle = open(this.#path, 'a');
      // a failed open must not be cached: the next delivery tries again
      this.#handle.catch(() => (this.#handle = null));
    }
    return this.#handle;
  }

  /** Appends one line. */
  async deliver(event: WatchEvent): Promise<void> {
    const file = await this.#file();
    await file.appendFile(`${JSON.stringify(event)}\n`);
    const now = Date.now();
    if (this.#fsync === 'always' || (this.#fsync === 'interval' && now - this.#lastSyncMs >= this.#fsyncIntervalMs)) {
      await file.sync();
      this.#lastSyncMs = now;
    }
  }

  /** Closes the file; the next event opens the path again (after a rotation, a new file). */
  async reopen(): Promise<void> {
    const handle = this.#handle;
    this.#handle = null;
    if (handle) await (await handle).close().catch(() => undefined);
  }

  /** Syncs and closes the file. */
  async close(): Promise<void> {
    const handle = this.#handle;
    this.#handle = null;
    if (!handle) return;
    const file = await handle;
    if (this.#fsync !== 'never') await file.sync().catch(() => undefined);
    await file.close();
  }
}
