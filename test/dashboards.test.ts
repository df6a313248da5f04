// The Grafana dashboard and the Prometheus alerting rules in deploy/, checked against the
// daemon: every metric they read must be in /metrics after a scenario that exercises them,
// every alert must carry what an on-call person needs, and every runbook link must land.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Receiver } from './receiver.js';
import { startReceiver } from './receiver.js';
import { requireRedis } from './redis.js';
import { readSseEvents } from './sse.js';
import { storeKinds, useDaemon } from './daemons.js';
import { parseYamlDocuments } from './yaml.js';

const root = path.join(import.meta.dirname, '..');
const DASHBOARD = path.join(root, 'deploy/grafana/runwatch-dashboard.json');
const RULES = path.join(root, 'deploy/prometheus/runwatch-alerts.yaml');
const RULE_TESTS = path.join(root, 'deploy/prometheus/runwatch-alerts.test.yaml');
const KEY = 'sk-dashboards-0001';
const HOOK_SECRET = `whsec_${Buffer.from('dashboards-hook-secret-32-bytes!').toString('base64')}`;
const redisAvailable = await requireRedis();
const promtool = spawnSync('promtool', ['--version']).status === 0;
if (!promtool) process.stderr.write('note: promtool checks skipped, promtool is not installed (apt-get install prometheus)\n');

interface Panel {
  readonly type: string;
  readonly title: string;
  readonly datasource?: { readonly type: string; readonly uid: string };
  readonly targets?: ReadonlyArray<{ readonly expr: string; readonly legendFormat?: string; readonly datasource?: { readonly uid: string } }>;
  readonly fieldConfig?: { readonly defaults?: { readonly unit?: string } };
  readonly panels?: readonly Panel[];
}

interface Dashboard {
  readonly __inputs: ReadonlyArray<{ readonly name: string; readonly type: string; readonly pluginId: string }>;
  readonly panels: readonly Panel[];
  readonly templating: { readonly list: ReadonlyArray<{ readonly name: string; readonly query: { readonly query: string } | string; readonly datasource?: { readonly uid: string } }> };
  readonly uid: string;
  readonly title: string;
}

interface Rule {
  readonly alert?: string;
  readonly expr?: unknown;
  readonly for?: unknown;
  readonly labels?: { readonly severity?: unknown };
  readonly annotations?: { readonly summary?: unknown; readonly runbook_url?: unknown };
}

const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Dashboard;
const rules = (parseYamlDocuments(readFileSync(RULES, 'utf8'))[0] as { groups: Array<{ name: string; rules: Rule[] }> }).groups.flatMap((g) => g.rules);
const readme = readFileSync(path.join(root, 'README.md'), 'utf8');

/** Every panel, rows' nested ones included. */
function allPanels(panels: readonly Panel[]): Panel[] {
  return panels.flatMap((p) => [p, ...allPanels(p.panels ?? [])]);
}

const panels = allPanels(dashboard.panels).filter((p) => p.type !== 'row');
const variableQuery = (v: Dashboard['templating']['list'][number]): string => (typeof v.query === 'string' ? v.query : v.query.query);
const dashboardExprs = [...panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr)), ...dashboard.templating.list.map(variableQuery)];
const ruleExprs = rules.map((r) => String(r.expr));

/** The metric families an expression reads: `runwatch_*` names, a histogram's `_bucket`, `_sum`, `_count` series as their family. */
export function metricNames(expr: string): string[] {
  return [...new Set([...expr.matchAll(/(?<![A-Za-z0-9_:])runwatch_[A-Za-z0-9_]+/g)].map((m) => m[0].replace(/_(bucket|sum|count)$/, '')))];
}

/** Metric families in a scrape: name → type. */
function families(text: string): Map<string, string> {
  return new Map([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1]!, m[2]!]));
}

