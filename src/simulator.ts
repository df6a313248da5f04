import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { z } from 'zod';
import { MAX_TIMER_MS } from './backoff.js';
import { DEFAULT_AZURE_API_VERSION } from './client.js';
import { ConfigError } from './errors.js';
import { ID_PATTERN, RESPONSE_KIND } from './resource.js';
import type { StreamFaults } from './simulator-stream.js';
import { checkStreamFaults, responseStreamEvents, StreamConnection } from './simulator-stream.js';
import type { SimulatedWebhooks, WebhookStats } from './simulator-webhooks.js';
import { WebhookSender } from './simulator-webhooks.js';
import { isTerminal, TERMINAL_RUN_STATUSES } from './status.js';

export type { StreamFaults } from './simulator-stream.js';
export type { SimulatedWebhooks, WebhookStats } from './simulator-webhooks.js';
export { parseSimulatedWebhooks, seededRandom } from './simulator-webhooks.js';

/** One step of a simulated run's life. */
export interface TimelineStep {
  /** The status the run reports during this step. */
  readonly status: string;
  /**
   * How long the step lasts. Omitted on the last step (it lasts forever) and on a
   * `requires_action` step that waits for `submit_tool_outputs`.
   */
  readonly durationMs?: number;
  /**
   * What a `requires_action` step asks for: tool outputs (`required_action.type:
   * "submit_tool_outputs"`), or approvals of MCP tool calls (`"submit_tool_approval"`, Azure's
   * `SubmitToolApprovalAction`, answered with `tool_approvals`; `errorStyle: 'azure'` only).
   * @default 'submit_tool_outputs'
   */
  readonly requiredAction?: RequiredActionType;
}

/** The `required_action.type` of a run in `requires_action`. */
export type RequiredActionType = 'submit_tool_outputs' | 'submit_tool_approval';

/** A scripted failure for a range of a run's retrieve requests (1-based, inclusive). */
export type Fault = {
  /** First request number it applies to. */
  readonly from: number;
  /** Last request number it applies to. @default from */
  readonly to?: number;
} & (
  | { readonly type: 'status'; readonly status: number; readonly headers?: Readonly<Record<string, string>>; readonly body?: string }
  | { readonly type: 'reset' }
  | { readonly type: 'hang' }
  | { readonly type: 'malformed'; readonly body?: string }
);

/** A run the simulator serves. */
export interface SimulatedRun {
  readonly threadId: string;
  readonly runId: string;
  /** The statuses it goes through; starts when the run is added. */
  readonly timeline: readonly TimelineStep[];
  /** Scripted failures by request number. */
  readonly faults?: readonly Fault[];
  /** Sent as `openai-poll-after-ms` with every successful answer. */
  readonly pollAfterMs?: number;
  /** `expires_at` is this long after creation. @default 600000 */
  readonly expiresInMs?: number;
  /** Delay before answering each request. @default 0 */
  readonly latencyMs?: number;
  /**
   * When the timeline starts: when the run is added, or at its first retrieve request (so a
   * client that starts late still sees every step).
   * @default 'created'
   */
  readonly start?: 'created' | 'first_request';
}

/** A background response the simulator serves at `GET /v1/responses/{id}`. */
export interface SimulatedResponse {
  readonly responseId: string;
  /** Statuses it goes through: `queued`, `in_progress`, then `completed`, `failed`, `cancelled` or `incomplete`. */
  readonly timeline: readonly TimelineStep[];
  readonly faults?: readonly Fault[];
  readonly pollAfterMs?: number;
  readonly latencyMs?: number;
  /** @default 'created' */
  readonly start?: 'created' | 'first_request';
  /**
   * Created with `stream: true`: `GET /v1/responses/{id}?stream=true&starting_after=N` then
   * serves its events (others answer 400, as the API does). Per-response `faults` and
   * `latencyMs` apply to plain GETs only.
   * @default false
   */
  readonly stream?: boolean;
  /**
   * Once completed, its output carries an image of this many base64 characters (a real one can
   * pass 8 MiB), to test the client's body cap.
   * @default 0 (a short text answer)
   */
  readonly outputImageBytes?: number;
}

/** One request the simulator received for a run. */
export interface RecordedRequest {
  readonly method: string;
  readonly path: string;
  readonly atMs: number;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  /** The status served in the answer; `null` when a fault answered instead. */
  readonly status: string | null;
  /** The body of a POST. */
  readonly body?: string;
  /** A `?stream=true` request of a response (counted apart from plain GETs). */
  readonly stream?: boolean;
  /** The stream's `starting_after`, when it had a valid one. */
  readonly startingAfter?: number;
}

type MutableRecordedRequest = { -readonly [K in keyof RecordedRequest]: RecordedRequest[K] };

/** A status change as the simulator made it, with its true time. */
export interface TrueTransition {
  readonly status: string;
  readonly atMs: number;
}

