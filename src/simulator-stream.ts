import type http from 'node:http';
import { ConfigError } from './errors.js';

/** Faults of the simulator's response streams, for tests of a client's resume logic. */
export interface StreamFaults {
  /**
   * Destroys the socket once this many events went out on a connection (never with the
   * terminal event, which ends the stream normally), so the client must resume with
   * `starting_after`. A positive integer.
   * @default undefined (no cut)
   */
  readonly streamCutAfterEvents?: number | undefined;
  /**
   * Acts as a buffering proxy: the headers go out at once, every event is held until the
   * response ends.
   * @default false
   */
  readonly streamBuffering?: boolean | undefined;
  /** Answers every stream request 400, as for a response not created with `stream: true`. @default false */
  readonly refuseStreams?: boolean | undefined;
}

/** Throws `ConfigError` on a stream fault out of range. */
export function checkStreamFaults(faults: StreamFaults): void {
  const cut = faults.streamCutAfterEvents;
  if (cut !== undefined && !(Number.isInteger(cut) && cut > 0)) throw new ConfigError(`invalid streamCutAfterEvents ${String(cut)}: use a positive integer`);
}

/** One event of a response stream before it is written; its index in the list is its `sequence_number`. */
export type StreamEventSpec =
  /** `response.created`, a status event, or the terminal event: they carry the response at `status`. */
  | { readonly type: string; readonly status: string; readonly terminal: boolean }
  /** `response.output_text.delta` number `index` (from 1) of an `in_progress` period. */
  | { readonly type: 'response.output_text.delta'; readonly index: number };

/** Statuses that have their own stream event before the terminal one. */
const STATUS_EVENTS = new Set(['queued', 'in_progress']);
const DELTA_WORDS = ['Simulated', ' streamed', ' answer', '.'] as const;

/**
 * The events of a response up to `nowMs`, a pure function of its status changes (so sequence
 * numbers are the same on every connection): `response.created`, `response.queued` and
 * `response.in_progress` as the status changes, a text delta every `deltaIntervalMs` of
 * `in_progress`, then the terminal event, after which nothing comes. Other statuses have no event.
 */
export function responseStreamEvents(transitions: ReadonlyArray<{ readonly status: string; readonly atMs: number }>, nowMs: number, deltaIntervalMs: number, isFinal: (status: string) => boolean): StreamEventSpec[] {
  const first = transitions[0];
  if (!first) return [];
  const events: StreamEventSpec[] = [{ type: 'response.created', status: first.status, terminal: false }];
  for (const [i, { status, atMs }] of transitions.entries()) {
    if (isFinal(status)) {
      events.push({ type: `response.${status}`, status, terminal: true });
      break;
    }
    if (STATUS_EVENTS.has(status)) events.push({ type: `response.${status}`, status, terminal: false });
    if (status !== 'in_progress') continue;
    // a delta due at the very time of the next change goes before it, so a cancel cannot remove one already sent
    const endMs = Math.min(transitions[i + 1]?.atMs ?? Infinity, nowMs);
    for (let index = 1; atMs + index * deltaIntervalMs <= endMs; index += 1) events.push({ type: 'response.output_text.delta', index });
  }
  return events;
}

/** The SSE frame of one event, as OpenAI writes it. */
function frame(event: StreamEventSpec, seq: number, responseAt: (status: string) => unknown): string {
  const data =
    'index' in event
      ? { type: event.type, sequence_number: seq, item_id: 'msg_sim', output_index: 0, content_index: 0, delta: DELTA_WORDS[(event.index - 1) % DELTA_WORDS.length] }
      : { type: event.type, sequence_number: seq, response: responseAt(event.status) };
  return `event: ${event.type}\ndata: ${JSON.stringify(data)}\n\n`;
}

/** One open `?stream=true` connection: sends the events after `starting_after`, then ends, or is cut. */
export class StreamConnection {
  readonly #res: http.ServerResponse;
  readonly #cutAfter: number | undefined;
  readonly #held: string[] | null;
  readonly #onEnd: () => void;
  #nextSeq: number;
  #sent = 0;
  #open = true;

  /** Writes the headers; `onEnd` runs once when it ends, is cut, or the client goes away. */
  constructor(res: http.ServerResponse, startingAfter: number, faults: StreamFaults, headers: Readonly<Record<string, string>>, onEnd: () => void) {
    this.#res = res;
    this.#nextSeq = startingAfter + 1;
    this.#cutAfter = faults.streamCutAfterEvents;
    this.#held = faults.streamBuffering ? [] : null;
    this.#onEnd = onEnd;
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', ...headers });
    res.flushHeaders();
    res.once('close', () => this.#close());
  }

  /** Writes the events not sent yet; ends after the terminal one, or cuts as the fault says. */
  pump(events: readonly StreamEventSpec[], responseAt: (status: string) => unknown): void {
    while (this.#open && this.#nextSeq < events.length) {
      const seq = this.#nextSeq;
      const event = events[seq]!;
      this.#nextSeq += 1;
      this.#sent += 1;
      const chunk = frame(event, seq, responseAt);
      const ends = 'terminal' in event && event.terminal;
      const cuts = !ends && this.#cutAfter !== undefined && this.#sent >= this.#cutAfter;
      if (ends || cuts) this.#close();
      if (this.#held) {
        this.#held.push(chunk);
        if (ends) this.#res.end(this.#held.join(''));
        else if (cuts) this.#res.destroy();
      } else if (ends) {
        this.#res.end(chunk);
      } else if (cuts) {
        // destroyed once the frame reached the socket, so the client gets exactly that many
        this.#res.write(chunk, () => this.#res.destroy());
      } else {
        this.#res.write(chunk);
      }
    }
    // a client resuming after the terminal event gets an empty stream that ends at once
    const last = events.at(-1);
    if (this.#open && last && 'terminal' in last && last.terminal && this.#nextSeq >= events.length) {
      this.#close();
      this.#res.end(this.#held?.join('') ?? '');
    }
  }

  /** Drops the connection at once (the simulator closes, or the response was replaced). */
  destroy(): void {
    this.#close();
    this.#res.destroy();
  }

  #close(): void {
    if (!this.#open) return;
    this.#open = false;
    this.#onEnd();
  }
}
