// The web view (/ui) in headless Chromium against a daemon polling the simulator: login, the
// table, live changes over the SSE stream (and its resumption after a cut), the detail with its
// cancel, escaping. Screenshots go to test/artifacts/ (gitignored) on each run.
import { existsSync, mkdirSync, mkdtempSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { BrowserContext, Page } from 'playwright-core';
import { chromium } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { useDaemon } from './daemons.js';
import { requireRedis } from './redis.js';

/** Debian's Chromium; `RUNWATCH_CHROMIUM` points elsewhere. */
const CHROMIUM = process.env.RUNWATCH_CHROMIUM ?? '/usr/bin/chromium';
const hasChromium = existsSync(CHROMIUM);
if (!hasChromium) process.stderr.write(`note: browser tests of /ui skipped: no Chromium at ${CHROMIUM} (apt-get install chromium, or set RUNWATCH_CHROMIUM)\n`);

const ARTIFACTS = path.join(import.meta.dirname, 'artifacts');
const TOKEN = 'ui-test-token';
const KEY = 'sk-ui-test';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'];

/** An HTTP proxy in front of the daemon that can cut the page's event streams and hold their reconnection. */
interface CuttableProxy {
  readonly base: string;
  /** The requests for `/v1/events` (path and query, headers) in arrival order. */
  readonly eventRequests: Array<{ url: string; headers: http.IncomingHttpHeaders }>;
  /** Destroys the open main streams (`/v1/events` without a filter) and holds new ones until `release`. */
  cut(): void;
  release(): void;
  close(): Promise<void>;
}

async function startCuttableProxy(target: () => string): Promise<CuttableProxy> {
  const open = new Set<http.ServerResponse>();
  const eventRequests: CuttableProxy['eventRequests'] = [];
  let held: Array<() => void> | null = null;
  const server = http.createServer((req, res) => {
    const url = req.url ?? '/';
    const main = url === '/v1/events';
    if (url.startsWith('/v1/events')) eventRequests.push({ url, headers: req.headers });
    const forward = (): void => {
      const upstream = http.request(`${target()}${url}`, { method: req.method, headers: req.headers }, (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      });
      upstream.on('error', () => res.destroy());
      res.on('close', () => upstream.destroy());
      req.pipe(upstream);
      if (main) {
        open.add(res);
        res.on('close', () => open.delete(res));
      }
    };
    if (main && held) held.push(forward);
    else forward();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    base: `http://127.0.0.1:${port}`,
    eventRequests,
    cut: () => {
      held = [];
      for (const res of open) res.socket?.destroy();
    },
    release: () => {
      const waiting = held ?? [];
      held = null;
      for (const forward of waiting) forward();
    },
    close: async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

describe.skipIf(!hasChromium)('the web view /ui in Chromium', () => {
  const t = useDaemon('memory', { skip: !hasChromium, key: KEY, secrets: { controlToken: TOKEN }, settings: () => [['daemon.stallThresholdMs', '60000']] });
  let proxy: CuttableProxy;
  const contexts: BrowserContext[] = [];

  beforeAll(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    proxy = await startCuttableProxy(() => t.base);
  });
  afterEach(async () => {
    await Promise.all(contexts.splice(0).map((context) => context.close()));
  });
  afterAll(async () => {
    await proxy?.close();
  });

  /** A page in a browser with a fresh profile, its errors collected. */
  async function newPage(viewport = { width: 1280, height: 860 }): Promise<{ page: Page; errors: string[] }> {
    const context = await chromium.launchPersistentContext(mkdtempSync(path.join(tmpdir(), 'runwatch-chromium-')), { executablePath: CHROMIUM, headless: true, args: ARGS, viewport });
    contexts.push(context);
    const page = context.pages()[0] ?? (await context.newPage());
    const errors: string[] = [];
    page.on('pageerror', (error) => errors.push(error.message));
    page.on('console', (message) => {
      if (message.type() === 'error') errors.push(message.text());
    });
    return { page, errors };
  }

  async function login(page: Page, token = TOKEN): Promise<void> {
    await page.goto(`${proxy.base}/ui`);
    await page.fill('#token', token);
    await page.click('#login-form button[type=submit]');
  }

  async function addWatch(body: Record<string, string>): Promise<{ id: string }> {
    const res = await fetch(`${t.base}/v1/watches`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    expect(res.status).toBe(201);
    return (await res.json()) as { id: string };
  }

  const row = (page: Page, id: string, status?: string) => page.locator(`#rows tr[data-watch-id="${id}"]${status ? `[data-status="${status}"]` : ''}`);

  it('a wrong token gets a clear message, and the token is never in a URL', async () => {
    const { page } = await newPage();
    const urls: string[] = [];
    page.on('request', (request) => urls.push(request.url()));
    await login(page, 'not-the-token');
    await expect.poll(() => page.locator('#login-error').textContent()).toContain('refused this token (401 unauthorized)');
    expect(await page.locator('#app').isHidden()).toBe(true);
    expect(await page.evaluate(() => sessionStorage.getItem('runwatch.token'))).toBeNull();
    expect(urls.filter((url) => url.includes('not-the-token'))).toEqual([]);
  });

  it('shows the watches created through the API, needing attention first, and changes within a second without reload', async () => {
    t.sim.addRun({ threadId: 'thread_ui', runId: 'run_busy', timeline: [{ status: 'queued', durationMs: 100 }, { status: 'in_progress' }] });
    t.sim.addRun({ threadId: 'thread_ui', runId: 'run_waiting', timeline: [{ status: 'requires_action' }] });
    t.sim.addRun({ threadId: 'thread_ui', runId: 'run_slow', timeline: [{ status: 'in_progress' }] });
    const busy = await addWatch({ thread_id: 'thread_ui', run_id: 'run_busy' });
    const waiting = await addWatch({ thread_id: 'thread_ui', run_id: 'run_waiting' });
    await addWatch({ thread_id: 'thread_ui', run_id: 'run_slow' });
    const { page, errors } = await newPage();
    await login(page);
    await row(page, busy.id, 'in_progress').waitFor();
    await row(page, waiting.id, 'requires_action').waitFor();
    // the page holds the token in sessionStorage, and the rows come needing attention first
    expect(await page.evaluate(() => sessionStorage.getItem('runwatch.token'))).toBe(TOKEN);
    await expect.poll(() => page.locator('#rows tr').first().getAttribute('data-watch-id')).toBe(waiting.id);
    await expect.poll(() => page.locator('#conn').textContent()).toBe('live');
    expect(await page.locator('#fleet-status').textContent()).toContain('active');
    await page.screenshot({ path: path.join(ARTIFACTS, 'ui-table.png') });

    // a status change reaches the row through the stream; the clock starts when the run changes
    const changedAt = Date.now();
    t.sim.addRun({ threadId: 'thread_ui', runId: 'run_busy', timeline: [{ status: 'completed' }] });
    await row(page, busy.id, 'completed').waitFor({ timeout: 5_000 });
    const elapsedMs = Date.now() - changedAt;
    expect(elapsedMs).toBeLessThan(1_000);
    expect(errors).toEqual([]);
  });

  it('resumes a cut stream with Last-Event-ID and shows what changed meanwhile', async () => {
    t.sim.addRun({ threadId: 'thread_ui', runId: 'run_cut', timeline: [{ status: 'in_progress' }] });
    const watch = await addWatch({ thread_id: 'thread_ui', run_id: 'run_cut' });
    const { page } = await newPage();
    await login(page);
    await row(page, watch.id, 'in_progress').waitFor();
    await expect.poll(() => page.locator('#conn').textContent()).toBe('live');
    const seenBeforeCut = Number(await page.locator('body').getAttribute('data-last-event-id'));
    const requestsBefore = proxy.eventRequests.filter((r) => r.url === '/v1/events').length;

    proxy.cut();
    await expect.poll(() => page.locator('#conn').textContent()).toBe('reconnecting…');
    // the change happens while the page has no stream: only the replay can bring it
    t.sim.addRun({ threadId: 'thread_ui', runId: 'run_cut', timeline: [{ status: 'failed' }] });
    await expect.poll(async () => ((await (await fetch(`${t.base}/v1/watches/${watch.id}`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as { status: string }).status).toBe('failed');
    expect(await row(page, watch.id).getAttribute('data-status')).toBe('in_progress');
    proxy.release();

    await row(page, watch.id, 'failed').waitFor({ timeout: 5_000 });
    const resumed = proxy.eventRequests.filter((r) => r.url === '/v1/events').slice(requestsBefore);
    expect(resumed.length).toBeGreaterThanOrEqual(1);
    // it asked for what came after the last event it had, with the token in a header, not the URL
    expect(Number(resumed[0]!.headers['last-event-id'])).toBe(seenBeforeCut);
    expect(resumed[0]!.headers.authorization).toBe(`Bearer ${TOKEN}`);
    expect(Number(await page.locator('body').getAttribute('data-last-event-id'))).toBeGreaterThan(seenBeforeCut);
    await expect.poll(() => page.locator('#conn').textContent()).toBe('live');
  });

  it('opens a watch: timeline, events with their JSON, and a cancel that asks first', async () => {
    t.sim.addRun({ threadId: 'thread_ui', runId: 'run_cancel', timeline: [{ status: 'queued', durationMs: 300 }, { status: 'in_progress' }] });
    const watch = await addWatch({ thread_id: 'thread_ui', run_id: 'run_cancel' });
    const { page, errors } = await newPage();
    await login(page);
    await row(page, watch.id, 'in_progress').waitFor();
    await row(page, watch.id).click();
    await page.locator('#d-timeline .seg[data-status="in_progress"]').waitFor();
    expect(await Promise.all((await page.locator('#d-timeline .seg').all()).map((seg) => seg.getAttribute('data-status')))).toEqual(['queued', 'in_progress']);
    expect(await page.locator('#d-events li').count()).toBe(2);
    await page.locator('#d-events li summary').first().click();
    expect(JSON.parse((await page.locator('#d-events li pre').first().textContent())!)).toMatchObject({ type: 'run.queued', watch_id: watch.id, run_id: 'run_cancel' });

    // dismissed: nothing is sent
    page.once('dialog', (dialog) => void dialog.dismiss());
    await page.click('#d-cancel');
    expect(t.sim.requests('run_cancel').filter((r) => r.method === 'POST')).toEqual([]);

    let asked = '';
    page.once('dialog', (dialog) => {
      asked = dialog.message();
      void dialog.accept();
    });
    await page.click('#d-cancel');
    await page.locator('#d-status [data-status="cancelled"]').waitFor({ timeout: 5_000 });
    expect(asked).toContain('Cancel run run_cancel?');
    expect(t.sim.requests('run_cancel').filter((r) => r.method === 'POST' && r.path.endsWith('/cancel'))).toHaveLength(1);
    await page.locator('#d-actions li', { hasText: 'run.cancel_requested' }).waitFor();
    // the JSON opened before the cancel's events arrived stays open through the re-renders
    expect(await page.locator('#d-events li[data-seq="1"] details').getAttribute('open')).not.toBeNull();
    await page.screenshot({ path: path.join(ARTIFACTS, 'ui-detail.png'), fullPage: true });
    expect(errors).toEqual([]);
  });

  it('shows the replicas panel only when the fleet endpoint names replicas', async () => {
    const { page } = await newPage();
    await login(page);
    await expect.poll(() => page.locator('#conn').textContent()).toBe('live');
    expect(await page.locator('#fleet-replicas-card').isHidden()).toBe(true);
    // what a Redis fleet answers (Engine.watchesByReplica): the page shows it as it comes
    await page.route('**/v1/fleet', async (route) => {
      try {
        const answer = await route.fetch();
        const fleet = (await answer.json()) as Record<string, unknown>;
        await route.fulfill({ response: answer, json: { ...fleet, replicas: { 'replica-a<b>': 7, 'replica-b': 3 } } });
      } catch {
        // a request of the page before the reload, disposed with it ("Response has been disposed"): nobody waits for it
      }
    });
    await page.reload();
    await page.locator('#fleet-replicas-card:not([hidden])').waitFor();
    expect(await page.locator('#fleet-replicas').textContent()).toBe('replica-a<b> 7replica-b 3');
  });

  it('renders an error message carrying <script> as text', async () => {
    const message = '<script>document.title="pwned"</script><img src=x onerror="document.title=\'pwned\'">';
    t.sim.addRun({ threadId: 'thread_ui', runId: 'run_xss', timeline: [{ status: 'in_progress' }], faults: [{ from: 1, type: 'status', status: 404, body: JSON.stringify({ error: { message, code: 'not_found' } }) }] });
    const watch = await addWatch({ thread_id: 'thread_ui', run_id: 'run_xss' });
    const { page } = await newPage();
    await login(page);
    const cell = row(page, watch.id).locator('td.err');
    await expect.poll(() => cell.textContent(), { timeout: 5_000 }).toContain('<script>document.title="pwned"</script>');
    expect(await page.locator('#rows script, #rows img').count()).toBe(0);
    await row(page, watch.id).click();
    await page.locator('#d-events li', { hasText: 'watch.error' }).waitFor();
    expect(await page.locator('#d-events li', { hasText: 'watch.error' }).textContent()).toContain('<img src=x onerror=');
    expect(await page.locator('#detail script, #detail img').count()).toBe(0);
    expect(await page.title()).toBe('runwatch');
  });
});

const redisAvailable = hasChromium && (await requireRedis());

describe.skipIf(!hasChromium || !redisAvailable)('the web view /ui on the Redis store', () => {
  const t = useDaemon('redis', { skip: !hasChromium || !redisAvailable, key: KEY, secrets: { controlToken: TOKEN } });
  let context: BrowserContext | undefined;
  afterAll(async () => {
    await context?.close();
  });

  it('logs in, shows a watch created through the API and its change over the stream', async () => {
    t.sim.addRun({ threadId: 'thread_ui_redis', runId: 'run_redis', timeline: [{ status: 'in_progress' }] });
    const res = await fetch(`${t.base}/v1/watches`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: 'thread_ui_redis', run_id: 'run_redis' }) });
    const { id } = (await res.json()) as { id: string };
    context = await chromium.launchPersistentContext(mkdtempSync(path.join(tmpdir(), 'runwatch-chromium-')), { executablePath: CHROMIUM, headless: true, args: ARGS });
    const page = context.pages()[0] ?? (await context.newPage());
    await page.goto(`${t.base}/ui/`);
    await page.fill('#token', TOKEN);
    await page.click('#login-form button[type=submit]');
    await page.locator(`#rows tr[data-watch-id="${id}"][data-status="in_progress"]`).waitFor();
    await expect.poll(() => page.locator('#conn').textContent()).toBe('live');
    t.sim.addRun({ threadId: 'thread_ui_redis', runId: 'run_redis', timeline: [{ status: 'completed' }] });
    await page.locator(`#rows tr[data-watch-id="${id}"][data-status="completed"]`).waitFor({ timeout: 5_000 });
  });
});