/** Options of `startSimulator()`. */
export interface SimulatorOptions extends StreamFaults {
  /** @default 0 (a free port) */
  readonly port?: number;
  /** @default '127.0.0.1' */
  readonly host?: string;
  /** When set, requests must carry it as `Authorization: Bearer` or `x-portkey-api-key`. */
  readonly apiKey?: string;
  /**
   * Shape of error bodies. `azure` also serves under `/api/projects/sim` (a Foundry project
   * endpoint), answers with `apim-request-id`, requires `?api-version=` (see `apiVersion`),
   * lists a thread's runs as Azure's spec does (`{ data, last_id, has_more }`, no `object`),
   * and may ask for tool approvals (`TimelineStep.requiredAction`).
   * @default 'openai'
   */
  readonly errorStyle?: 'openai' | 'portkey' | 'azure';
  /** Azure style: the `api-version` every request must carry. @default '2025-05-01' */
  readonly apiVersion?: string;
  /** Runs to serve from the start. */
  readonly runs?: readonly SimulatedRun[];
  /** Background responses to serve from the start. */
  readonly responses?: readonly SimulatedResponse[];
  /**
   * A fleet-wide rate limit, as an API enforces per key: beyond it, retrieve requests get 429
   * with `retry-after` and `retry-after-ms` (time until a request would be accepted).
   * @default undefined (no limit)
   */
  readonly rateLimit?: RateLimit;
  /**
   * Keep every request (method, path, headers) for `requests()`. Off for large benchmarks:
   * counters and true transitions are always kept.
   * @default true
   */
  readonly recordRequests?: boolean;
  /**
   * POST a signed `response.<status>` event when a background response reaches a terminal
   * status (runs send none), as OpenAI's webhooks do.
   * @default undefined (no webhooks)
   */
  readonly webhooks?: SimulatedWebhooks;
  /** Time between two `response.output_text.delta` events of a streamed response in `in_progress`. @default 250 */
  readonly streamDeltaIntervalMs?: number;
}

/** A token bucket over all runs' retrieve requests. */
export interface RateLimit {
  /** Sustained requests per second. */
  readonly requestsPerSecond: number;
  /** Requests accepted at once after a quiet period. @default requestsPerSecond */
  readonly burst?: number;
}

/** Counters of a simulator, cheap enough for any load. */
export interface SimulatorStats {
  /** Every request received, for any path. */
  readonly requests: number;
  /** Requests answered 429 by the rate limit. */
  readonly rateLimited: number;
  /** Requests and 429s per wall-clock second (epoch seconds as keys). */
  readonly perSecond: ReadonlyMap<number, { readonly requests: number; readonly rateLimited: number }>;
  /** `?stream=true` requests of known responses (answered or not); not counted by `retrieveCount`. */
  readonly streams: number;
  /** Webhook deliveries (all zero without `webhooks`). */
  readonly webhooks: WebhookStats;
}

/** A running simulator. */
export interface RunningSimulator {
  /** Base URL to give runwatch, e.g. `http://127.0.0.1:4010/v1`. */
  readonly baseUrl: string;
  readonly port: number;
  /** Adds (or replaces) a run; its timeline starts now. */
  addRun(run: SimulatedRun): void;
  /** Adds (or replaces) a background response; its timeline starts now (or at its first request). */
  addResponse(response: SimulatedResponse): void;
  /** Requests received for a run or response (retrieve, submit and cancel). */
  requests(runId: string): readonly RecordedRequest[];
  /**
   * The run's or response's true status changes up to now (the last one is its terminal
   * status once reached, even if nobody asked since), for measuring detection latency.
   */
  transitions(runId: string): readonly TrueTransition[];
  /** Most requests for one run that were ever in flight at once. */
  maxConcurrent(runId: string): number;
  /** Every request received, for any path (including rejected ones). */
  totalRequests(): number;
  /** Retrieve requests received for a run (answered or not); stream requests are not counted. */
  retrieveCount(runId: string): number;
  /** `?stream=true` requests received for a response (answered or not). */
  streamCount(responseId: string): number;
  /** Counters, including the rate limit's. */
  stats(): SimulatorStats;
  /** Changes the key requests must carry (a rotated token); `undefined` accepts any. */
  setApiKey(key: string | undefined): void;
  /** Starts (or replaces, with a full bucket, or with `null` lifts) the fleet-wide rate limit: an API tightening and relaxing its limit. */
  setRateLimit(limit: RateLimit | null): void;
  /**
   * Changes the stream faults for connections opened from now on: each key given replaces the
   * current value (`undefined` clears it), keys left out stay.
   */
  setStreamFaults(faults: StreamFaults): void;
  /**
   * Starts (or replaces, or with `null` stops) the webhooks for responses that end from now on:
   * a receiver started after the simulator (a daemon polling it) gets its URL here.
   */
  setWebhooks(webhooks: SimulatedWebhooks | null): void;
  /** Responses whose webhook was dropped on purpose (`dropRate`): a benchmark checks how late those were found. */
  droppedWebhooks(): readonly string[];
  /** Stops the server, drops every connection (hung ones and streams too), clears every timer and aborts webhook POSTs. */
  close(): Promise<void>;
}

const TERMINAL = new Set<string>(TERMINAL_RUN_STATUSES);
/** A background response ends on these (a webhook goes out, a stream ends). */
const RESPONSE_TERMINAL = RESPONSE_KIND.rules.terminal;
/** A response's life ends on any status but queued and in_progress (its stream ends there too); webhooks exist for the four documented ones only. */
const responseEnded = (status: string): boolean => isTerminal(RESPONSE_KIND.rules, status);
/** Azure's error codes by HTTP status, as Foundry answers them. */
const AZURE_CODES: Readonly<Record<number, string>> = { 400: 'BadRequest', 401: 'Unauthorized', 403: 'Forbidden', 404: 'NotFound', 429: 'TooManyRequests' };
const MAX_BODY_BYTES = 1_000_000;

