import type { ToolCall } from './actions.js';
import type { ErrorCode } from './errors.js';
import { InvalidIdError } from './errors.js';
import type { StatusRules } from './status.js';
import { normalizeStatus, TERMINAL_RUN_STATUSES } from './status.js';
import type { RunStatus } from './status.js';

/** Ids accepted in URL paths; anything else (e.g. `../assistants`) is rejected before a request. */
export const ID_PATTERN = /^[A-Za-z0-9_-]{1,128}$/;

/**
 * Throws `InvalidIdError` unless `value` is a safe id.
 * @param field - the field's name, used in the message (e.g. `thread_id`)
 */
export function assertValidId(field: string, value: unknown): asserts value is string {
  if (typeof value !== 'string' || !ID_PATTERN.test(value)) {
    const shown = typeof value === 'string' ? JSON.stringify(value.slice(0, 80)) : typeof value;
    throw new InvalidIdError(`invalid ${field} ${shown}: ids must match ${ID_PATTERN.source}`);
  }
}

/** A snapshot as the API returns it: at least an id and a status, everything else kept as is. */
export interface Snapshot {
  readonly id: string;
  readonly status: string;
  readonly [field: string]: unknown;
}

/** A run object (`GET /threads/{thread_id}/runs/{run_id}`); unknown fields are kept. */
export interface RunSnapshot extends Snapshot {
  readonly object?: 'thread.run';
  readonly thread_id?: string;
  readonly status: RunStatus;
  readonly created_at?: number;
  /** Unix seconds after which the run expires; `null` once it is terminal. */
  readonly expires_at?: number | null;
  /**
   * What a run in `requires_action` waits for: tool outputs, or (Azure's MCP tools, the spec's
   * `SubmitToolApprovalAction`) approvals of tool calls.
   */
  readonly required_action?:
    | { readonly type: 'submit_tool_outputs'; readonly submit_tool_outputs: { readonly tool_calls: readonly ToolCall[] } }
    | { readonly type: 'submit_tool_approval'; readonly submit_tool_approval: { readonly tool_calls: readonly ToolCall[] } }
    | null;
  readonly last_error?: { readonly code: string; readonly message: string } | null;
}

/** Identifies one run. */
export interface RunRef {
  readonly thread_id: string;
  readonly run_id: string;
}

/**
 * What the engine needs to know about a kind of watched resource. The status machine,
 * scheduler, client and sinks are shared; a kind is only this description.
 */
export interface ResourceKind<TRef extends object, TSnapshot extends Snapshot> {
  /** Short name, e.g. `run`. */
  readonly name: string;
  /** Prefix of transition event types: `run` gives `run.completed`. */
  readonly eventPrefix: string;
  /** The event field that carries the snapshot, e.g. `run`. */
  readonly snapshotField: string;
  /** Id fields copied into every event, in order, e.g. `thread_id`, `run_id`. */
  readonly idFields: ReadonlyArray<keyof TRef & string>;
  /** The status rules (terminal set, stale statuses). */
  readonly rules: StatusRules;
  /** Error code for an HTTP 404. */
  readonly notFoundCode: ErrorCode;
  /** Path of the resource below the base URL (ids already validated). */
  path(ref: TRef): string;
  /** Validates ids; throws `InvalidIdError`. */
  validate(ref: TRef): void;
  /** Returns the snapshot when `body` is one, with its status normalised; else `undefined`. */
  parseSnapshot(body: unknown): TSnapshot | undefined;
  /** The resource's own expiry, epoch milliseconds, when the snapshot has one. */
  expiresAtMs(snapshot: TSnapshot): number | undefined;
  /**
   * Headers every request for this kind carries on OpenAI-compatible providers (`openai`,
   * `portkey`), before the user's own, e.g. `openai-beta`; Azure's API gets none of them.
   */
  readonly requestHeaders: Readonly<Record<string, string>>;
  /** Largest answer body read unless `maxResponseBytes` says otherwise. */
  readonly maxResponseBytes: number;
}

/** The body cap of runs and threads: a run object is a few KiB; more is a proxy's page gone wrong. */
const RUN_MAX_RESPONSE_BYTES = 8 * 1024 * 1024;

/** Parses `{ id, status, ... }` and normalises the status; shared by every kind. */
export function parseSnapshotBase(body: unknown, object: string): Snapshot | undefined {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return undefined;
  const record = body as Record<string, unknown>;
  if (typeof record.id !== 'string' || record.id === '') return undefined;
  if (record.object !== undefined && record.object !== object) return undefined;
  const status = normalizeStatus(record.status);
  if (status === undefined) return undefined;
  return status === record.status ? (record as Snapshot) : ({ ...record, status } as Snapshot);
}