/** The sample lines of a family (a histogram's are its `_bucket`, `_sum` and `_count`). */
function samples(text: string, name: string, type: string): string[] {
  const series = type === 'histogram' ? [`${name}_bucket`, `${name}_sum`, `${name}_count`] : [name];
  return text.split('\n').filter((line) => series.some((s) => line.startsWith(`${s}{`) || line.startsWith(`${s} `)));
}

/** The value of the one sample line that starts with `series` (name and labels), `undefined` when none does. */
function value(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('metricNames', () => {
  it('finds runwatch_ names, folds histogram series into their family, ignores label values and other metrics', () => {
    expect(metricNames('histogram_quantile(0.5, sum by (le) (rate(runwatch_poll_latency_seconds_bucket{job=~"$job"}[5m]))) + runwatch_polls_total - up{job=~".*runwatch.*"}')).toEqual([
      'runwatch_poll_latency_seconds',
      'runwatch_polls_total',
    ]);
    expect(metricNames('sum(rate(runwatch_detection_latency_seconds_sum[5m])) / sum(rate(runwatch_detection_latency_seconds_count[5m]))')).toEqual(['runwatch_detection_latency_seconds']);
  });
});

describe('deploy/grafana/runwatch-dashboard.json', () => {
  it('imports cleanly: a Prometheus datasource input that every panel, query and variable uses', () => {
    expect(dashboard.__inputs).toEqual([expect.objectContaining({ name: 'DS_PROMETHEUS', type: 'datasource', pluginId: 'prometheus' })]);
    expect(dashboard.uid).toMatch(/^[A-Za-z0-9_-]{1,40}$/);
    for (const panel of panels) {
      expect(panel.datasource?.uid, panel.title).toBe('${DS_PROMETHEUS}');
      for (const target of panel.targets ?? []) expect(target.datasource?.uid, panel.title).toBe('${DS_PROMETHEUS}');
    }
    for (const variable of dashboard.templating.list) expect(variable.datasource?.uid, variable.name).toBe('${DS_PROMETHEUS}');
  });

  it('has job and instance variables, and every query filters on both', () => {
    expect(dashboard.templating.list.map((v) => v.name)).toEqual(['job', 'instance']);
    for (const panel of panels) {
      for (const target of panel.targets ?? []) {
        for (const selector of target.expr.match(/runwatch_[A-Za-z0-9_]+(\{[^}]*\})?/g) ?? []) expect(selector, panel.title).toContain('job=~"$job",instance=~"$instance"');
      }
    }
  });

  it('gives every panel a unit, a description and a legend for each query', () => {
    expect(panels.length).toBeGreaterThanOrEqual(15);
    for (const panel of panels) {
      expect(panel.fieldConfig?.defaults?.unit, panel.title).toBeTruthy();
      expect((panel as { description?: string }).description, panel.title).toBeTruthy();
      expect(panel.targets?.length, panel.title).toBeGreaterThan(0);
      for (const target of panel.targets ?? []) expect(target.legendFormat, panel.title).toBeTruthy();
    }
    const titles = panels.map((p) => p.title);
    expect(new Set(titles).size).toBe(titles.length);
  });

  it('covers what issue 16 asks for: watches by status, transitions, polls and 429s, detection latency, backlog, dead letters, takeovers', () => {
    const used = new Set(dashboardExprs.flatMap(metricNames));
    for (const name of [
      'runwatch_active_watches',
      'runwatch_transitions_total',
      'runwatch_polls_total',
      'runwatch_polls_rate_limited_total',
      'runwatch_detection_latency_seconds',
      'runwatch_outbox_backlog',
      'runwatch_dead_letters',
      'runwatch_takeovers_total',
    ]) {
      expect(used, name).toContain(name);
    }
  });
});

