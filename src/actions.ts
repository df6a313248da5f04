import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { BackoffPolicy } from './backoff.js';
import type { PollFailure, PollOutcome } from './client.js';
import { ABORTED } from './client.js';
import { ConfigError } from './errors.js';
import type { WatchErrorDetails } from './events.js';
import type { RunSnapshot, Snapshot } from './resource.js';
import { retryWithBackoff } from './retry.js';

/**
 * One tool call of a run in `requires_action`: a function call to answer (`type: "function"`),
 * or, on Azure, an MCP tool call to approve (`type: "mcp"`, with `name`, `arguments` and
 * `server_label`: the spec's `RequiredMcpToolCall`).
 */
export interface ToolCall {
  readonly id: string;
  readonly type: string;
  readonly function?: { readonly name: string; readonly arguments: string };
  /** MCP calls: the tool's name on its server. */
  readonly name?: string;
  /** MCP calls: the arguments, a JSON document as the model wrote it. */
  readonly arguments?: string;
  /** MCP calls: the label of the MCP server. */
  readonly server_label?: string;
}

/** What a run in `requires_action` asks for: tool outputs, or (Azure's MCP tools) approvals of tool calls. */
export type RequiredActionType = 'submit_tool_outputs' | 'submit_tool_approval';

/** One output to submit: the tool call it answers, and its output (a string, often JSON). */
export interface ToolOutput {
  readonly tool_call_id: string;
  readonly output: string;
}

/**
 * One approval to submit (Azure's `ToolApproval`): the tool call it answers, whether it may run,
 * and headers for the tool's server (e.g. its key). Headers are sent, never put in an event.
 */
export interface ToolApproval {
  readonly tool_call_id: string;
  readonly approve: boolean;
  readonly headers?: Readonly<Record<string, string>>;
}

/** What a tool handler (or an approval handler) gets: the run's tool calls, the run, and the watch's signal. */
export interface RequiresActionContext {
  readonly toolCalls: readonly ToolCall[];
  readonly run: RunSnapshot;
  /** Aborted when the watch ends (aborted, closed, deadline, daemon shutdown): stop the work. */
  readonly signal: AbortSignal;
}

/**
 * Answers a run's tool calls. Must return one output per tool call; they are submitted in one
 * `POST .../submit_tool_outputs`. If it throws (or returns too few outputs), a
 * `run.action_failed` event says so and the run is left for a person: the handler is not
 * called again for the same tool calls.
 */
export type ToolHandler = (context: RequiresActionContext) => Promise<readonly ToolOutput[]> | readonly ToolOutput[];

/**
 * Approves (or not) a run's tool calls when it asks for approvals (`required_action.type:
 * "submit_tool_approval"`, Azure's MCP tools). Must return one approval per tool call; they are
 * submitted in one `POST .../submit_tool_outputs` as `tool_approvals`. If it throws (or returns
 * too few), a `run.action_failed` event says so and the run is left for a person: the handler
 * is not called again for the same tool calls.
 */
export type ToolApprovalHandler = (context: RequiresActionContext) => Promise<readonly ToolApproval[]> | readonly ToolApproval[];

/** The required action of a run in `requires_action` (checked: the snapshot is the server's data); `undefined` for none, or one of another type. */
export function requiredActionOf(snapshot: Snapshot | null): { readonly type: RequiredActionType; readonly calls: ToolCall[] } | undefined {
  const action = snapshot?.required_action;
  if (typeof action !== 'object' || action === null) return undefined;
  const record = action as Record<string, unknown>;
  // the type says which; one without a type (an older server) is read by the field it carries
  const type = record.type === 'submit_tool_outputs' || record.type === 'submit_tool_approval' ? record.type : record.type === undefined && record.submit_tool_outputs !== undefined ? 'submit_tool_outputs' : undefined;
  if (type === undefined) return undefined;
  const calls = (record[type] as { tool_calls?: unknown } | null | undefined)?.tool_calls;
  if (!Array.isArray(calls)) return { type, calls: [] };
  return { type, calls: calls.filter((call): call is ToolCall => typeof call === 'object' && call !== null && typeof (call as { id?: unknown }).id === 'string') };
}

/** Identifies one set of tool calls by their ids: a handler runs once per set. */
export function toolCallsKey(ids: readonly string[]): string {
  return ids.join(',');
}

/** The actions a watch remembers: the last tool-call set handled (its `toolCallsKey`), and whether a cancel was sent. */
export interface ActionMemory {
  readonly handledCalls: string | null;
  readonly cancelRequested: boolean;
}