/** Ready-made timelines, used by `runwatch sim --demo` and `npm run demo`; each starts at its first request. */
export const DEMO_RUNS: readonly SimulatedRun[] = ([
  { threadId: 'thread_demo', runId: 'run_completed', timeline: [{ status: 'queued', durationMs: 600 }, { status: 'in_progress', durationMs: 1_500 }, { status: 'completed' }] },
  { threadId: 'thread_demo', runId: 'run_failed', timeline: [{ status: 'queued', durationMs: 400 }, { status: 'in_progress', durationMs: 1_200 }, { status: 'failed' }] },
  { threadId: 'thread_demo', runId: 'run_cancelled', timeline: [{ status: 'in_progress', durationMs: 800 }, { status: 'cancelling', durationMs: 500 }, { status: 'cancelled' }] },
  { threadId: 'thread_demo', runId: 'run_expired', timeline: [{ status: 'queued', durationMs: 1_000 }, { status: 'expired' }] },
  { threadId: 'thread_demo', runId: 'run_incomplete', timeline: [{ status: 'in_progress', durationMs: 1_000 }, { status: 'incomplete' }] },
  { threadId: 'thread_demo', runId: 'run_requires_action', timeline: [{ status: 'queued', durationMs: 300 }, { status: 'in_progress', durationMs: 700 }, { status: 'requires_action' }, { status: 'in_progress', durationMs: 500 }, { status: 'completed' }] },
  {
    threadId: 'thread_demo',
    runId: 'run_flaky',
    timeline: [{ status: 'queued', durationMs: 500 }, { status: 'in_progress', durationMs: 2_000 }, { status: 'completed' }],
    faults: [
      { type: 'status', status: 429, headers: { 'retry-after-ms': '700' }, from: 2 },
      { type: 'status', status: 503, from: 3 },
      { type: 'reset', from: 4 },
    ],
  },
] satisfies SimulatedRun[]).map((run) => ({ ...run, start: 'first_request' as const }));

/** Ready-made background responses, served with `--demo`; each starts at its first request and can be streamed. */
export const DEMO_RESPONSES: readonly SimulatedResponse[] = [
  { responseId: 'resp_demo_completed', timeline: [{ status: 'queued', durationMs: 500 }, { status: 'in_progress', durationMs: 1_500 }, { status: 'completed' }], start: 'first_request', stream: true },
  { responseId: 'resp_demo_failed', timeline: [{ status: 'queued', durationMs: 300 }, { status: 'in_progress', durationMs: 1_000 }, { status: 'failed' }], start: 'first_request', stream: true },
  { responseId: 'resp_demo_incomplete', timeline: [{ status: 'in_progress', durationMs: 800 }, { status: 'incomplete' }], start: 'first_request', stream: true },
];

class RunState {
  /** Runs and responses share the timeline machinery; a response's spec has an empty thread id. */
  readonly kind: 'run' | 'response';
  readonly spec: SimulatedRun;
  readonly createdAtMs: number;
  readonly steps: TimelineStep[];
  readonly requests: MutableRecordedRequest[] = [];
  readonly transitions: TrueTransition[] = [];
  cursor = 0;
  stepStartedAtMs: number;
  retrieves = 0;
  inFlight = 0;
  maxConcurrent = 0;

  started = false;
  /** Response only: created with `stream: true`. */
  readonly streamable: boolean;
  /** A response's image output size once completed (`outputImageBytes`). */
  imageBytes = 0;
  streamRequests = 0;
  readonly streams = new Set<StreamConnection>();
  /** Response only: wakes it at its next change while a webhook or a stream waits for one. */
  timer: NodeJS.Timeout | undefined;
  webhookSent = false;
  settleQueued = false;
  /** Runs after every status change (responses: webhooks, streams, the timer). */
  readonly #onChange: ((state: RunState) => void) | undefined;

  constructor(spec: SimulatedRun, nowMs: number, kind: 'run' | 'response' = 'run', streamable = false, onChange?: (state: RunState) => void) {
    this.kind = kind;
    this.spec = spec;
    this.steps = [...spec.timeline];
    this.createdAtMs = nowMs;
    this.stepStartedAtMs = nowMs;
    this.streamable = streamable;
    this.#onChange = onChange;
    if (spec.start !== 'first_request') this.begin(nowMs);
  }

  begin(nowMs: number): void {
    this.started = true;
    this.stepStartedAtMs = nowMs;
    this.transitions.push({ status: this.step.status, atMs: nowMs });
    this.#onChange?.(this);
  }

  get step(): TimelineStep {
    return this.steps[this.cursor] ?? this.steps[this.steps.length - 1]!;
  }

  /** Moves through every step whose time is up. */
  advance(nowMs: number): void {
    if (!this.started) this.begin(nowMs);
    for (;;) {
      const step = this.step;
      if (step.durationMs === undefined || this.cursor >= this.steps.length - 1) return;
      const endsAtMs = this.stepStartedAtMs + step.durationMs;
      if (nowMs < endsAtMs) return;
      this.next(endsAtMs);
    }
  }

  next(atMs: number): void {
    this.cursor += 1;
    this.stepStartedAtMs = atMs;
    this.transitions.push({ status: this.step.status, atMs });
    this.#onChange?.(this);
  }

  /** `toJSON()` as text, kept until the run moves (a step, a transition, an image): a poll of an unchanged run builds nothing. */
  jsonText(): string {
    const { step, cursor, stepStartedAtMs, imageBytes } = this;
    const key = this.#textKey;
    if (this.#text === undefined || key.step !== step || key.cursor !== cursor || key.transitions !== this.transitions.length || key.stepStartedAtMs !== stepStartedAtMs || key.imageBytes !== imageBytes) {
      this.#text = JSON.stringify(this.toJSON());
      this.#textKey = { step, cursor, transitions: this.transitions.length, stepStartedAtMs, imageBytes };
    }
    return this.#text;
  }

  #text: string | undefined;
  #textKey: { readonly step: TimelineStep | undefined; readonly cursor: number; readonly transitions: number; readonly stepStartedAtMs: number; readonly imageBytes: number } = { step: undefined, cursor: -1, transitions: -1, stepStartedAtMs: -1, imageBytes: -1 };

