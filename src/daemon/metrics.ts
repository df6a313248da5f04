import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { WatchEvent } from '../events.js';
import { isRunEvent } from '../events.js';
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
  /** What `/readyz` answers: the store answers and the daemon is not shutting down. */
  ready(): boolean | Promise<boolean>;
}

/**
 * What `runwatch_takeovers_total` counts: `step`, a watch partition of a dead replica (its lease
 * lapsed; the label predates watch partitions, when a step job was taken over), or `partition`,
 * an outbox partition with its unacknowledged deliveries.
 */
export type TakeoverKind = 'step' | 'partition';

const TAKEOVER_KINDS: readonly TakeoverKind[] = ['step', 'partition'];

/** The run snapshot's field that says when it reached a status (whole seconds, the provider's clock). */
const RUN_STATUS_TIME_FIELDS: Readonly<Record<string, string>> = {
  in_progress: 'started_at',
  completed: 'completed_at',
  failed: 'failed_at',
  cancelled: 'cancelled_at',
};

/**
 * When the upstream says a run reached the status of this event (epoch ms), or `undefined`
 * when it does not say: other statuses, other kinds (a response carries no such time),
 * actions, stalls, and a watch's first observation (the change may predate the watch).
 */
export function statusChangedAtMs(event: WatchEvent): number | undefined {
  if (!isRunEvent(event) || !event.run || event.to === null || event.from === null || event.from === event.to || event.type !== `run.${event.to}`) return undefined;
  const field = RUN_STATUS_TIME_FIELDS[event.to];
  const seconds = field === undefined ? undefined : (event.run as unknown as Record<string, unknown>)[field];
  return typeof seconds === 'number' && Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : undefined;
}

/** The `status` label of an event in `runwatch_transitions_total`: the new status, `stalled`, an action, or `watch_error`. */
export function transitionLabel(type: string): string {
  return type === 'watch.error' ? 'watch_error' : type.slice(type.indexOf('.') + 1);
}

/**
 * Polls of the last minute in one-second buckets (a ring): the rate and the 429 share the web
 * view shows, without a Prometheus to ask. Constant memory and constant work per poll.
 */
export class PollWindow {
  static readonly SECONDS = 60;
  readonly #polls = new Array<number>(PollWindow.SECONDS).fill(0);
  readonly #throttled = new Array<number>(PollWindow.SECONDS).fill(0);
  /** The second each bucket counts (epoch seconds), to clear a bucket left from a minute ago. */
  readonly #second = new Array<number>(PollWindow.SECONDS).fill(-1);

  /** Counts one poll at `nowMs`; `throttled` when it was answered 429. */
  record(nowMs: number, throttled: boolean): void {
    const i = this.#bucket(Math.floor(nowMs / 1000));
    this.#polls[i]! += 1;
    if (throttled) this.#throttled[i]! += 1;
  }

  /** Polls per second over the last `seconds` whole seconds before now (the current one is still filling). */
  rate(nowMs: number, seconds = 10): number {
    return this.#sum(this.#polls, nowMs, seconds) / seconds;
  }

  /** Share of the polls of the last `seconds` seconds answered 429 (0 without polls). */
  throttledShare(nowMs: number, seconds = PollWindow.SECONDS - 1): number {
    const polls = this.#sum(this.#polls, nowMs, seconds);
    return polls === 0 ? 0 : this.#sum(this.#throttled, nowMs, seconds) / polls;
  }