/** What a handler produced: an answer per call (outputs or approvals), or why not (a one-line message). */
export type HandlerResult<T = ToolOutput> = { readonly ok: true; readonly answers: readonly T[] } | { readonly ok: false; readonly error: WatchErrorDetails };

/**
 * Calls a tool handler and checks it answered every call. Never throws: a throw, a missing
 * output or `signal` aborting first (the handler may ignore it) is an `{ ok: false }` result.
 */
export function callToolHandler(handler: ToolHandler, run: RunSnapshot, calls: readonly ToolCall[], signal: AbortSignal): Promise<HandlerResult<ToolOutput>> {
  return callHandler(() => handler({ toolCalls: calls, run, signal }), calls, signal, 'output', (o) => (typeof o.output === 'string' ? { tool_call_id: o.tool_call_id, output: o.output } : undefined));
}

/** Calls an approval handler and checks it approved or refused every call; never throws, like `callToolHandler`. */
export function callApprovalHandler(handler: ToolApprovalHandler, run: RunSnapshot, calls: readonly ToolCall[], signal: AbortSignal): Promise<HandlerResult<ToolApproval>> {
  return callHandler(() => handler({ toolCalls: calls, run, signal }), calls, signal, 'approval', (a) => {
    if (typeof a.approve !== 'boolean') return undefined;
    if (a.headers === undefined) return { tool_call_id: a.tool_call_id, approve: a.approve };
    const headers = a.headers as unknown;
    // headers go to the server as they are: only strings
    if (typeof headers !== 'object' || headers === null || Object.values(headers).some((value) => typeof value !== 'string')) return undefined;
    return { tool_call_id: a.tool_call_id, approve: a.approve, headers: a.headers };
  });
}

/** Runs a handler until `signal` aborts and keeps, per call, the first well-formed answer (`check`); one missing fails it all. */
async function callHandler<T extends { readonly tool_call_id: string }>(
  invoke: () => Promise<readonly T[]> | readonly T[],
  calls: readonly ToolCall[],
  signal: AbortSignal,
  what: string,
  check: (answer: T) => T | undefined,
): Promise<HandlerResult<T>> {
  try {
    const given = await untilAborted(Promise.resolve().then(invoke), signal);
    if (!Array.isArray(given)) throw new Error(`the handler returned ${typeof given}, not an array of ${what}s`);
    const answers: T[] = [];
    const missing: string[] = [];
    for (const call of calls) {
      const answer = (given as readonly T[]).find((a) => typeof a === 'object' && a !== null && a.tool_call_id === call.id);
      const checked = answer === undefined ? undefined : check(answer);
      if (checked) answers.push(checked);
      else missing.push(call.id);
    }
    if (missing.length > 0) throw new Error(`no ${what} for tool call(s) ${missing.join(', ')}`);
    return { ok: true, answers };
  } catch (error) {
    const message = (error instanceof Error ? error.message : String(error)).replace(/\s+/g, ' ').slice(0, 300);
    return { ok: false, error: { code: 'tool_handler_failed', message } };
  }
}

/** Tries of one action: a transient failure (429, 5xx, network) is retried twice. */
const ACTION_TRIES = 3;

/** Waits between tries of one action: 0.5 s, then 1 s, or the server's `retry-after` up to 5 s. */
const ACTION_BACKOFF: BackoffPolicy = Object.freeze({ baseMs: 500, capMs: 5_000, growth: 2, jitter: 0, maxFloorMs: 5_000 });

/** Carries a retryable outcome through p-retry, which retries on throws only. */
class RetryableOutcome extends Error {
  readonly outcome: PollFailure;
  constructor(outcome: PollFailure) {
    super(outcome.message);
    this.outcome = outcome;
  }
}

/**
 * One POST with up to three tries on transient failures, waiting 0.5 s, then 1 s (or the
 * server's `retry-after`, up to 5 s) in between; `signal` stops the tries and cuts the waits
 * short. Returns the last outcome (an `aborted` one if `signal` aborted before any try).
 */
