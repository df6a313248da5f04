import { describe, expect, it } from 'vitest';
import type { WatchEvent } from '../src/events.js';
import type { MetricsSources } from '../src/daemon/metrics.js';
import { DaemonMetrics, statusChangedAtMs } from '../src/daemon/metrics.js';

const T0 = Date.UTC(2026, 0, 1);

function sources(ready: MetricsSources['ready'] = () => true): MetricsSources {
  return {
    activeByStatus: () => Promise.resolve(new Map()),
    outbox: () => Promise.resolve([]),
    budget: () => ({ ratePerSecond: 10, inFlight: 0, queued: 0 }),
    openStreams: () => 0,
    ready,
  };
}

/** The value of one series in the scrape, `undefined` when it is absent. */
async function value(metrics: DaemonMetrics, series: string): Promise<number | undefined> {
  const text = await metrics.registry.metrics();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

function runEvent(fields: { from: string | null; to: string; type?: string; run?: Record<string, unknown> }): WatchEvent {
  return {
    id: 'w_1.2',
    seq: 2,
    watch_id: 'w_1',
    type: fields.type ?? `run.${fields.to}`,
    thread_id: 'thread_1',
    run_id: 'run_1',
    from: fields.from,
    to: fields.to,
    observed_at: new Date(T0).toISOString(),
    run: { id: 'run_1', status: fields.to, ...fields.run },
  } as unknown as WatchEvent;
}

describe('DaemonMetrics: the metrics the dashboard and the alerts read', () => {
  it('counts polls answered 429 apart, and only those', async () => {
    const metrics = new DaemonMetrics(sources());
    metrics.poll({ outcome: 'transient', httpStatus: 429, latencyMs: 5, latenessMs: 0 });
    metrics.poll({ outcome: 'transient', httpStatus: 503, latencyMs: 5, latenessMs: 0 });
    metrics.poll({ outcome: 'transient', latencyMs: 5, latenessMs: 0 });
    metrics.poll({ outcome: 'ok', httpStatus: 200, latencyMs: 5, latenessMs: 0 });
    expect(await value(metrics, 'runwatch_polls_rate_limited_total')).toBe(1);
    expect(await value(metrics, 'runwatch_polls_total{outcome="transient"}')).toBe(3);
  });

  it('keeps the time of the last successful poll, starting at the start time', async () => {
    let now = T0;
    const metrics = new DaemonMetrics(sources(), () => now);
    expect(await value(metrics, 'runwatch_last_successful_poll_timestamp_seconds')).toBe(T0 / 1000);
    now = T0 + 5_000;
    metrics.poll({ outcome: 'ok', latencyMs: 5, latenessMs: 0 });
    now = T0 + 9_000;
    metrics.poll({ outcome: 'transient', httpStatus: 500, latencyMs: 5, latenessMs: 0 });
    metrics.poll({ outcome: 'run_not_found', httpStatus: 404, latencyMs: 5, latenessMs: 0 });
    expect(await value(metrics, 'runwatch_last_successful_poll_timestamp_seconds')).toBe((T0 + 5_000) / 1000);
  });

  it('observes detection latency from the run timestamp of the status it reached', async () => {
    const now = T0 + 60_000;
    const metrics = new DaemonMetrics(sources(), () => now);
    // completed 3 s before we recorded it; started 40 s before
    metrics.transition(runEvent({ from: 'in_progress', to: 'completed', run: { completed_at: (now - 3_000) / 1000 } }));
    metrics.transition(runEvent({ from: 'queued', to: 'in_progress', run: { started_at: (now - 40_000) / 1000 } }));
    expect(await value(metrics, 'runwatch_detection_latency_seconds_count')).toBe(2);
    expect(await value(metrics, 'runwatch_detection_latency_seconds_sum')).toBe(43);
    expect(await value(metrics, 'runwatch_detection_latency_seconds_bucket{le="5"}')).toBe(1);
    expect(await value(metrics, 'runwatch_detection_latency_seconds_bucket{le="60"}')).toBe(2);
    expect(await value(metrics, 'runwatch_transitions_total{status="completed"}')).toBe(1);
  });

  it('a provider clock ahead of ours counts as no delay, not a negative one', async () => {
    const metrics = new DaemonMetrics(sources(), () => T0);
    metrics.transition(runEvent({ from: 'in_progress', to: 'failed', run: { failed_at: (T0 + 2_000) / 1000 } }));
    expect(await value(metrics, 'runwatch_detection_latency_seconds_sum')).toBe(0);
    expect(await value(metrics, 'runwatch_detection_latency_seconds_count')).toBe(1);
  });

  it.each([
    ['a first observation (the change may predate the watch)', runEvent({ from: null, to: 'completed', run: { completed_at: T0 / 1000 } })],
    ['a stall', runEvent({ from: 'in_progress', to: 'in_progress', type: 'run.stalled', run: { started_at: T0 / 1000 } })],
    ['an action', runEvent({ from: 'in_progress', to: 'in_progress', type: 'run.cancel_requested', run: { started_at: T0 / 1000 } })],
    ['a status the run has no time for', runEvent({ from: 'in_progress', to: 'requires_action', run: { started_at: T0 / 1000 } })],
    ['a run without the timestamp', runEvent({ from: 'in_progress', to: 'completed', run: { completed_at: null } })],
    [
      'a background response (it carries no time of its status change)',
      { id: 'w_2.2', seq: 2, watch_id: 'w_2', type: 'response.completed', response_id: 'resp_1', from: 'in_progress', to: 'completed', observed_at: '', response: { id: 'resp_1', status: 'completed', created_at: T0 / 1000 } } as unknown as WatchEvent,
    ],
  ])('observes no detection latency for %s', async (_what, event) => {
    expect(statusChangedAtMs(event)).toBeUndefined();
    const metrics = new DaemonMetrics(sources(), () => T0 + 1_000);
    metrics.transition(event);
    expect(await value(metrics, 'runwatch_detection_latency_seconds_count')).toBe(0);
  });

  it('has both takeover series at 0 from the start, and counts each kind', async () => {
    const metrics = new DaemonMetrics(sources());
    expect(await value(metrics, 'runwatch_takeovers_total{kind="step"}')).toBe(0);
    expect(await value(metrics, 'runwatch_takeovers_total{kind="partition"}')).toBe(0);
    metrics.takeover('step');
    metrics.takeover('step');
    metrics.takeover('partition');
    expect(await value(metrics, 'runwatch_takeovers_total{kind="step"}')).toBe(2);
    expect(await value(metrics, 'runwatch_takeovers_total{kind="partition"}')).toBe(1);
  });

  it('reports backlog and dead letters of the scrape itself, from one read of the store', async () => {
    let reads = 0;
    const metrics = new DaemonMetrics({
      ...sources(),
      outbox: () => {
        reads += 1;
        return Promise.resolve([{ sink: 'webhook', pending: 4 + reads, dead: 2 }]);
      },
    });
    expect(await value(metrics, 'runwatch_outbox_backlog{sink="webhook"}')).toBe(5);
    expect(reads).toBe(1);
    const text = await metrics.registry.metrics();
    expect(text).toContain('runwatch_outbox_backlog{sink="webhook"} 6');
    expect(text).toContain('runwatch_dead_letters{sink="webhook"} 2');
    expect(reads).toBe(2);
  });

  it('says what /readyz says at scrape time, 0 when the check throws', async () => {
    let ready: boolean | Error = true;
    const metrics = new DaemonMetrics(sources(() => (ready instanceof Error ? Promise.reject(ready) : ready)));
    expect(await value(metrics, 'runwatch_ready')).toBe(1);
    ready = false;
    expect(await value(metrics, 'runwatch_ready')).toBe(0);
    ready = new Error('store gone');
    expect(await value(metrics, 'runwatch_ready')).toBe(0);
  });
});
