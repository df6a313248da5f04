import type { ResponseSnapshot, RunSnapshot, Snapshot, ThreadSnapshot } from './resource.js';
import type { RunWatcherOptions, WatchHandle, WatchResponseOptions, WatchRunOptions, WatchThreadOptions } from './watcher.js';
import { RunWatcher } from './watcher.js';

/** Options of `watchRun()`: the run, and how to reach and poll it. */
export interface WatchRunCallOptions extends WatchRunOptions, Omit<RunWatcherOptions, 'client'> {}

/**
 * Watches one run until it reaches a terminal status (or one listed in `resolveOn`) and
 * resolves with the last snapshot; `run.status` says which status ended it. Rejects with a
 * `WatchError` whose `code` says why (`run_not_found`, `unauthorized`, `deadline_exceeded`,
 * `aborted`, ...). Every timer, socket and listener is released when it settles.
 *
 * @example
 * const run = await watchRun({
 *   provider: 'openai', credentials: { apiKey: process.env.OPENAI_API_KEY },
 *   threadId: 'thread_abc', runId: 'run_abc',
 *   onEvent: (event) => console.log(event.type),
 * });
 * if (run.status === 'completed') ...
 */
export async function watchRun(options: WatchRunCallOptions): Promise<RunSnapshot> {
  return once(options, (watcher) => watcher.watchRun(options));
}

/** Options of `watchResponse()`: the background response, and how to reach and poll it. */
export interface WatchResponseCallOptions extends WatchResponseOptions, Omit<RunWatcherOptions, 'client'> {}

/**
 * Watches one background response (`GET /responses/{id}`, created with `background: true`)
 * until it is `completed`, `failed`, `cancelled` or `incomplete`, and resolves with the last
 * snapshot. Same engine, policy, events (`response.<status>`) and errors as `watchRun()`.
 *
 * @example
 * const response = await watchResponse({
 *   provider: 'openai', credentials: { apiKey: process.env.OPENAI_API_KEY },
 *   responseId: 'resp_abc',
 * });
 * if (response.status === 'completed') ...
 */
export async function watchResponse(options: WatchResponseCallOptions): Promise<ResponseSnapshot> {
  return once(options, (watcher) => watcher.watchResponse(options));
}

/** Options of `waitForIdleThread()`: the thread, and how to reach and poll it. */
export interface WaitForIdleThreadOptions extends WatchThreadOptions, Omit<RunWatcherOptions, 'client'> {}

/**
 * Waits until a thread has no active run, the fix for "Can't add messages to thread while a
 * run is active". Resolves with `{ status: 'idle', latest_run }`.
 *
 * @example
 * await waitForIdleThread({ provider: 'openai', credentials: { apiKey }, threadId, timeoutMs: 120_000 });
 * await openai.beta.threads.messages.create(threadId, { role: 'user', content: 'next question' });
 */
export async function waitForIdleThread(options: WaitForIdleThreadOptions): Promise<ThreadSnapshot> {
  return once(options, (watcher) => watcher.waitForIdleThread(options));
}

/** One watch on a watcher of its own (one request in flight by default), closed when it settles. */
async function once<T extends Snapshot>(options: Omit<RunWatcherOptions, 'client'>, start: (watcher: RunWatcher) => WatchHandle<T>): Promise<T> {
  const watcher = new RunWatcher({ ...options, maxInFlight: options.maxInFlight ?? 1 });
  try {
    return await start(watcher).promise;
  } finally {
    await watcher.close();
  }
}
