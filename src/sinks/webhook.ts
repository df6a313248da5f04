import http from 'node:http';
import https from 'node:https';
import type { Got } from 'got';
import type { BackoffPolicy } from '../backoff.js';
import { parseHints } from '../client.js';
import { DeliveryError } from '../errors.js';
import type { WatchEvent } from '../events.js';
import { retryWithBackoff } from '../retry.js';
import { signWebhook, webhookKey } from '../standard-webhooks.js';
import { VERSION } from '../version.js';
import type { DeliveryContext, Sink } from './sink.js';

/** Options of a `WebhookSink`. */
export interface WebhookSinkOptions {
  /** Sink name in logs and metrics. @default 'webhook' */
  readonly name?: string;
  /** Where to POST; may be omitted when every delivery brings its own URL (callbacks). */
  readonly url?: string | undefined;
  /** A Standard Webhooks secret, `whsec_` + base64; when set, every request is signed. */
  readonly secret?: string | undefined;
  /** Timeout of one POST. @default 10000 */
  readonly timeoutMs?: number;
  /** Immediate retries of a failed POST before the outbox schedules a later attempt. @default 2 */
  readonly quickRetries?: number;
}

/** Longest `retry-after` waited out in place; a longer one is left to the outbox, which persists the wait across restarts. */
const QUICK_RETRY_AFTER_MAX_MS = 2_000;

/** Waits between quick retries: 200 ms, 400 ms, ... up to 2 s, or the receiver's short `retry-after`. */
const QUICK_BACKOFF: BackoffPolicy = Object.freeze({ baseMs: 200, capMs: 2_000, growth: 2, jitter: 0, maxFloorMs: QUICK_RETRY_AFTER_MAX_MS });

/**
 * POSTs each event as JSON, signed per the Standard Webhooks spec (`webhook-id` is the event
 * id, so receivers de-duplicate redeliveries). Network errors, 408, 429 and 5xx are retried
 * (obeying `retry-after`); other answers are permanent and dead-letter the event.
 */
export class WebhookSink implements Sink {
  readonly name: string;
  readonly #url: string | undefined;
  readonly #key: Buffer | undefined;
  readonly #quickRetries: number;
  readonly #timeoutMs: number;
  #got: Promise<Got> | undefined;
  readonly #agents = { http: new http.Agent({ keepAlive: true }), https: new https.Agent({ keepAlive: true }) };

  constructor(options: WebhookSinkOptions) {
    this.name = options.name ?? 'webhook';
    this.#url = options.url;
    this.#key = options.secret ? webhookKey(options.secret) : undefined;
    this.#quickRetries = options.quickRetries ?? 2;
    this.#timeoutMs = options.timeoutMs ?? 10_000;
  }

  /** got is loaded on the first delivery: it costs a process about 35 MB that a watcher without webhooks need not pay. */
  #client(): Promise<Got> {
    this.#got ??= import('got').then(({ default: got }) =>
      got.extend({ agent: this.#agents, retry: { limit: 0 }, throwHttpErrors: false, followRedirect: false, timeout: { request: this.#timeoutMs } }),
    );
    return this.#got;
  }

  /** Posts the event; throws `DeliveryError` when it could not. */
  async deliver(event: WatchEvent, context: DeliveryContext = {}): Promise<void> {
    const url = context.url ?? this.#url;
    if (!url) throw new DeliveryError('no URL to deliver to', { permanent: true });
    const body = JSON.stringify(event);
    await retryWithBackoff(() => this.#post(url, event.id, body, context.signal), {
      retries: this.#quickRetries,
      backoff: QUICK_BACKOFF,
      shouldRetry: (error) => error instanceof DeliveryError && !error.permanent && (error.retryAfterMs ?? 0) <= QUICK_RETRY_AFTER_MAX_MS,
      floorMsOf: (error) => (error instanceof DeliveryError ? error.retryAfterMs : undefined),
      signal: context.signal,
    });
  }

  async #post(url: string, id: string, body: string, signal: AbortSignal | undefined): Promise<void> {
    const timestampSec = Math.floor(Date.now() / 1000);
    const headers: Record<string, string> = {
      'content-type': 'application/json',
      'user-agent': `runwatch/${VERSION}`,
      'webhook-id': id,
      'webhook-timestamp': String(timestampSec),
    };
    if (this.#key) headers['webhook-signature'] = signWebhook(this.#key, id, timestampSec, body);
    const client = await this.#client();
    let response;
    try {
      response = await client.post(url, { body, headers, signal });
    } catch (error) {
      // got's messages quote the URL, which may carry a token; keep only the code
      const code = (error as { code?: unknown } | null)?.code;
      throw new DeliveryError(`POST failed: ${typeof code === 'string' ? code : 'error'}`);
    }
    const status = response.statusCode;
    if (status >= 200 && status < 300) return;
    const retryable = status === 408 || status === 429 || status >= 500;
    throw new DeliveryError(`receiver answered HTTP ${status}`, { permanent: !retryable, retryAfterMs: parseHints(response.headers, Date.now()).retryAfterMs });
  }

  /** Closes idle sockets. */
  close(): void {
    this.#agents.http.destroy();
    this.#agents.https.destroy();
  }
}
