import { pino } from 'pino';
import type { Logger } from 'pino';
import { ID_PATTERN } from './resource.js';
import type { WebhookRejection } from './standard-webhooks.js';
import { jsonObject } from './client.js';
import { ConfigError } from './errors.js';
import { checkWebhook, WEBHOOK_TOLERANCE_SEC, webhookKey } from './standard-webhooks.js';

/** How one inbound webhook went, for `runwatch_webhooks_total{outcome}`. */
export type HookOutcome = 'received' | 'verified' | 'rejected' | 'duplicate' | 'matched' | 'unknown' | 'ignored';

/** What the receiver needs from the watcher (or the daemon's engine). */
export interface HookDeps {
  /** Polls the watch of this response now; false when none watches it (`RunWatcher.wakeResponse`). */
  wakeResponse(responseId: string): boolean | Promise<boolean>;
  /**
   * True the first time this webhook id is seen within `WEBHOOK_REPLAY_WINDOW_MS`.
   * @default a memory of this process
   */
  claimWebhook?(webhookId: string): boolean | Promise<boolean>;
  /** Counts each stage a webhook passes (metrics). @default none */
  count?(outcome: HookOutcome): void;
  /** @default a silent logger */
  logger?: Logger;
}

/** How long a webhook id is remembered: twice the timestamp tolerance, past which a replay is refused anyway. */
export const WEBHOOK_REPLAY_WINDOW_MS = 2 * WEBHOOK_TOLERANCE_SEC * 1000;

/** Webhook ids seen by this process, forgotten after the replay window (the receiver's default). */
class SeenWebhooks {
  /** Ids in arrival order, with when each may be forgotten: the oldest expire first. */
  readonly #seen = new Map<string, number>();

  /** True the first time `webhookId` is seen within the window. */
  claim(webhookId: string, nowMs: number = Date.now()): boolean {
    for (const [id, expiresAtMs] of this.#seen) {
      if (expiresAtMs > nowMs) break;
      this.#seen.delete(id);
    }
    if (this.#seen.has(webhookId)) return false;
    this.#seen.set(webhookId, nowMs + WEBHOOK_REPLAY_WINDOW_MS);
    return true;
  }
}

/** The answer to give OpenAI. */
export interface HookAnswer {
  readonly status: number;
  readonly body: unknown;
}

/** The rejections, as the answer's status and stable code. */
const REJECTIONS: Readonly<Record<WebhookRejection | 'invalid_body', { status: number; message: string }>> = {
  missing_headers: { status: 400, message: 'webhook-id, webhook-timestamp and webhook-signature are required' },
  bad_timestamp: { status: 400, message: 'webhook-timestamp is more than 300 s away from now: check the clock, or this is a replay' },
  bad_signature: { status: 401, message: 'no webhook-signature matches a configured secret (RUNWATCH_OPENAI_WEBHOOK_SECRET)' },
  invalid_body: { status: 400, message: 'the body is not an OpenAI event: expected JSON {id, type, created_at, data: {id}}' },
};

/**
 * The receiver of OpenAI webhooks (the daemon's `POST /v1/hooks/openai`; mount it on any HTTP
 * server with `receive(headers, rawBody)`): checks the Standard Webhooks
 * signature with any configured secret, drops a webhook id seen before, and wakes the watch
 * of the response the event names. The event only says which response: the poll it triggers
 * decides, so a forged, stale or early webhook can never end a watch. Unknown responses are
 * acknowledged (OpenAI would retry anything else for days) and counted, not stored.
 */
export class OpenAIHookReceiver {
  readonly #keys: readonly Buffer[];
  readonly #deps: HookDeps;
  readonly #logger: Logger;
  readonly #seen = new SeenWebhooks();

  /**
   * @param secrets - the endpoint's `whsec_` secrets (several while one is rotated)
   * Throws `ConfigError` for a malformed secret, or none.
   */
  constructor(secrets: readonly string[], deps: HookDeps) {
    if (secrets.length === 0) throw new ConfigError('an OpenAI webhook receiver needs the whsec_ secret of its endpoint');
    this.#keys = secrets.map((secret) => webhookKey(secret));
    this.#deps = deps;
    this.#logger = deps.logger ?? pino({ level: 'silent' });
  }

  /** Handles one request's headers and raw body. */
  async receive(headers: Readonly<Record<string, string | string[] | undefined>>, body: string, nowMs: number = Date.now()): Promise<HookAnswer> {
    const count = (outcome: HookOutcome): void => this.#deps.count?.(outcome);
    count('received');
    const checked = checkWebhook(this.#keys, headers, body, nowMs);
    if (checked !== 'ok') return this.#reject(checked);
    const event = parseEvent(body);
    if (!event) return this.#reject('invalid_body');
    count('verified');
    const webhookId = headers['webhook-id'] as string;
    if (!(await (this.#deps.claimWebhook ? this.#deps.claimWebhook(webhookId) : this.#seen.claim(webhookId, nowMs)))) {
      count('duplicate');
      return { status: 200, body: { status: 'duplicate' } };
    }
    if (!event.type.startsWith('response.')) {
      count('ignored');
      return { status: 200, body: { status: 'ignored' } };
    }
    const matched = ID_PATTERN.test(event.objectId) && (await this.#deps.wakeResponse(event.objectId));
    count(matched ? 'matched' : 'unknown');
    if (this.#logger.isLevelEnabled('debug')) this.#logger.debug({ type: event.type, responseId: event.objectId, matched }, 'webhook received');
    return { status: 200, body: { status: matched ? 'matched' : 'unknown' } };
  }

  #reject(reason: WebhookRejection | 'invalid_body'): HookAnswer {
    this.#deps.count?.('rejected');
    const { status, message } = REJECTIONS[reason];
    this.#logger.warn({ reason }, `webhook rejected: ${message}`);
    return { status, body: { error: { code: reason, message } } };
  }
}

/** The fields of an OpenAI event that matter here, or `undefined` when the body is not one. */
function parseEvent(body: string): { readonly type: string; readonly objectId: string } | undefined {
  const parsed = jsonObject(body);
  if (!parsed) return undefined;
  const { type, data } = parsed;
  const objectId = typeof data === 'object' && data !== null ? (data as { id?: unknown }).id : undefined;
  if (typeof type !== 'string' || type === '' || typeof objectId !== 'string' || objectId === '') return undefined;
  return { type, objectId };
}
