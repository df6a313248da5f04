import { createParser } from 'eventsource-parser';
import type { Logger } from 'pino';
import type { BackoffPolicy } from './backoff.js';
import { backoffDelayMs, sleep } from './backoff.js';
import type { Budget } from './budget.js';
import type { PollClient } from './client.js';
import { jsonObject } from './client.js';
import type { Watch } from './driver.js';

/** Options of the response streams of one process. */
export interface StreamOptions {
  /**
   * Most streams held open at once by this process; the watches past it poll as usual.
   * @default 100
   */
  readonly maxStreams?: number;
  /**
   * A stream that opens but delivers no event this long is dropped and its watch polls as
   * usual: a proxy that buffers the stream would deliver the events only at the end.
   * @default 10000
   */
  readonly firstEventTimeoutMs?: number;
  /**
   * A stream silent this long is dropped and reopened after its last event (a dead connection
   * that no FIN or RST reported).
   * @default 300000
   */
  readonly idleTimeoutMs?: number;
}

/** Defaults of `StreamOptions`. */
export const DEFAULT_STREAMS = Object.freeze({ maxStreams: 100, firstEventTimeoutMs: 10_000, idleTimeoutMs: 300_000 });

/** Waits between reconnections of one stream: 500 ms, 1 s, ... up to 30 s, full jitter. */
const RECONNECT: BackoffPolicy = Object.freeze({ baseMs: 500, capMs: 30_000, growth: 2, jitter: 1 });

/** Failed openings (or openings that delivered nothing) in a row after which a watch gives its stream up and polls. */
const MAX_FAILURES = 5;

/** Events after which a background response's stream has nothing more to say. */
const TERMINAL_EVENTS: ReadonlySet<string> = new Set(['response.completed', 'response.failed', 'response.incomplete', 'response.cancelled', 'error']);

/** What the streams tell the watcher about a watch. */
export interface StreamHooks {
  /** The stream delivers events: the watch may poll on its safety net. */
  opened(w: Watch): void;
  /** A terminal event arrived, or the server ended the stream: one poll now confirms it (the stream alone never ends a watch). */
  terminal(w: Watch, type: string): void;
  /** The stream is gone for good (refused, buffered, no slot after a drop): the watch polls as usual. */
  dropped(w: Watch, reason: string): void;
}

interface Entry {
  readonly watch: Watch;
  readonly controller: AbortController;
  /** The last `sequence_number` seen: a reconnection asks for what follows it. */
  lastSeq: number | undefined;
}

/**
 * The resume streams of background responses (`GET /responses/{id}?stream=true&starting_after=N`)
 * of one process, as push signals next to polling: at most `maxStreams` open, each reconnected
 * after its last sequence number with backoff, each opening counted by the request budget. A
 * terminal event only wakes the watch; its poll decides.
 */
export class ResponseStreams {
  readonly #client: PollClient;
  readonly #budget: Budget;
  readonly #hooks: StreamHooks;
  readonly #logger: Logger;
  readonly #maxStreams: number;
  readonly #firstEventTimeoutMs: number;
  readonly #idleTimeoutMs: number;
  readonly #entries = new Map<string, Entry>();
  /** Watches done with streaming (refused, dropped, or their terminal event came): never streamed again. */
  readonly #finished = new Set<string>();

  constructor(client: PollClient, budget: Budget, hooks: StreamHooks, logger: Logger, options: StreamOptions = {}) {
    this.#client = client;
    this.#budget = budget;
    this.#hooks = hooks;
    this.#logger = logger;
    this.#maxStreams = options.maxStreams ?? DEFAULT_STREAMS.maxStreams;
    this.#firstEventTimeoutMs = options.firstEventTimeoutMs ?? DEFAULT_STREAMS.firstEventTimeoutMs;
    this.#idleTimeoutMs = options.idleTimeoutMs ?? DEFAULT_STREAMS.idleTimeoutMs;
  }

  /** Streams held (or being opened) now. */
  get size(): number {
    return this.#entries.size;
  }

  /** True while a stream serves this watch. */
  has(watchId: string): boolean {
    return this.#entries.has(watchId);
  }