  /** The object GET answers with; a response's may be asked at an earlier status (stream events). */
  toJSON(status = this.step.status): Record<string, unknown> {
    const seconds = (ms: number): number => Math.floor(ms / 1000);
    if (this.kind === 'response') {
      const done = status === 'completed';
      return {
        id: this.spec.runId,
        object: 'response',
        created_at: seconds(this.createdAtMs),
        status,
        background: true,
        error: status === 'failed' ? { code: 'server_error', message: 'Simulated failure.' } : null,
        incomplete_details: status === 'incomplete' ? { reason: 'max_output_tokens' } : null,
        model: 'sim-1',
        output: done
          ? [
              { type: 'message', id: 'msg_sim', status: 'completed', role: 'assistant', content: [{ type: 'output_text', text: 'Simulated answer.', annotations: [] }] },
              ...(this.imageBytes > 0 ? [{ type: 'image_generation_call', id: 'ig_sim', status: 'completed', result: 'A'.repeat(this.imageBytes) }] : []),
            ]
          : [],
        usage: done ? { input_tokens: 10, output_tokens: 20, total_tokens: 30 } : null,
        metadata: {},
      };
    }
    const terminal = TERMINAL.has(status);
    const endedAt = terminal ? seconds(this.stepStartedAtMs) : null;
    return {
      id: this.spec.runId,
      object: 'thread.run',
      created_at: seconds(this.createdAtMs),
      assistant_id: 'asst_simulated',
      thread_id: this.spec.threadId,
      status,
      started_at: this.transitions.some((t) => t.status === 'in_progress') ? seconds(this.transitions.find((t) => t.status === 'in_progress')!.atMs) : null,
      expires_at: terminal ? null : seconds(this.createdAtMs + (this.spec.expiresInMs ?? 600_000)),
      cancelled_at: status === 'cancelled' ? endedAt : null,
      failed_at: status === 'failed' ? endedAt : null,
      completed_at: status === 'completed' ? endedAt : null,
      required_action: status === 'requires_action' ? requiredAction(this.step.requiredAction ?? 'submit_tool_outputs', `call_${this.cursor}`) : null,
      last_error: status === 'failed' ? { code: 'server_error', message: 'Simulated failure.' } : null,
      incomplete_details: status === 'incomplete' ? { reason: 'max_completion_tokens' } : null,
      model: 'sim-1',
      instructions: '',
      tools: [],
      metadata: {},
      usage: terminal ? { prompt_tokens: 10, completion_tokens: 20, total_tokens: 30 } : null,
    };
  }
}

/** The `required_action` of a run waiting at step `call`: a function call to answer, or an MCP call to approve (Azure's `RequiredMcpToolCall`). */
function requiredAction(type: RequiredActionType, callId: string): Record<string, unknown> {
  if (type === 'submit_tool_approval') {
    return { type, submit_tool_approval: { tool_calls: [{ id: callId, type: 'mcp', name: 'fetch_docs', arguments: '{"path":"README.md"}', server_label: 'docs' }] } };
  }
  return { type, submit_tool_outputs: { tool_calls: [{ id: callId, type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }] } };
}

const idSchema = z.string().regex(ID_PATTERN);
const range = { from: z.number().int().positive(), to: z.number().int().positive().optional() };
const runSchema = z.object({
  threadId: idSchema,
  runId: idSchema,
  timeline: z.array(z.object({ status: z.string().min(1).max(64), durationMs: z.number().nonnegative().optional(), requiredAction: z.enum(['submit_tool_outputs', 'submit_tool_approval']).optional() })).min(1),
  faults: z
    .array(
      z.discriminatedUnion('type', [
        z.object({ type: z.literal('status'), status: z.number().int().min(100).max(599), headers: z.record(z.string(), z.string()).optional(), body: z.string().optional(), ...range }),
        z.object({ type: z.literal('reset'), ...range }),
        z.object({ type: z.literal('hang'), ...range }),
        z.object({ type: z.literal('malformed'), body: z.string().optional(), ...range }),
      ]),
    )
    .optional(),
  pollAfterMs: z.number().nonnegative().optional(),
  expiresInMs: z.number().positive().optional(),
  latencyMs: z.number().nonnegative().optional(),
  start: z.enum(['created', 'first_request']).optional(),
});

const responseSchema = runSchema
  .omit({ threadId: true, runId: true, expiresInMs: true })
  .extend({ responseId: idSchema, stream: z.boolean().optional(), outputImageBytes: z.number().int().min(0).max(256 * 1024 * 1024).optional() });

/** Validates a background response specification; throws `ConfigError` naming the field. */
export function parseSimulatedResponse(input: unknown): SimulatedResponse {
  return parseSpec(responseSchema, 'response', input);
}

/** Validates a run specification (from JSON or code); throws `ConfigError` naming the field. */
export function parseSimulatedRun(input: unknown): SimulatedRun {
  return parseSpec(runSchema, 'run', input);
}

function parseSpec<T>(schema: z.ZodType<T>, what: string, input: unknown): T {
  const result = schema.safeParse(input);
  if (!result.success) {
    const issue = result.error.issues[0];
    throw new ConfigError(`invalid simulated ${what}: ${issue ? `${issue.path.join('.') || '(root)'}: ${issue.message}` : 'unknown error'}`);
  }
  return result.data;
}

const NO_WEBHOOKS: WebhookStats = Object.freeze({ attempts: 0, sent: 0, dropped: 0, duplicated: 0, reordered: 0, failed: 0 });