describe('deploy/prometheus/runwatch-alerts.yaml', () => {
  it('has the five alerts of issue 16', () => {
    expect(rules.map((r) => r.alert)).toEqual(['RunwatchNotReady', 'RunwatchNoSuccessfulPoll', 'RunwatchRateLimited', 'RunwatchOutboxBacklogGrowing', 'RunwatchDeadLetters']);
  });

  it.each(rules.map((r) => [r.alert ?? '(no name)', r] as const))('%s: expr, for, severity, summary and a runbook line in the README', (_name, rule) => {
    expect(typeof rule.expr).toBe('string');
    expect(metricNames(String(rule.expr)).length).toBeGreaterThan(0);
    expect(String(rule.for)).toMatch(/^\d+[smh]$/);
    expect(['critical', 'warning']).toContain(rule.labels?.severity);
    expect(typeof rule.annotations?.summary).toBe('string');
    const url = String(rule.annotations?.runbook_url);
    const anchor = /^README\.md#([a-z0-9-]+)$/.exec(url)?.[1];
    expect(anchor, url).toBeDefined();
    // the anchor sits on the alert's row of the runbook table, which names the alert
    const row = readme.split('\n').find((line) => line.includes(`<a id="${anchor}"></a>`));
    expect(row, `README row with <a id="${anchor}">`).toBeDefined();
    expect(row).toMatch(new RegExp(`^\\| <a id="${anchor}"></a>\`${rule.alert}\` \\|`));
    expect(readme.split(`<a id="${anchor}"></a>`).length).toBe(2);
  });

  it.skipIf(!promtool)('passes promtool check rules and its unit tests (each alert fires on its case, not on a near miss)', () => {
    execFileSync('promtool', ['check', 'rules', RULES], { stdio: 'pipe' });
    execFileSync('promtool', ['test', 'rules', RULE_TESTS], { stdio: 'pipe' });
  });

  it.skipIf(!promtool)("the dashboard's queries are valid PromQL (promtool, Grafana's variables filled in)", () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'runwatch-dashboards-'));
    const file = path.join(dir, 'queries.yaml');
    const lines = ['groups:', '  - name: dashboard', '    rules:'];
    dashboardExprs.forEach((expr, i) => {
      const filled = expr.replaceAll('$__rate_interval', '1m').replaceAll('$job', '.*').replaceAll('$instance', '.*');
      // label_values() is Grafana's, not PromQL: check the metric selector inside it
      const promql = filled.replace(/^label_values\((.*), *[a-z_]+\)$/, '$1');
      lines.push(`      - record: dashboard:query_${i}`, `        expr: ${JSON.stringify(promql)}`);
    });
    writeFileSync(file, `${lines.join('\n')}\n`);
    execFileSync('promtool', ['check', 'rules', file], { stdio: 'pipe' });
  });
});