  /** Starts a watch's stream unless it has one, was refused, or every slot is taken; says whether it streams. */
  start(w: Watch): boolean {
    if (this.#entries.has(w.id)) return true;
    if (this.#finished.has(w.id) || this.#entries.size >= this.#maxStreams || !this.#client.openStream || w.signal.aborted) return false;
    const controller = new AbortController();
    const entry: Entry = { watch: w, controller, lastSeq: undefined };
    this.#entries.set(w.id, entry);
    void this.#run(entry, AbortSignal.any([w.signal, controller.signal])).finally(() => {
      if (this.#entries.get(w.id) === entry) this.#entries.delete(w.id);
    });
    return true;
  }

  /** Closes a watch's stream (it ended) and forgets it. */
  stop(watchId: string): void {
    this.#entries.get(watchId)?.controller.abort();
    this.#entries.delete(watchId);
    this.#finished.delete(watchId);
  }

  /** Closes every stream. */
  close(): void {
    for (const entry of this.#entries.values()) entry.controller.abort();
    this.#entries.clear();
    this.#finished.clear();
  }

  /** Opens, reads and reopens one watch's stream until a terminal event, a refusal or the abort. */
  async #run(entry: Entry, signal: AbortSignal): Promise<void> {
    const w = entry.watch;
    for (let failures = 0; !signal.aborted; ) {
      if (failures >= MAX_FAILURES) return this.#drop(entry, `${failures} connections in a row failed or ended without an event`);
      if (failures > 0) await sleep(backoffDelayMs(RECONNECT, { attempt: failures }), signal).catch(() => undefined);
      if (signal.aborted) return;
      if (!(await this.#budget.acquire(signal))) return;
      const query = entry.lastSeq === undefined ? 'stream=true' : `stream=true&starting_after=${entry.lastSeq}`;
      let opening;
      try {
        opening = await this.#client.openStream!(w.kind, w.ref, query, { watchId: w.id, signal, credentials: w.credentials, headers: w.headers, trace: w.trace?.request });
      } finally {
        this.#budget.release();
      }
      if (signal.aborted) return;
      if (!opening.ok) {
        if (opening.failure.httpStatus === 429) this.#budget.penalize(Date.now(), opening.failure.hints.retryAfterMs);
        if (opening.refused) return this.#drop(entry, `the server does not stream it: ${opening.failure.message}`);
        failures += 1;
        this.#log(w, { failures }, `stream failed to open: ${opening.failure.message}`);
        continue;
      }
      const read = await this.#read(entry, opening.body, () => opening.close(), signal);
      if (read === 'terminal' || signal.aborted) return;
      // the server ended the stream without a terminal event we know (a status of a newer API): the poll finds out
      if (read === 'events' && opening.complete()) return this.#finish(entry, 'end');
      if (read === 'silent') return this.#drop(entry, 'no event came: a proxy may buffer the stream');
      // ended or cut without a terminal event: reopen after the last event seen, at once if it delivered some
      failures = read === 'events' ? 0 : failures + 1;
    }
  }

  /**
   * Reads events until the stream ends: `terminal` (and the watch is woken), `events` (some
   * came, then it ended), `empty` (it ended without any) or `silent` (none came in time).
   */
  async #read(entry: Entry, body: AsyncIterable<string>, close: () => void, signal: AbortSignal): Promise<'terminal' | 'events' | 'empty' | 'silent'> {
    const w = entry.watch;
    let events = 0;
    let announced = false;
    let terminal: string | undefined;
    let silent = false;
    const parser = createParser({
      onEvent: (message) => {
        if (terminal !== undefined) return;
        const seq = sequenceOf(message.data);
        // a server that replays what was asked to skip must not count twice
        if (seq !== undefined) {
          if (entry.lastSeq !== undefined && seq <= entry.lastSeq) return;
          entry.lastSeq = seq;
        }
        events += 1;
        const type = message.event ?? typeOf(message.data);
        if (type !== undefined && TERMINAL_EVENTS.has(type)) terminal = type;
      },
    });
    let timer: NodeJS.Timeout | undefined;
    const arm = (ms: number, onFire: () => void): void => {
      clearTimeout(timer);
      timer = setTimeout(onFire, ms);
    };
    const onAbort = (): void => close();
    signal.addEventListener('abort', onAbort, { once: true });
    arm(this.#firstEventTimeoutMs, () => {
      silent = true;
      close();
    });
    try {
      for await (const chunk of body) {
        parser.feed(chunk);
        if (events > 0 && !announced) {
          announced = true;
          this.#hooks.opened(w);
        }
        if (terminal !== undefined) break;
        if (events > 0) arm(this.#idleTimeoutMs, close);
      }
    } catch {
      // a cut connection ends the read like a clean end
    } finally {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      close();
    }
    if (terminal !== undefined) {
      this.#finish(entry, terminal);
      return 'terminal';
    }
    if (silent && events === 0) return 'silent';
    return events > 0 ? 'events' : 'empty';
  }

  /** The stream said the response ended (`type`: its terminal event, or `end`): done streaming, the watch polls now. */
  #finish(entry: Entry, type: string): void {
    this.#entries.delete(entry.watch.id);
    this.#finished.add(entry.watch.id);
    this.#hooks.terminal(entry.watch, type);
  }

  #drop(entry: Entry, reason: string): void {
    const w = entry.watch;
    this.#entries.delete(w.id);
    this.#finished.add(w.id);
    this.#log(w, {}, `stream dropped, polling as usual: ${reason}`);
    this.#hooks.dropped(w, reason);
  }

  #log(w: Watch, fields: Record<string, unknown>, message: string): void {
    if (this.#logger.isLevelEnabled('info')) this.#logger.info({ watchId: w.id, ...fields }, message);
  }
}

/** The `sequence_number` of an event's data, without parsing a large payload when a pattern finds it. */
function sequenceOf(data: string): number | undefined {
  const match = /"sequence_number"\s*:\s*(\d+)/.exec(data);
  if (match) return Number(match[1]);
  const value = jsonObject(data)?.sequence_number;
  return typeof value === 'number' && Number.isInteger(value) ? value : undefined;
}

/** The `type` of an event whose SSE frame has no `event:` line. */
function typeOf(data: string): string | undefined {
  const match = /"type"\s*:\s*"([^"]+)"/.exec(data);
  return match?.[1];
}
