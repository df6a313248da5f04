import { createHmac, timingSafeEqual } from 'node:crypto';
import { ConfigError } from './errors.js';

/**
 * Standard Webhooks (https://www.standardwebhooks.com), both ways: the webhook sink signs what
 * it sends, the daemon's `/v1/hooks/openai` checks what OpenAI sends, the simulator signs.
 */

/** Why a webhook was refused: a header is missing, its timestamp is out of tolerance, or no signature matches. */
export type WebhookRejection = 'missing_headers' | 'bad_timestamp' | 'bad_signature';

/**
 * How far `webhook-timestamp` may be from now, in seconds.
 * @default 300 (as the spec and OpenAI's SDKs)
 */
export const WEBHOOK_TOLERANCE_SEC = 300;

/** Decodes a `whsec_` secret to its key bytes; throws `ConfigError` when malformed. */
export function webhookKey(secret: string): Buffer {
  const encoded = secret.startsWith('whsec_') ? secret.slice('whsec_'.length) : secret;
  const key = Buffer.from(encoded, 'base64');
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(encoded) || key.length < 16) {
    throw new ConfigError('invalid webhook secret: expected whsec_ followed by base64 of at least 16 bytes');
  }
  return key;
}

/** The Standard Webhooks signature: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`. */
export function signWebhook(key: Buffer, id: string, timestampSec: number, body: string): string {
  return `v1,${createHmac('sha256', key).update(`${id}.${timestampSec}.${body}`).digest('base64')}`;
}

type HeaderBag = Readonly<Record<string, string | string[] | undefined>>;

/**
 * Checks a request against several keys (secrets being rotated): one of the space-separated
 * `v1,` signatures must match one key, and the timestamp must be within `toleranceSec` of now.
 * Returns `ok` or why it was refused.
 */
export function checkWebhook(keys: readonly Buffer[], headers: HeaderBag, body: string, nowMs: number, toleranceSec = WEBHOOK_TOLERANCE_SEC): 'ok' | WebhookRejection {
  const id = headers['webhook-id'];
  const timestamp = headers['webhook-timestamp'];
  const signatures = headers['webhook-signature'];
  if (typeof id !== 'string' || id === '' || typeof timestamp !== 'string' || typeof signatures !== 'string') return 'missing_headers';
  const ts = Number(timestamp);
  if (!/^\d{1,12}$/.test(timestamp) || Math.abs(nowMs / 1000 - ts) > toleranceSec) return 'bad_timestamp';
  const given = signatures.split(' ').map((candidate) => Buffer.from(candidate));
  for (const key of keys) {
    const expected = Buffer.from(signWebhook(key, id, ts, body));
    if (given.some((candidate) => candidate.length === expected.length && timingSafeEqual(candidate, expected))) return 'ok';
  }
  return 'bad_signature';
}

/**
 * Verifies a Standard Webhooks request (for receivers of the webhook sink, and tests): one of
 * the space-separated `v1,` signatures must match and the timestamp must be within
 * `toleranceSec` of now.
 */
export function verifyWebhook(secret: string, headers: HeaderBag, body: string, nowMs = Date.now(), toleranceSec = WEBHOOK_TOLERANCE_SEC): boolean {
  return checkWebhook([webhookKey(secret)], headers, body, nowMs, toleranceSec) === 'ok';
}