describe.each(storeKinds(redisAvailable, ['sqlite', 'redis']))('every metric the dashboard and the alerts read is in /metrics ($kind store)', ({ kind, skip }) => {
  // a webhook receiver that is down: it refuses every event for good (400: dead letters), then for now (503: backlog)
  let sink: Receiver;
  beforeAll(async () => {
    if (skip) return;
    sink = await startReceiver(HOOK_SECRET);
    sink.answer = 400;
  });
  afterAll(async () => {
    if (!skip) await sink.close();
  });
  const t = useDaemon(kind, {
    skip,
    key: KEY,
    secrets: { openaiWebhookSecrets: [HOOK_SECRET] },
    settings: () => [
      ['sinks.webhook.url', JSON.stringify(sink.url)],
      // a refused event waits a minute before its next try: the backlog stays while the test scrapes
      ['sinks.delivery.backoffBaseMs', '60000'],
      ['sinks.delivery.backoffCapMs', '60000'],
    ],
  });

  it.skipIf(skip)('after runs that complete, one that fails, a 429, a sink that is down and a forged webhook', async () => {
    const tag = `${kind}_${Date.now()}`;
    const runs = {
      done: `run_done_${tag}`,
      failed: `run_failed_${tag}`,
      limited: `run_limited_${tag}`,
    };
    t.sim.addRun({ threadId: 'thread_dash', runId: runs.done, start: 'first_request', timeline: [{ status: 'queued', durationMs: 300 }, { status: 'in_progress', durationMs: 400 }, { status: 'completed' }] });
    t.sim.addRun({ threadId: 'thread_dash', runId: runs.failed, start: 'first_request', timeline: [{ status: 'queued', durationMs: 200 }, { status: 'in_progress', durationMs: 300 }, { status: 'failed' }] });
    // its 2nd poll is answered 429; it completes after
    t.sim.addRun({
      threadId: 'thread_dash',
      runId: runs.limited,
      start: 'first_request',
      timeline: [{ status: 'in_progress', durationMs: 800 }, { status: 'completed' }],
      faults: [{ type: 'status', status: 429, headers: { 'retry-after-ms': '100' }, from: 2 }],
    });
    // still running when the test scrapes: the gauges of active watches have a series
    t.sim.addRun({ threadId: 'thread_dash', runId: `run_busy_${tag}`, timeline: [{ status: 'in_progress' }] });
    for (const run of [...Object.values(runs), `run_busy_${tag}`]) {
      const res = await fetch(`${t.base}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: 'thread_dash', run_id: run }) });
      expect(res.status).toBe(201);
    }
    const forged = await fetch(`${t.base}/v1/hooks/openai`, { method: 'POST', headers: { 'content-type': 'application/json', 'webhook-id': 'msg_1', 'webhook-timestamp': '1', 'webhook-signature': 'v1,AAAA' }, body: '{}' });
    expect(forged.status).toBeGreaterThanOrEqual(400);
    const ended = [`${runs.done} run.completed`, `${runs.failed} run.failed`, `${runs.limited} run.completed`];
    await readSseEvents(`${t.base}/v1/events?thread_id=thread_dash`, (events) => ended.every((end) => events.some((e) => 'run_id' in e && `${e.run_id} ${e.type}` === end)));
    // delivered in order: the attempt at a run's last event comes after its earlier ones were dead-lettered
    const tried = (end: string): boolean => sink.tried.some((e) => `${e.run_id} ${e.type}` === end);
    await sink.until(() => ended.every(tried));
    // then the sink refuses for now: a new watch's events wait in the outbox
    sink.answer = 503;
    const late = `run_late_${tag}`;
    t.sim.addRun({ threadId: 'thread_dash', runId: late, timeline: [{ status: 'in_progress' }] });
    expect((await fetch(`${t.base}/v1/watches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ thread_id: 'thread_dash', run_id: late }) })).status).toBe(201);
    await sink.until(() => tried(`${late} run.in_progress`));

    const scrape = await fetch(`${t.base}/metrics`);
    expect(scrape.status).toBe(200);
    const text = await scrape.text();
    const known = families(text);
    const used = [...new Set([...dashboardExprs, ...ruleExprs].flatMap(metricNames))].sort();
    expect(used.length).toBeGreaterThanOrEqual(15);
    const missing = used.filter((name) => !known.has(name) || samples(text, name, known.get(name)!).length === 0);
    expect(missing, `read by deploy/ but absent from /metrics (or without a sample): ${missing.join(', ')}`).toEqual([]);

    // the scenario did what it claims, so the samples above are not only zeros
    expect(value(text, 'runwatch_polls_rate_limited_total')).toBeGreaterThanOrEqual(1);
    expect(value(text, 'runwatch_detection_latency_seconds_count')).toBeGreaterThanOrEqual(3);
    expect(value(text, 'runwatch_outbox_backlog{sink="webhook"}')).toBeGreaterThan(0);
    expect(value(text, 'runwatch_dead_letters{sink="webhook"}')).toBeGreaterThanOrEqual(3);
    expect(value(text, 'runwatch_ready')).toBe(1);
    expect(value(text, 'runwatch_active_watches{status="in_progress"}')).toBe(2);
    expect(value(text, 'runwatch_webhooks_total{outcome="rejected"}')).toBe(1);
    expect(value(text, 'runwatch_takeovers_total{kind="step"}')).toBe(0);
    expect(value(text, 'runwatch_last_successful_poll_timestamp_seconds')).toBeGreaterThan(Date.now() / 1000 - 60);
  });
});