/** The Assistants-style run: `GET /threads/{thread_id}/runs/{run_id}`, events `run.<status>`. */
export const RUN_KIND: ResourceKind<RunRef, RunSnapshot> = Object.freeze<ResourceKind<RunRef, RunSnapshot>>({
  name: 'run',
  eventPrefix: 'run',
  snapshotField: 'run',
  idFields: ['thread_id', 'run_id'],
  rules: {
    terminal: new Set<string>(TERMINAL_RUN_STATUSES),
    staleAfter: new Map<string, ReadonlySet<string>>([
      // after tool outputs a run goes requires_action -> queued, but never in_progress -> queued
      ['in_progress', new Set(['queued'])],
      ['cancelling', new Set(['queued', 'in_progress', 'requires_action'])],
    ]),
  },
  notFoundCode: 'run_not_found',
  // OpenAI's runs endpoints require it (also through Portkey); Azure's spec and SDK send none, so the client leaves it out there
  requestHeaders: Object.freeze({ 'openai-beta': 'assistants=v2' }),
  maxResponseBytes: RUN_MAX_RESPONSE_BYTES,
  path: (ref: RunRef) => `threads/${ref.thread_id}/runs/${ref.run_id}`,
  validate(ref: RunRef): void {
    assertValidId('thread_id', ref.thread_id);
    assertValidId('run_id', ref.run_id);
  },
  parseSnapshot: (body: unknown) => parseSnapshotBase(body, 'thread.run'),
  expiresAtMs(snapshot: RunSnapshot): number | undefined {
    const expiresAt = snapshot.expires_at;
    return typeof expiresAt === 'number' && Number.isFinite(expiresAt) && expiresAt > 0 ? expiresAt * 1000 : undefined;
  },
});

/** Statuses after which a background response never changes. */
export const TERMINAL_RESPONSE_STATUSES = ['completed', 'failed', 'cancelled', 'incomplete'] as const;

/** A response object (`GET /responses/{response_id}`, background mode); unknown fields are kept. */
export interface ResponseSnapshot extends Snapshot {
  readonly object?: 'response';
  /** `queued`, `in_progress`, then one of `TERMINAL_RESPONSE_STATUSES` (others handled as unknown). */
  readonly status: string;
  readonly background?: boolean | null;
  readonly created_at?: number;
  readonly error?: { readonly code: string; readonly message: string } | null;
  readonly incomplete_details?: { readonly reason: string } | null;
  readonly output?: readonly unknown[];
}

/** Identifies one background response. */
export interface ResponseRef {
  readonly response_id: string;
}

/** A background response: `GET /responses/{response_id}`, events `response.<status>`. */
export const RESPONSE_KIND: ResourceKind<ResponseRef, ResponseSnapshot> = Object.freeze<ResourceKind<ResponseRef, ResponseSnapshot>>({
  name: 'response',
  eventPrefix: 'response',
  snapshotField: 'response',
  idFields: ['response_id'],
  rules: {
    terminal: new Set<string>(TERMINAL_RESPONSE_STATUSES),
    staleAfter: new Map<string, ReadonlySet<string>>([['in_progress', new Set(['queued'])]]),
    // OpenAI's background-mode guide: poll while queued or in_progress; any other status is final
    active: new Set(['queued', 'in_progress']),
  },
  notFoundCode: 'response_not_found',
  requestHeaders: Object.freeze({}),
  // a background response carries its whole output: base64 images exceed 8 MiB
  maxResponseBytes: 64 * 1024 * 1024,
  path: (ref: ResponseRef) => `responses/${ref.response_id}`,
  validate(ref: ResponseRef): void {
    assertValidId('response_id', ref.response_id);
  },
  parseSnapshot: (body: unknown) => parseSnapshotBase(body, 'response'),
  // a background response has no expires_at: the watch's timeout (or defaultTimeoutMs) bounds it
  expiresAtMs: () => undefined,
});

/** Run statuses during which a thread takes no new message or run. */
const ACTIVE_RUN = new Set(['queued', 'in_progress', 'requires_action', 'cancelling']);

/**
 * A thread as the thread guard sees it: `busy` while its latest run is active, `idle`
 * otherwise (no run, or the latest one ended). `latest_run` is that run, if any.
 */
export interface ThreadSnapshot extends Snapshot {
  readonly status: 'busy' | 'idle';
  readonly latest_run: RunSnapshot | null;
}

/** Identifies one thread. */
export interface ThreadRef {
  readonly thread_id: string;
}

/**
 * The thread guard: `GET /threads/{thread_id}/runs?limit=1` (newest first) until the latest
 * run is no longer active; events `thread.busy` and `thread.idle`. The list is OpenAI's
 * `{ object: "list", data, ... }` or Azure's `{ data, last_id, has_more }`.
 */
export const THREAD_KIND: ResourceKind<ThreadRef, ThreadSnapshot> = Object.freeze<ResourceKind<ThreadRef, ThreadSnapshot>>({
  name: 'thread',
  eventPrefix: 'thread',
  snapshotField: 'thread',
  idFields: ['thread_id'],
  rules: { terminal: new Set(['idle']), staleAfter: new Map() },
  notFoundCode: 'thread_not_found',
  requestHeaders: RUN_KIND.requestHeaders,
  maxResponseBytes: RUN_MAX_RESPONSE_BYTES,
  path: (ref: ThreadRef) => `threads/${ref.thread_id}/runs?limit=1&order=desc`,
  validate(ref: ThreadRef): void {
    assertValidId('thread_id', ref.thread_id);
  },
  parseSnapshot(body: unknown): ThreadSnapshot | undefined {
    if (typeof body !== 'object' || body === null || Array.isArray(body)) return undefined;
    // OpenAI says `object: "list"`; Azure's Runs_ListRuns answers { data, last_id, has_more } without it
    const { object, data } = body as { object?: unknown; data?: unknown };
    if ((object !== undefined && object !== 'list') || !Array.isArray(data)) return undefined;
    const latest = data.length > 0 ? RUN_KIND.parseSnapshot(data[0]) : undefined;
    if (data.length > 0 && !latest) return undefined;
    const busy = latest !== undefined && ACTIVE_RUN.has(latest.status);
    return { id: latest?.thread_id ?? 'thread', status: busy ? 'busy' : 'idle', latest_run: latest ?? null };
  },
  expiresAtMs: () => undefined,
});
