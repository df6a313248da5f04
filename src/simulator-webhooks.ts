import { randomBytes } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { z } from 'zod';
import { sleep } from './backoff.js';
import { ConfigError } from './errors.js';
import { signWebhook, webhookKey } from './standard-webhooks.js';

/**
 * Signed webhooks the simulator POSTs when a background response ends, as OpenAI does
 * (`response.completed`, `response.failed`, `response.cancelled`, `response.incomplete`), with
 * seeded faults: drops, duplicates and late arrivals.
 */
export interface SimulatedWebhooks {
  /** Where to POST each event (http or https). */
  readonly url: string;
  /** Standard Webhooks secret (`whsec_` + base64 of at least 16 bytes) that signs every request. */
  readonly secret: string;
  /** Share of events never sent, 0..1. @default 0 */
  readonly dropRate?: number;
  /** Wait between the terminal status and the first POST. @default 0 */
  readonly delayMs?: number;
  /** Share of events sent twice, with the same `webhook-id`, 0..1. @default 0 */
  readonly duplicateRate?: number;
  /** Share of events held back by an extra random delay up to `reorderDelayMs`, so they arrive after later ones, 0..1. @default 0 */
  readonly reorderRate?: number;
  /** Longest extra delay of a held-back event. @default 500 */
  readonly reorderDelayMs?: number;
  /** Seed of the draws behind the rates: the same seed makes the same choices in the same order. @default 1 */
  readonly seed?: number;
}

/** Webhook counters of a simulator. */
export interface WebhookStats {
  /** POSTs made, retries and duplicates included. */
  readonly attempts: number;
  /** Deliveries answered 2xx (both copies of a duplicated event count). */
  readonly sent: number;
  /** Events never sent, by `dropRate`. */
  readonly dropped: number;
  /** Events sent twice, by `duplicateRate`. */
  readonly duplicated: number;
  /** Events held back, by `reorderRate`. */
  readonly reordered: number;
  /** Deliveries given up: no 2xx after the two retries. */
  readonly failed: number;
}

/** Waits before the retries of a POST that got no 2xx. */
const RETRY_DELAYS_MS = [200, 1_000] as const;
/** Longest wait for one POST's answer. */
const POST_TIMEOUT_MS = 5_000;

const rate = z.number().min(0).max(1).optional();
const webhooksSchema = z.object({
  url: z.url({ protocol: /^https?$/ }),
  secret: z.string(),
  dropRate: rate,
  delayMs: z.number().nonnegative().optional(),
  duplicateRate: rate,
  reorderRate: rate,
  reorderDelayMs: z.number().nonnegative().optional(),
  seed: z.number().int().optional(),
});

/** Validates webhook options; throws `ConfigError` naming the field. */
export function parseSimulatedWebhooks(input: unknown): SimulatedWebhooks {
  const result = webhooksSchema.safeParse(input);
  if (!result.success) {
    const issue = result.error.issues[0];
    throw new ConfigError(`invalid simulator webhooks: ${issue ? `${issue.path.join('.') || '(root)'}: ${issue.message}` : 'unknown error'}`);
  }
  webhookKey(result.data.secret);
  return result.data;
}

/** mulberry32: tiny and reproducible, enough to draw fault choices (and the benchmark's timelines) from a seed. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Sends the simulator's webhooks; never throws, and `close()` leaves no timer or socket behind. */
export class WebhookSender {
  readonly #options: SimulatedWebhooks;
  readonly #url: URL;
  readonly #key: Buffer;
  readonly #random: () => number;
  readonly #abort = new AbortController();
  readonly #timers = new Set<NodeJS.Timeout>();
  readonly #dropped: string[] = [];
  readonly #stats = { attempts: 0, sent: 0, dropped: 0, duplicated: 0, reordered: 0, failed: 0 };

  constructor(options: SimulatedWebhooks) {
    this.#options = parseSimulatedWebhooks(options);
    this.#url = new URL(this.#options.url);
    this.#key = webhookKey(this.#options.secret);
    this.#random = seededRandom(this.#options.seed ?? 1);
  }

  /** Responses whose webhook was dropped on purpose. */
  dropped(): readonly string[] {
    return [...this.#dropped];
  }

  /** A copy of the counters. */
  stats(): WebhookStats {
    return { ...this.#stats };
  }

  /** Sends (or drops, doubles, holds back) the event of a response that reached `status` at `atMs`. */
  send(responseId: string, status: string, atMs: number): void {
    if (this.#abort.signal.aborted) return;
    // four draws per event whatever the rates, so a seed makes the same choices at any rate
    const [drop, duplicate, reorder, extra] = [this.#random(), this.#random(), this.#random(), this.#random()];
    const options = this.#options;
    if (drop < (options.dropRate ?? 0)) {
      this.#stats.dropped += 1;
      this.#dropped.push(responseId);
      return;
    }
    const copies = duplicate < (options.duplicateRate ?? 0) ? 2 : 1;
    if (copies === 2) this.#stats.duplicated += 1;
    const held = reorder < (options.reorderRate ?? 0);
    if (held) this.#stats.reordered += 1;
    const id = `evt_${randomBytes(16).toString('hex')}`;
    const body = JSON.stringify({ id, object: 'event', type: `response.${status}`, created_at: Math.floor(atMs / 1000), data: { id: responseId } });
    const waitMs = (options.delayMs ?? 0) + (held ? extra * (options.reorderDelayMs ?? 500) : 0);
    if (waitMs <= 0) {
      void this.#deliver(id, body, copies);
      return;
    }
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      void this.#deliver(id, body, copies);
    }, waitMs);
    this.#timers.add(timer);
  }

  /** Clears every pending send and aborts the POSTs in flight. */
  close(): void {
    this.#abort.abort();
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
  }

  async #deliver(id: string, body: string, copies: number): Promise<void> {
    for (let copy = 0; copy < copies; copy += 1) {
      for (let attempt = 0; ; attempt += 1) {
        if (this.#abort.signal.aborted) return;
        this.#stats.attempts += 1;
        if (await this.#post(id, body)) {
          this.#stats.sent += 1;
          break;
        }
        const waitMs = RETRY_DELAYS_MS[attempt];
        if (waitMs === undefined) {
          this.#stats.failed += 1;
          break;
        }
        try {
          await sleep(waitMs, this.#abort.signal);
        } catch {
          return;
        }
      }
    }
  }

  /** One POST, signed at the time it is made; resolves whether it got a 2xx, never rejects. */
  #post(id: string, body: string): Promise<boolean> {
    const timestampSec = Math.floor(Date.now() / 1000);
    const headers = {
      'content-type': 'application/json',
      'content-length': String(Buffer.byteLength(body)),
      'webhook-id': id,
      'webhook-timestamp': String(timestampSec),
      'webhook-signature': signWebhook(this.#key, id, timestampSec, body),
    };
    return new Promise((resolve) => {
      // no keep-alive agent: an idle socket would outlive close()
      const request = (this.#url.protocol === 'https:' ? https : http).request(this.#url, { method: 'POST', headers, agent: false, signal: this.#abort.signal, timeout: POST_TIMEOUT_MS }, (res) => {
        res.resume();
        res.on('error', () => undefined);
        const status = res.statusCode ?? 0;
        resolve(status >= 200 && status < 300);
      });
      request.on('timeout', () => request.destroy(new Error('webhook POST timed out')));
      request.on('error', () => resolve(false));
      request.end(body);
    });
  }
}
