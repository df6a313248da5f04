import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { DeliveryOutcome } from './outbox.js';

/** What the metrics read at scrape time (a store may answer later: gauges wait for it). */
export interface MetricsSources {
  /** Active watches per last status (`none` before the first poll). */
  activeByStatus(): Promise<ReadonlyMap<string, number>>;
  /** Pending and dead-lettered deliveries per sink. */
  outbox(): Promise<ReadonlyArray<{ readonly sink: string; readonly pending: number; readonly dead: number }>>;
  /** The request budget now. */
  budget(): { readonly ratePerSecond: number; readonly inFlight: number; readonly queued: number };
  /** Response streams open in this process. */
  openStreams(): number;
}

/** The `status` label of an event in `runwatch_transitions_total`: the new status, `stalled`, an action, or `watch_error`. */
export function transitionLabel(type: string): string {
  return type === 'watch.error' ? 'watch_error' : type.slice(type.indexOf('.') + 1);
}

/** The daemon's Prometheus metrics, on a registry of its own (no global state). */
export class DaemonMetrics {
  readonly registry = new Registry();
  readonly polls: Counter<'outcome'>;
  readonly pollLatency: Histogram;
  readonly pollLateness: Histogram;
  readonly transitions: Counter<'status'>;
  readonly deliveries: Counter<'sink' | 'outcome'>;
  readonly webhooks: Counter<'outcome'>;

  constructor(sources: MetricsSources) {
    const registers = [this.registry];
    this.polls = new Counter({ name: 'runwatch_polls_total', help: 'Polls by outcome (ok, transient, or the permanent error code).', labelNames: ['outcome'], registers });
    this.pollLatency = new Histogram({
      name: 'runwatch_poll_latency_seconds',
      help: 'Time from sending a poll to its answer.',
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.pollLateness = new Histogram({
      name: 'runwatch_poll_lateness_seconds',
      help: 'How late a poll was sent after its planned time (budget waits, event-loop lag).',
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30],
      registers,
    });
    this.transitions = new Counter({ name: 'runwatch_transitions_total', help: 'Events recorded, by new status (or watch_error, stalled).', labelNames: ['status'], registers });
    this.deliveries = new Counter({ name: 'runwatch_sink_deliveries_total', help: 'Delivery attempts by sink and outcome (delivered, retry, dead).', labelNames: ['sink', 'outcome'], registers });
    new Gauge({
      name: 'runwatch_active_watches',
      help: 'Watches being polled, by last status.',
      labelNames: ['status'],
      registers,
      async collect() {
        // a store that does not answer keeps the last figures: the scrape still reports polls and 429s
        const counts = await sources.activeByStatus().catch(() => undefined);
        if (!counts) return;
        this.reset();
        for (const [status, count] of counts) this.set({ status }, count);
      },
    });
    const outbox = new Gauge({ name: 'runwatch_outbox_backlog', help: 'Deliveries not yet made, by sink.', labelNames: ['sink'], registers });
    new Gauge({
      name: 'runwatch_dead_letters',
      help: 'Deliveries given up on, by sink.',
      labelNames: ['sink'],
      registers,
      async collect() {
        const sinks = await sources.outbox().catch(() => undefined);
        if (!sinks) return;
        this.reset();
        outbox.reset();
        for (const stats of sinks) {
          this.set({ sink: stats.sink }, stats.dead);
          outbox.set({ sink: stats.sink }, stats.pending);
        }
      },
    });
    new Gauge({
      name: 'runwatch_budget_requests_per_second',
      help: 'Request rate the budget allows now (lower after 429s).',
      registers,
      collect() {
        this.set(sources.budget().ratePerSecond);
      },
    });
    new Gauge({
      name: 'runwatch_budget_in_flight',
      help: 'Poll requests in flight.',
      registers,
      collect() {
        this.set(sources.budget().inFlight);
      },
    });
    this.webhooks = new Counter({
      name: 'runwatch_webhooks_total',
      help: 'Inbound webhooks by stage: each counts in received, then verified or rejected, then duplicate, ignored, matched or unknown.',
      labelNames: ['outcome'],
      registers,
    });
    new Gauge({
      name: 'runwatch_open_streams',
      help: 'Response streams this process holds open (push mode stream).',
      registers,
      collect() {
        this.set(sources.openStreams());
      },
    });
    new Gauge({
      name: 'runwatch_budget_queued',
      help: 'Polls that are due and wait for the budget.',
      registers,
      collect() {
        this.set(sources.budget().queued);
      },
    });
  }

  /** Counts an event recorded. */
  transition(type: string): void {
    this.transitions.inc({ status: transitionLabel(type) });
  }

  /** Counts one poll. */
  poll(report: { readonly outcome: string; readonly latencyMs: number; readonly latenessMs: number }): void {
    this.polls.inc({ outcome: report.outcome });
    this.pollLatency.observe(report.latencyMs / 1000);
    this.pollLateness.observe(report.latenessMs / 1000);
  }

  /** Records one delivery attempt. */
  delivery(sink: string, outcome: DeliveryOutcome): void {
    this.deliveries.inc({ sink, outcome });
  }
}