/**
 * Starts an OpenAI/Portkey-compatible runs server on loopback with scripted timelines and
 * faults: `GET /v1/threads/{tid}/runs/{rid}`, `GET /v1/threads/{tid}/runs` (the thread's runs),
 * `POST .../submit_tool_outputs` (tool outputs, or Azure's tool approvals), `POST .../cancel`,
 * background responses at `GET /v1/responses/{id}` (with `?stream=true&starting_after=N` for
 * one created with `stream: true`) and `POST .../cancel`, signed webhooks when a response ends,
 * and `POST /_sim/runs` and `/_sim/responses` to add one over HTTP.
 */
export async function startSimulator(options: SimulatorOptions = {}): Promise<RunningSimulator> {
  const runs = new Map<string, RunState>();
  const hung = new Set<http.ServerResponse>();
  const errorStyle = options.errorStyle ?? 'openai';
  const recordRequests = options.recordRequests ?? true;
  let limiter = options.rateLimit ? new Limiter(options.rateLimit) : null;
  const perSecond = new Map<number, { requests: number; rateLimited: number }>();
  const deltaIntervalMs = options.streamDeltaIntervalMs ?? 250;
  if (!(Number.isFinite(deltaIntervalMs) && deltaIntervalMs > 0)) throw new ConfigError(`invalid streamDeltaIntervalMs ${String(deltaIntervalMs)}: use a positive number of ms`);
  let streamFaults: StreamFaults = { streamCutAfterEvents: options.streamCutAfterEvents, streamBuffering: options.streamBuffering, refuseStreams: options.refuseStreams };
  checkStreamFaults(streamFaults);
  let webhooks = options.webhooks ? new WebhookSender(options.webhooks) : null;
  let closed = false;
  let total = 0;
  let rateLimited = 0;
  let streamTotal = 0;
  const countSecond = (nowMs: number, limited: boolean): void => {
    const second = Math.floor(nowMs / 1000);
    let bucket = perSecond.get(second);
    if (!bucket) perSecond.set(second, (bucket = { requests: 0, rateLimited: 0 }));
    bucket.requests += 1;
    if (limited) bucket.rateLimited += 1;
  };

  /** Brings a response up to now: its webhook once terminal, its streams' new events, its next wake-up. */
  const settle = (state: RunState): void => {
    // a replaced response's state lives on only in the closures of its old requests
    if (closed || !state.started || runs.get(state.spec.runId) !== state) return;
    const now = Date.now();
    state.advance(now);
    if (webhooks && !state.webhookSent) {
      const ended = state.transitions.find((t) => RESPONSE_TERMINAL.has(t.status));
      if (ended) {
        state.webhookSent = true;
        webhooks.send(state.spec.runId, ended.status, ended.atMs);
      }
    }
    if (state.streams.size > 0) {
      const events = responseStreamEvents(state.transitions, now, deltaIntervalMs, responseEnded);
      for (const stream of [...state.streams]) stream.pump(events, (status) => state.toJSON(status));
    }
    schedule(state, now);
  };

  /** Sets the response's one timer at its next step change (and next text delta while streamed), if anyone waits for it. */
  const schedule = (state: RunState, now: number): void => {
    clearTimeout(state.timer);
    state.timer = undefined;
    const step = state.step;
    if ((!webhooks || state.webhookSent) && state.streams.size === 0) return;
    if (responseEnded(step.status)) return;
    let atMs = step.durationMs !== undefined && state.cursor < state.steps.length - 1 ? state.stepStartedAtMs + step.durationMs : Infinity;
    if (state.streams.size > 0 && step.status === 'in_progress') {
      atMs = Math.min(atMs, state.stepStartedAtMs + (Math.floor((now - state.stepStartedAtMs) / deltaIntervalMs) + 1) * deltaIntervalMs);
    }
    if (atMs === Infinity) return;
    state.timer = setTimeout(() => {
      state.timer = undefined;
      settle(state);
    }, Math.min(Math.max(atMs - now, 1), MAX_TIMER_MS));
  };

  /** A status change may happen deep inside `advance()`: settle once, right after. */
  const changed = (state: RunState): void => {
    if (state.settleQueued) return;
    state.settleQueued = true;
    queueMicrotask(() => {
      state.settleQueued = false;
      settle(state);
    });
  };

  /** Stops what a state still runs when its id is served anew or the simulator closes. */
  const retire = (state: RunState | undefined): void => {
    if (!state) return;
    clearTimeout(state.timer);
    state.timer = undefined;
    for (const stream of [...state.streams]) stream.destroy();
  };

  const addRun = (input: SimulatedRun): void => {
    const spec = parseSimulatedRun(input);
    // tool approvals are Azure's (MCP tools); OpenAI's runs API has none
    if (errorStyle !== 'azure' && spec.timeline.some((step) => step.requiredAction === 'submit_tool_approval')) {
      throw new ConfigError('invalid simulated run: requiredAction submit_tool_approval needs errorStyle azure');
    }
    retire(runs.get(spec.runId));
    runs.set(spec.runId, new RunState(spec, Date.now()));
  };
  const addResponse = (input: SimulatedResponse): void => {
    const spec = parseSimulatedResponse(input);
    retire(runs.get(spec.responseId));
    const state = new RunState({ ...spec, threadId: '', runId: spec.responseId }, Date.now(), 'response', spec.stream ?? false, changed);
    state.imageBytes = spec.outputImageBytes ?? 0;
    runs.set(spec.responseId, state);
  };
  for (const run of options.runs ?? []) addRun(run);
  for (const response of options.responses ?? []) addResponse(response);

  const prefix = errorStyle === 'azure' ? '/api/projects/sim' : '/v1';
  const apiVersion = options.apiVersion ?? DEFAULT_AZURE_API_VERSION;
  let apiKey = options.apiKey;
  let azureRequests = 0;
  const sendError = (res: http.ServerResponse, status: number, message: string, code: string | null = null, headers: Record<string, string> = {}, param: string | null = null): void => {
    if (errorStyle === 'azure') {
      azureRequests += 1;
      sendJson(res, status, { error: { code: AZURE_CODES[status] ?? (status >= 500 ? 'InternalServerError' : 'BadRequest'), message } }, { 'apim-request-id': `sim-${azureRequests}`, ...headers });
      return;
    }
    const body =
      errorStyle === 'portkey'
        ? { status: 'failure', message }
        : { error: { message, type: status === 401 ? 'invalid_request_error' : 'api_error', param, code } };
    sendJson(res, status, body, headers);
  };

  const authorized = (req: http.IncomingMessage): boolean => {
    if (apiKey === undefined) return true;
    return req.headers.authorization === `Bearer ${apiKey}` || (errorStyle !== 'azure' && req.headers['x-portkey-api-key'] === apiKey);
  };

  /** Azure's api-version check and the key check; answers and returns true when the request may not go on. */
  const rejected = (req: http.IncomingMessage, url: RequestUrl, res: http.ServerResponse): boolean => {
    if (errorStyle === 'azure' && url.searchParams.get('api-version') !== apiVersion) {
      const given = url.searchParams.get('api-version');
      sendError(res, 400, given === null ? 'Missing required query parameter: api-version' : `Unsupported api-version '${given.slice(0, 40)}'. The supported version is ${apiVersion}.`);
      return true;
    }
    if (authorized(req)) {
      // the hosted gateway cannot route a GET without a provider (it has no model to carry one)
      if (errorStyle === 'portkey' && !['x-portkey-provider', 'x-portkey-config', 'x-portkey-virtual-key'].some((name) => req.headers[name])) {
        sendError(res, 400, 'Either x-portkey-config or x-portkey-provider header is required');
        return true;
      }
      return false;
    }
    if (errorStyle === 'azure') {
      sendError(res, 401, 'Access token is missing, invalid, audience is incorrect (https://ai.azure.com), or have expired.');
    } else {
      const given = req.headers.authorization?.replace(/^Bearer /, '') ?? String(req.headers['x-portkey-api-key'] ?? '');
      // echo the key the way OpenAI does, so clients are tested on not logging it
      sendError(res, 401, `Incorrect API key provided: ${given.slice(0, 3)}***${given.slice(-4)}. You can find your API key at https://platform.openai.com/account/api-keys.`, 'invalid_api_key');
    }
    return true;
  };

  /** The fleet rate limit: counts the request in its second, and answers 429 (returning true) beyond the limit. */
  const limited = (res: http.ServerResponse, now: number): boolean => {
    const waitMs = limiter?.take(now) ?? 0;
    countSecond(now, waitMs > 0);
    if (waitMs === 0) return false;
    rateLimited += 1;
    sendError(res, 429, 'Rate limit reached for requests.', 'rate_limit_exceeded', { 'retry-after': String(Math.ceil(waitMs / 1000)), 'retry-after-ms': String(waitMs) });
    return true;
  };

  /** `GET /responses/{id}?stream=true&starting_after=N`: the response's events after N, live until the terminal one. */
  const openStream = (state: RunState, url: RequestUrl, res: http.ServerResponse, record: MutableRecordedRequest, now: number): void => {
    state.streamRequests += 1;
    streamTotal += 1;
    if (limited(res, now)) return;
    if (streamFaults.refuseStreams || !state.streamable) {
      sendError(res, 400, `Response '${state.spec.runId}' was not created with 'stream: true' and cannot be streamed.`, null, {}, 'stream');
      return;
    }
    const startingAfter = url.searchParams.get('starting_after');
    if (startingAfter !== null && record.startingAfter === undefined) {
      sendError(res, 400, `Invalid 'starting_after': expected a sequence number, got '${startingAfter.slice(0, 40)}'.`, null, {}, 'starting_after');
      return;
    }
    state.advance(now);
    record.status = state.step.status;
    const stream = new StreamConnection(res, record.startingAfter ?? -1, streamFaults, { 'x-request-id': `req_${state.spec.runId}_s${state.streamRequests}` }, () => {
      state.streams.delete(stream);
    });
    state.streams.add(stream);
    settle(state);
  };

  /** `GET /threads/{id}/runs?limit=&order=`: the thread's runs, newest first unless order=asc. */
  const listRuns = (threadId: string, url: RequestUrl, res: http.ServerResponse): void => {
    const now = Date.now();
    const limit = Math.min(100, Math.max(1, Number(url.searchParams.get('limit') ?? 20) || 20));
    const all = [...runs.values()].filter((r) => r.kind === 'run' && r.spec.threadId === threadId);
    all.sort((a, b) => (url.searchParams.get('order') === 'asc' ? a.createdAtMs - b.createdAtMs : b.createdAtMs - a.createdAtMs));
    const data = all.slice(0, limit).map((r) => {
      r.advance(now);
      return r.toJSON();
    });
    // Azure's Runs_ListRuns answers { data, last_id, has_more } (no object, no first_id); OpenAI's has both
    const lastId = data.at(-1)?.id;
    if (errorStyle === 'azure') sendJson(res, 200, { data, ...(lastId === undefined ? {} : { last_id: lastId }), has_more: all.length > limit });
    else sendJson(res, 200, { object: 'list', data, first_id: data[0]?.id ?? null, last_id: lastId ?? null, has_more: all.length > limit });
  };

  const server = http.createServer((req, res) => {
    void handle(req, res).catch((error: unknown) => {
      if (!res.headersSent) sendError(res, 500, `simulator error: ${String(error)}`);
    });
  });

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    total += 1;
    const url = requestUrl(req.url ?? '/');
    const body = req.method === 'POST' ? await readBody(req) : '';
    if ((url.pathname === '/_sim/runs' || url.pathname === '/_sim/responses') && req.method === 'POST') {
      try {
        if (url.pathname === '/_sim/runs') addRun(JSON.parse(body) as SimulatedRun);
        else addResponse(JSON.parse(body) as SimulatedResponse);
      } catch (error) {
        sendError(res, 400, error instanceof Error ? error.message : 'invalid run');
        return;
      }
      sendJson(res, 201, { ok: true });
      return;
    }
    const local = url.pathname.startsWith(`${prefix}/`) ? url.pathname.slice(prefix.length) : '';
    const listMatch = req.method === 'GET' ? /^\/threads\/([^/]+)\/runs$/.exec(local) : null;
    if (listMatch) {
      if (rejected(req, url, res)) return;
      listRuns(decodeURIComponent(listMatch[1]!), url, res);
      return;
    }
    const responseMatch = /^\/responses\/([^/]+)(\/cancel)?$/.exec(local);
    const match = responseMatch ? [local, '', responseMatch[1], responseMatch[2]] : /^\/threads\/([^/]+)\/runs\/([^/]+)(\/submit_tool_outputs|\/cancel)?$/.exec(local);
    if (!match) {
      sendError(res, 404, `Invalid URL (${req.method ?? 'GET'} ${url.pathname})`, 'unknown_url');
      return;
    }
    if (rejected(req, url, res)) return;
    const [, threadId, runId, action] = match;
    const run = runs.get(decodeURIComponent(runId!));
    if (!run || run.spec.threadId !== decodeURIComponent(threadId!) || (run.kind === 'response') !== (responseMatch !== null)) {
      sendError(res, 404, responseMatch ? `Response with id '${runId}' not found.` : `No run found with id '${runId}'.`);
      return;
    }
    const now = Date.now();
    const streamed = run.kind === 'response' && req.method === 'GET' && url.searchParams.get('stream') === 'true';
    const startingAfter = streamed ? /^\d{1,15}$/.exec(url.searchParams.get('starting_after') ?? '')?.[0] : undefined;
    const record: MutableRecordedRequest = {
      method: req.method ?? 'GET',
      path: url.pathname,
      atMs: now,
      headers: recordRequests ? { ...req.headers } : {},
      status: null,
      ...(body === '' ? {} : { body }),
      ...(streamed ? { stream: true } : {}),
      ...(startingAfter === undefined ? {} : { startingAfter: Number(startingAfter) }),
    };
    if (recordRequests) run.requests.push(record);
    if (req.method === 'POST') {
      run.advance(now);
      handleAction(run, action ?? '', body, res, now);
      return;
    }
    if (req.method !== 'GET') {
      sendError(res, 405, `Method ${req.method ?? ''} not allowed`);
      return;
    }
    if (!run.started) run.begin(now);
    if (streamed) {
      openStream(run, url, res, record, now);
      return;
    }
    run.retrieves += 1;
    if (limited(res, now)) return;
    run.inFlight += 1;
    run.maxConcurrent = Math.max(run.maxConcurrent, run.inFlight);
    res.once('close', () => (run.inFlight -= 1));
    if (run.spec.latencyMs) await new Promise((resolve) => setTimeout(resolve, run.spec.latencyMs));
    const fault = run.spec.faults?.find((f) => run.retrieves >= f.from && run.retrieves <= (f.to ?? f.from));
    if (fault?.type === 'reset') {
      req.socket.destroy();
      return;
    }
    if (fault?.type === 'hang') {
      hung.add(res);
      res.once('close', () => hung.delete(res));
      return;
    }
    if (fault?.type === 'malformed') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(fault.body ?? '{"object":"thread.run","oops":');
      return;
    }
    if (fault?.type === 'status') {
      if (fault.body !== undefined) res.writeHead(fault.status, { 'content-type': 'application/json', ...fault.headers }).end(fault.body);
      else sendError(res, fault.status, fault.status === 429 ? 'Rate limit reached.' : `Simulated HTTP ${fault.status}.`, null, { ...fault.headers });
      return;
    }
    run.advance(Date.now());
    record.status = run.step.status;
    const headers: Record<string, string> = { 'x-request-id': `req_${run.spec.runId}_${run.retrieves}` };
    if (run.spec.pollAfterMs !== undefined) headers['openai-poll-after-ms'] = String(run.spec.pollAfterMs);
    sendText(res, 200, run.jsonText(), headers);
  };

  const handleAction = (run: RunState, action: string, body: string, res: http.ServerResponse, now: number): void => {
    const status = run.step.status;
    if (action === '/submit_tool_outputs') {
      if (status !== 'requires_action') {
        sendError(res, 400, `Runs in status "${status}" do not accept tool outputs.`);
        return;
      }
      let parsed: unknown;
      try {
        parsed = JSON.parse(body);
      } catch {
        parsed = undefined;
      }
      const { tool_outputs: outputs, tool_approvals: approvals } = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as { tool_outputs?: unknown; tool_approvals?: unknown };
      const callId = `call_${run.cursor}`;
      const answers = (list: unknown, valid: (answer: Record<string, unknown>) => boolean): boolean =>
        Array.isArray(list) && list.some((a) => typeof a === 'object' && a !== null && (a as Record<string, unknown>).tool_call_id === callId && valid(a as Record<string, unknown>));
      // one endpoint, two answers: tool_outputs for submit_tool_outputs, tool_approvals for submit_tool_approval; the wrong one is refused
      if ((run.step.requiredAction ?? 'submit_tool_outputs') === 'submit_tool_approval') {
        if (outputs !== undefined) {
          sendError(res, 400, `Run '${run.spec.runId}' requires tool approvals (submit_tool_approval), not tool outputs.`);
          return;
        }
        if (!answers(approvals, (a) => typeof a.approve === 'boolean')) {
          sendError(res, 400, `Expected tool approvals for call_ids ['${callId}'], got ${Array.isArray(approvals) ? approvals.length : 0} approval(s).`);
          return;
        }
      } else {
        if (approvals !== undefined) {
          sendError(res, 400, `Run '${run.spec.runId}' requires tool outputs (submit_tool_outputs), not tool approvals.`);
          return;
        }
        // as the API does: every tool call needs an output, in one submission
        if (!answers(outputs, () => true)) {
          sendError(res, 400, `Expected tool outputs for call_ids ['${callId}'], got ${Array.isArray(outputs) ? outputs.length : 0} output(s).`, null);
          return;
        }
      }
      run.next(now);
      sendJson(res, 200, run.toJSON());
      return;
    }
    if (action === '/cancel' && run.kind === 'response') {
      // a background response is cancelled at once (and cancelling a finished one is a no-op error)
      if (TERMINAL.has(status)) {
        sendError(res, 400, `Cannot cancel a response with status '${status}'.`);
        return;
      }
      run.steps.splice(run.cursor + 1, run.steps.length, { status: 'cancelled' });
      run.next(now);
      sendJson(res, 200, run.toJSON());
      return;
    }
    if (action === '/cancel') {
      if (TERMINAL.has(status) || status === 'cancelling') {
        sendError(res, 400, `Cannot cancel run with status '${status}'.`);
        return;
      }
      run.steps.splice(run.cursor + 1, run.steps.length, { status: 'cancelling', durationMs: 500 }, { status: 'cancelled' });
      run.next(now);
      sendJson(res, 200, run.toJSON());
      return;
    }
    sendError(res, 405, 'Method POST not allowed');
  };

  /** Stops every timer, stream and webhook; the server is closed apart. */
  const shutdown = (): void => {
    closed = true;
    webhooks?.close();
    for (const state of runs.values()) retire(state);
  };

  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (error) {
    // responses that started already set timers
    shutdown();
    throw error;
  }
  const { port } = server.address() as AddressInfo;
  const host = options.host ?? '127.0.0.1';
  return {
    baseUrl: `http://${host.includes(':') ? `[${host}]` : host}:${port}${prefix}`,
    port,
    addRun,
    addResponse,
    requests: (runId) => runs.get(runId)?.requests ?? [],
    transitions: (runId) => {
      const state = runs.get(runId);
      // steps change lazily, on requests: catch up, so a status nobody asked for has its true time
      if (state?.started) state.advance(Date.now());
      return state?.transitions ?? [];
    },
    maxConcurrent: (runId) => runs.get(runId)?.maxConcurrent ?? 0,
    totalRequests: () => total,
    retrieveCount: (runId) => runs.get(runId)?.retrieves ?? 0,
    streamCount: (responseId) => runs.get(responseId)?.streamRequests ?? 0,
    stats: () => ({ requests: total, rateLimited, perSecond, streams: streamTotal, webhooks: webhooks?.stats() ?? NO_WEBHOOKS }),
    setApiKey: (key) => {
      apiKey = key;
    },
    setRateLimit: (limit) => {
      limiter = limit ? new Limiter(limit) : null;
    },
    setWebhooks: (next) => {
      const sender = next ? new WebhookSender(next) : null;
      webhooks?.close();
      webhooks = sender;
      // responses already going need their timer now that someone waits for their end
      for (const state of runs.values()) if (state.kind === 'response') settle(state);
    },
    droppedWebhooks: () => webhooks?.dropped() ?? [],
    setStreamFaults: (faults) => {
      const next = { ...streamFaults, ...faults };
      checkStreamFaults(next);
      streamFaults = next;
    },
    close: async () => {
      shutdown();
      for (const res of hung) res.destroy();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
    },
  };
}

