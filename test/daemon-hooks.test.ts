import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { signWebhook, webhookKey } from '../src/standard-webhooks.js';
import { requireRedis } from './redis.js';
import { readSseEvents } from './sse.js';
import { storeKinds, useDaemon } from './daemons.js';

const KEY = 'sk-daemon-hooks';
const TOKEN = 'control-token-hooks';
const OLD_SECRET = `whsec_${randomBytes(32).toString('base64')}`;
const NEW_SECRET = `whsec_${randomBytes(32).toString('base64')}`;
const redisAvailable = await requireRedis();

/** Resolves once `check` holds; checked every 10 ms for up to 5 s (state kept by another process part, no event to wait on). */
async function until(check: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

let eventCount = 0;

/** An OpenAI event for a response, signed with `secret`; `at` shifts its timestamp. */
function webhook(responseId: string, secret: string, options: { type?: string; id?: string; atMs?: number; body?: string } = {}) {
  const id = options.id ?? `evt_hooks_${(eventCount += 1)}`;
  const timestampSec = Math.floor((options.atMs ?? Date.now()) / 1000);
  const body = options.body ?? JSON.stringify({ id, object: 'event', type: options.type ?? 'response.completed', created_at: timestampSec, data: { id: responseId } });
  const headers = { 'content-type': 'application/json', 'webhook-id': id, 'webhook-timestamp': String(timestampSec), 'webhook-signature': signWebhook(webhookKey(secret), id, timestampSec, body) };
  return { id, body, headers };
}

describe.each(storeKinds(redisAvailable))('inbound OpenAI webhooks with the $kind store', ({ kind, skip }) => {
  const t = useDaemon(kind, {
    skip,
    key: KEY,
    // the old secret and the new one during a rotation
    secrets: { controlToken: TOKEN, openaiWebhookSecrets: [OLD_SECRET, NEW_SECRET] },
    // a safety net far beyond the test's length: only a webhook makes the daemon poll again
    settings: () => [
      ['push.mode', '"webhook"'],
      ['push.safetyNetBaseMs', '600000'],
      ['push.safetyNetCapMs', '600000'],
    ],
  });
  const auth = { authorization: `Bearer ${TOKEN}` };
  const gets = (responseId: string): number => t.sim.requests(responseId).filter((r) => r.method === 'GET').length;
  const post = (delivery: { body: string; headers: Record<string, string> }) => fetch(`${t.base}/v1/hooks/openai`, { method: 'POST', headers: delivery.headers, body: delivery.body });
  const watch = async (responseId: string): Promise<string> => {
    const created = await fetch(`${t.base}/v1/watches`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ response_id: responseId }) });
    expect(created.status).toBe(201);
    return String(((await created.json()) as { id: string }).id);
  };
  const view = async (id: string) => (await (await fetch(`${t.base}/v1/watches/${id}`, { headers: auth })).json()) as { state: string; status: string | null };

  it.skipIf(skip)('a verified webhook makes the watch poll at once: early, it sees in_progress and goes on; once done, it ends the watch', async () => {
    const responseId = `resp_hooks_${kind}_flow`;
    t.sim.addResponse({ responseId, timeline: [{ status: 'in_progress' }] });
    const id = await watch(responseId);
    await until(async () => (await view(id)).status === 'in_progress', 'the first poll');
    expect(gets(responseId)).toBe(1);

    // the webhook came before the job was done (or was forged): the poll sees in_progress
    const early = await post(webhook(responseId, OLD_SECRET));
    expect(early.status).toBe(200);
    expect(await early.json()).toEqual({ status: 'matched' });
    await until(() => gets(responseId) === 2, 'the woken poll');
    expect(await view(id)).toMatchObject({ state: 'active', status: 'in_progress' });

    // now it is done; the webhook signed with the rotated secret wakes it and the poll confirms
    t.sim.addResponse({ responseId, timeline: [{ status: 'completed' }] });
    const done = await post(webhook(responseId, NEW_SECRET));
    expect(done.status).toBe(200);
    const events = await readSseEvents(`${t.base}/v1/events?response_id=${responseId}`, (list) => list.some((e) => e.type === 'response.completed'), auth);
    expect(events.map((e) => e.type)).toEqual(['response.in_progress', 'response.completed']);
    // the replaced response keeps a log of its own: one GET confirmed the webhook
    expect(gets(responseId)).toBe(1);
    expect(await view(id)).toMatchObject({ state: 'finished', status: 'completed' });
  });

  it.skipIf(skip)('refuses a wrong secret, a stale timestamp, missing headers and a bad body with a JSON 4xx, and polls nothing', async () => {
    const responseId = `resp_hooks_${kind}_refused`;
    t.sim.addResponse({ responseId, timeline: [{ status: 'in_progress' }] });
    const id = await watch(responseId);
    await until(async () => (await view(id)).status === 'in_progress', 'the first poll');

    const wrong = await post(webhook(responseId, `whsec_${randomBytes(32).toString('base64')}`));
    expect(wrong.status).toBe(401);
    expect(await wrong.json()).toMatchObject({ error: { code: 'bad_signature' } });

    const stale = await post(webhook(responseId, NEW_SECRET, { atMs: Date.now() - 301_000 }));
    expect(stale.status).toBe(400);
    expect(await stale.json()).toMatchObject({ error: { code: 'bad_timestamp' } });

    const signed = webhook(responseId, NEW_SECRET);
    const bare = await fetch(`${t.base}/v1/hooks/openai`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: signed.body });
    expect(bare.status).toBe(400);
    expect(await bare.json()).toMatchObject({ error: { code: 'missing_headers' } });

    const notAnEvent = await post(webhook(responseId, NEW_SECRET, { body: '{"hello":"world"}' }));
    expect(notAnEvent.status).toBe(400);
    expect(await notAnEvent.json()).toMatchObject({ error: { code: 'invalid_body' } });

    const wrongMethod = await fetch(`${t.base}/v1/hooks/openai`, { headers: signed.headers });
    expect(wrongMethod.status).toBe(405);

    // a valid one afterwards proves the daemon listened all along
    expect((await post(webhook(responseId, NEW_SECRET, { type: 'response.incomplete' }))).status).toBe(200);
    await until(() => gets(responseId) === 2, 'the woken poll');
    expect(gets(responseId)).toBe(2);
  });

  it.skipIf(skip)('acknowledges a replayed webhook-id and an unknown response without polling, and counts every stage', async () => {
    const responseId = `resp_hooks_${kind}_replay`;
    t.sim.addResponse({ responseId, timeline: [{ status: 'in_progress' }] });
    const id = await watch(responseId);
    await until(async () => (await view(id)).status === 'in_progress', 'the first poll');

    const first = webhook(responseId, NEW_SECRET);
    expect(await (await post(first)).json()).toEqual({ status: 'matched' });
    await until(() => gets(responseId) === 2, 'the woken poll');
    // at least once, so sent again: acknowledged, not polled again
    const replay = await post(first);
    expect(replay.status).toBe(200);
    expect(await replay.json()).toEqual({ status: 'duplicate' });

    const unknown = await post(webhook('resp_nobody_watches', NEW_SECRET));
    expect(unknown.status).toBe(200);
    expect(await unknown.json()).toEqual({ status: 'unknown' });
    const other = await post(webhook(responseId, NEW_SECRET, { type: 'batch.completed' }));
    expect(await other.json()).toEqual({ status: 'ignored' });

    // the answers above came after the daemon acted on each: a third poll would have been started by now
    const unauthorized = await fetch(`${t.base}/metrics`);
    expect(unauthorized.status).toBe(401);
    const metrics = await (await fetch(`${t.base}/metrics`, { headers: auth })).text();
    const count = (outcome: string): number => Number(new RegExp(`runwatch_webhooks_total\\{outcome="${outcome}"\\} (\\d+)`).exec(metrics)?.[1] ?? 0);
    expect(count('duplicate')).toBeGreaterThanOrEqual(1);
    expect(count('unknown')).toBeGreaterThanOrEqual(1);
    expect(count('ignored')).toBeGreaterThanOrEqual(1);
    expect(count('matched')).toBeGreaterThanOrEqual(1);
    expect(count('received')).toBe(count('verified') + count('rejected'));
    expect(count('verified')).toBe(count('duplicate') + count('ignored') + count('matched') + count('unknown'));
    expect(gets(responseId)).toBe(2);
  });
});