export async function actWithRetries<T extends Snapshot>(send: () => Promise<PollOutcome<T>>, signal: AbortSignal): Promise<PollOutcome<T>> {
  let last: PollOutcome<T> = ABORTED;
  try {
    return await retryWithBackoff(
      async () => {
        last = await send();
        if (!last.ok && last.retryable) throw new RetryableOutcome(last);
        return last;
      },
      {
        retries: ACTION_TRIES - 1,
        backoff: ACTION_BACKOFF,
        shouldRetry: (error) => error instanceof RetryableOutcome,
        floorMsOf: (error) => (error instanceof RetryableOutcome ? error.outcome.hints.retryAfterMs : undefined),
        signal,
      },
    );
  } catch (error) {
    // out of tries, or aborted (p-retry then rejects with the signal's reason): the last answer stands
    if (error instanceof RetryableOutcome || signal.aborted) return last;
    throw error;
  }
}

/** The details of a failed request, as an `action_failed` event carries them. */
export function errorDetails(failure: PollFailure): WatchErrorDetails {
  return failure.httpStatus === undefined ? { code: failure.code, message: failure.message } : { code: failure.code, message: failure.message, http_status: failure.httpStatus };
}

/** Settles like `promise`, or rejects when `signal` aborts first; the listener is removed either way. */
export function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error instanceof Error ? error : new Error(String(error)));
      },
    );
  });
}

/** The handlers a module gives the daemon: tool outputs (`requires_action` with tool calls) and tool approvals (Azure's MCP tools). */
export interface ToolHandlers {
  readonly onRequiresAction?: ToolHandler;
  readonly onToolApproval?: ToolApprovalHandler;
}

/**
 * Loads the tool handlers from a module (the daemon's `daemon.toolHandler`). Its
 * `createToolHandler(options)` (for setup, e.g. clients) or its default export is the tool
 * handler itself, or an object `{ onRequiresAction?, onToolApproval? }`; a named
 * `onToolApproval` export is the approval handler. At least one handler is needed; throws
 * `ConfigError` otherwise, or when the module cannot be loaded.
 */
export async function loadToolHandlers(modulePath: string, options: Readonly<Record<string, unknown>> = {}): Promise<ToolHandlers> {
  let module: { default?: unknown; createToolHandler?: unknown; onToolApproval?: unknown };
  try {
    module = (await import(pathToFileURL(path.resolve(modulePath)).href)) as typeof module;
  } catch (error) {
    throw new ConfigError(`cannot load tool handler module ${modulePath}: ${error instanceof Error ? error.message : String(error)}`);
  }
  const made = typeof module.createToolHandler === 'function' ? await (module.createToolHandler as (o: unknown) => unknown)(options) : module.default;
  // a function is the tool handler (both are functions, so the factory needs its own name); an object names each
  const given: { onRequiresAction?: unknown; onToolApproval?: unknown } = typeof made === 'function' ? { onRequiresAction: made } : typeof made === 'object' && made !== null ? made : {};
  if (module.onToolApproval !== undefined && given.onToolApproval !== undefined) throw new ConfigError(`tool handler module ${modulePath} gives two tool approval handlers: keep one`);
  const handlers = { onRequiresAction: given.onRequiresAction, onToolApproval: given.onToolApproval ?? module.onToolApproval };
  for (const [name, handler] of Object.entries(handlers)) {
    if (handler !== undefined && typeof handler !== 'function') throw new ConfigError(`tool handler module ${modulePath}: ${name} must be a function ({ toolCalls, run, signal }) => answers`);
  }
  if (handlers.onRequiresAction === undefined && handlers.onToolApproval === undefined) {
    throw new ConfigError(
      `tool handler module ${modulePath} must export default a function ({ toolCalls, run, signal }) => outputs, or export createToolHandler(options) returning one, or give onToolApproval (a named export, or beside onRequiresAction in the object it exports)`,
    );
  }
  return {
    ...(handlers.onRequiresAction === undefined ? {} : { onRequiresAction: handlers.onRequiresAction as ToolHandler }),
    ...(handlers.onToolApproval === undefined ? {} : { onToolApproval: handlers.onToolApproval as ToolApprovalHandler }),
  };
}

/**
 * Loads a tool handler from a module, as `loadToolHandlers` does, when only the tool outputs
 * handler is wanted; throws `ConfigError` when the module gives none.
 */
export async function loadToolHandler(modulePath: string, options: Readonly<Record<string, unknown>> = {}): Promise<ToolHandler> {
  const { onRequiresAction } = await loadToolHandlers(modulePath, options);
  if (!onRequiresAction) throw new ConfigError(`tool handler module ${modulePath} must export default a function ({ toolCalls, run, signal }) => outputs, or export createToolHandler(options) returning one`);
  return onRequiresAction;
}
