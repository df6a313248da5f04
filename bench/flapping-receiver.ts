// A webhook receiver that goes down now and then (answering 503, or refusing connections), and
// records every event it accepted, in arrival order, for the soak's delivery checks.
import http from 'node:http';
import type { AddressInfo } from 'node:net';

/** How the receiver answers now. */
export type ReceiverMode = 'up' | '503' | 'refuse';

/** One event the receiver accepted (answered 200). */
export interface Arrival {
  readonly id: string;
  readonly watchId: string;
  readonly seq: number;
  readonly type: string;
  readonly atMs: number;
}

/** A local webhook receiver on 127.0.0.1 that can be taken down and brought back on the same port. */
export class FlappingReceiver {
  /** Every accepted event, in arrival order (a redelivery appears again). */
  readonly arrivals: Arrival[] = [];
  /** Requests answered 503 or refused (not counted in `arrivals`). */
  rejected = 0;
  /** Time spent down, in all. */
  downMs = 0;
  /** Times it went down. */
  flaps = 0;
  #mode: ReceiverMode = 'up';
  #server = http.createServer((req, res) => this.#handle(req, res));
  #port = 0;
  #downSinceMs = 0;

  /** The URL to give the webhook sink. */
  get url(): string {
    return `http://127.0.0.1:${this.#port}/hook`;
  }

  get mode(): ReceiverMode {
    return this.#mode;
  }

  /** Listens on a free port. */
  async start(): Promise<void> {
    await this.#listen(0);
    this.#port = (this.#server.address() as AddressInfo).port;
  }

  /** Goes down: answers 503, or stops listening and drops every connection so connects are refused. */
  async down(mode: Exclude<ReceiverMode, 'up'>): Promise<void> {
    if (this.#mode !== 'up') return;
    this.#mode = mode;
    this.flaps += 1;
    this.#downSinceMs = Date.now();
    if (mode === 'refuse') await this.#stopListening();
  }

  /** Comes back up on the same port. */
  async up(): Promise<void> {
    if (this.#mode === 'up') return;
    const was = this.#mode;
    this.#mode = 'up';
    this.downMs += Date.now() - this.#downSinceMs;
    if (was === 'refuse') await this.#listen(this.#port);
  }

  /**
   * Flaps until the signal aborts: up for 30-60 s, then down for 10-40 s, answering 503 and
   * refusing connections in turn. Resolves up.
   */
  async flap(signal: AbortSignal, random: () => number): Promise<void> {
    for (let i = 0; !signal.aborted; i += 1) {
      await sleep(30_000 + random() * 30_000, signal);
      if (signal.aborted) break;
      await this.down(i % 2 === 0 ? '503' : 'refuse');
      await sleep(10_000 + random() * 30_000, signal);
      await this.up();
    }
    await this.up();
  }

  /** Stops for good. */
  async close(): Promise<void> {
    if (this.#server.listening) await this.#stopListening();
  }

  #handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      if (this.#mode !== 'up') {
        this.rejected += 1;
        res.writeHead(503, { 'content-type': 'text/plain' }).end('down for the soak');
        return;
      }
      const event = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { id: string; watch_id: string; seq: number; type: string };
      this.arrivals.push({ id: event.id, watchId: event.watch_id, seq: event.seq, type: event.type, atMs: Date.now() });
      res.writeHead(200).end();
    });
  }

  async #listen(port: number): Promise<void> {
    // the port may be taken while it was free: try again rather than move (the daemon keeps the URL)
    for (;;) {
      try {
        await new Promise<void>((resolve, reject) => {
          this.#server.once('error', reject);
          this.#server.listen(port, '127.0.0.1', () => {
            this.#server.off('error', reject);
            resolve();
          });
        });
        return;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw error;
        process.stderr.write(`soak: receiver port ${port} taken, retrying\n`);
        await sleep(1_000);
      }
    }
  }

  async #stopListening(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#server.closeAllConnections();
    await closed;
  }
}

/** Resolves after `ms`, or at once when the signal aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}
