import { once } from 'node:events';
import type { Writable } from 'node:stream';
import type { WatchEvent } from '../events.js';
import type { Sink } from './sink.js';

/**
 * Writes each event as one line of JSON (NDJSON) to a stream, stdout by default: the format
 * log-stream consumers (Loki, Fluent Bit, `jq`) read. Waits for `drain` on backpressure.
 */
export class StdoutSink implements Sink {
  /** Sink name in logs. */
  readonly name = 'stdout';
  readonly #stream: Writable;
  #error: Error | null = null;
  readonly #onError = (error: Error): void => {
    // e.g. EPIPE when the reader went away; remembered and reported on the next delivery
    this.#error = error;
  };

  /** @param stream - where to write; @default process.stdout */
  constructor(stream: Writable = process.stdout) {
    this.#stream = stream;
    stream.on('error', this.#onError);
  }

  /** Writes one line. */
  async deliver(event: WatchEvent): Promise<void> {
    if (this.#error) throw this.#error;
    if (!this.#stream.write(`${JSON.stringify(event)}\n`)) await once(this.#stream, 'drain');
  }

  /** Waits until everything written was flushed, then detaches from the stream. */
  async close(): Promise<void> {
    if (!this.#error && this.#stream.writable) {
      await new Promise<void>((resolve) => this.#stream.write('', () => resolve()));
    }
    this.#stream.off('error', this.#onError);
  }
}