/** The simulated API's rate limit: a token bucket; `take` says how long until a token. */
class Limiter {
  readonly #ratePerMs: number;
  readonly #burst: number;
  #tokens: number;
  #atMs = Date.now();

  constructor(limit: RateLimit) {
    if (!(limit.requestsPerSecond > 0)) throw new ConfigError('rateLimit.requestsPerSecond must be positive');
    this.#ratePerMs = limit.requestsPerSecond / 1000;
    this.#burst = limit.burst ?? limit.requestsPerSecond;
    this.#tokens = this.#burst;
  }

  /** Takes a token and returns 0, or returns the ms until one is available. */
  take(nowMs: number): number {
    this.#tokens = Math.min(this.#burst, this.#tokens + (nowMs - this.#atMs) * this.#ratePerMs);
    this.#atMs = nowMs;
    if (this.#tokens >= 1) {
      this.#tokens -= 1;
      return 0;
    }
    return Math.max(1, Math.ceil((1 - this.#tokens) / this.#ratePerMs));
  }
}

/** What the handlers read of a request's target. */
type RequestUrl = Pick<URL, 'pathname' | 'searchParams'>;

/** A path of plain segments, no query: nothing for `new URL` to normalise or decode. */
const PLAIN_PATH = /^(?:\/[\w-]+)+$/;
const NO_QUERY = new URLSearchParams();

/** A request's path and query; `new URL` (a few µs a request) only for a target that needs it. */
function requestUrl(target: string): RequestUrl {
  return PLAIN_PATH.test(target) ? { pathname: target, searchParams: NO_QUERY } : new URL(target, 'http://sim');
}

function sendJson(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  sendText(res, status, JSON.stringify(body), headers);
}

function sendText(res: http.ServerResponse, status: number, text: string, headers: Record<string, string>): void {
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers }).end(text);
}

async function readBody(req: http.IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new Error('body too large');
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}