  #bucket(second: number): number {
    const i = second % PollWindow.SECONDS;
    if (this.#second[i] !== second) {
      this.#second[i] = second;
      this.#polls[i] = 0;
      this.#throttled[i] = 0;
    }
    return i;
  }

  #sum(counts: readonly number[], nowMs: number, seconds: number): number {
    const now = Math.floor(nowMs / 1000);
    let total = 0;
    for (let second = now - seconds; second < now; second += 1) {
      const i = ((second % PollWindow.SECONDS) + PollWindow.SECONDS) % PollWindow.SECONDS;
      if (this.#second[i] === second) total += counts[i]!;
    }
    return total;
  }
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
  readonly rateLimited: Counter;
  readonly lastSuccessfulPoll: Gauge;
  readonly detectionLatency: Histogram;
  readonly takeovers: Counter<'kind'>;
  /** The last minute of polls, for `GET /v1/fleet`. */
  readonly recent = new PollWindow();

  readonly #nowMs: () => number;

  /** `nowMs`: the clock (tests pin it). @default Date.now */
  constructor(sources: MetricsSources, nowMs: () => number = Date.now) {
    this.#nowMs = nowMs;
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
    // one store read per scrape for both gauges: they collect side by side, so the second call joins the first
    let outboxRead: ReturnType<MetricsSources['outbox']> | undefined;
    const outboxStats = (): ReturnType<MetricsSources['outbox']> =>
      (outboxRead ??= sources.outbox().finally(() => {
        outboxRead = undefined;
      }));
    const perSink = (name: string, help: string, field: 'pending' | 'dead'): Gauge =>
      new Gauge({
        name,
        help,
        labelNames: ['sink'],
        registers,
        async collect() {
          const sinks = await outboxStats().catch(() => undefined);
          if (!sinks) return;
          this.reset();
          for (const stats of sinks) this.set({ sink: stats.sink }, stats[field]);
        },
      });
    perSink('runwatch_outbox_backlog', 'Deliveries not yet made, by sink.', 'pending');
    perSink('runwatch_dead_letters', 'Deliveries given up on, by sink.', 'dead');
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
    this.rateLimited = new Counter({ name: 'runwatch_polls_rate_limited_total', help: 'Polls answered 429 (also counted in runwatch_polls_total as transient).', registers });
    this.lastSuccessfulPoll = new Gauge({
      name: 'runwatch_last_successful_poll_timestamp_seconds',
      help: 'Unix time of the last poll this process got a status from (its start time until the first).',
      registers,
    });
    // the start time, so that "no successful poll for N minutes" also fires for a daemon that never had one
    this.lastSuccessfulPoll.set(nowMs() / 1000);
    this.detectionLatency = new Histogram({
      name: 'runwatch_detection_latency_seconds',
      help: "Time from a run's status change, by the provider's timestamp (whole seconds), to its event being recorded here.",
      buckets: [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600],
      registers,
    });
    this.takeovers = new Counter({
      name: 'runwatch_takeovers_total',
      help: "Work this replica took over from another (Redis store): watch partitions whose lease lapsed (kind step), outbox partitions with deliveries left unacknowledged. Always 0 with one process.",
      labelNames: ['kind'],
      registers,
    });
    // both series exist from the start in every mode: dashboards and rate() see 0, not "no data"
    for (const kind of TAKEOVER_KINDS) this.takeovers.inc({ kind }, 0);
    new Gauge({
      name: 'runwatch_ready',
      help: 'What /readyz answers: 1 when the store answers and the daemon is not shutting down, else 0.',
      registers,
      async collect() {
        this.set((await Promise.resolve(sources.ready()).catch(() => false)) ? 1 : 0);
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

  /** Counts an event recorded (after it was written) and, for a run's status change the provider timed, how late it came. */
  transition(event: WatchEvent): void {
    this.transitions.inc({ status: transitionLabel(event.type) });
    const changedAtMs = statusChangedAtMs(event);
    // the provider's clock may run ahead of ours: a negative delay is a skew, not a detection
    if (changedAtMs !== undefined) this.detectionLatency.observe(Math.max(0, this.#nowMs() - changedAtMs) / 1000);
  }

  /** Counts one poll. */
  poll(report: { readonly outcome: string; readonly httpStatus?: number | undefined; readonly latencyMs: number; readonly latenessMs: number }): void {
    const nowMs = this.#nowMs();
    const throttled = report.httpStatus === 429;
    this.polls.inc({ outcome: report.outcome });
    if (throttled) this.rateLimited.inc();
    if (report.outcome === 'ok') this.lastSuccessfulPoll.set(nowMs / 1000);
    this.recent.record(nowMs, throttled);
    this.pollLatency.observe(report.latencyMs / 1000);
    this.pollLateness.observe(report.latenessMs / 1000);
  }

  /** Records one delivery attempt. */
  delivery(sink: string, outcome: DeliveryOutcome): void {
    this.deliveries.inc({ sink, outcome });
  }

  /** Counts work taken over from another replica. */
  takeover(kind: TakeoverKind): void {
    this.takeovers.inc({ kind });
  }
}
