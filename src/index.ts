// The library's public face: what a user calls, and the types of what it passes and gets back.
// The README's "Public API" section lists the values and why each is here; a test keeps the two equal.
// Separate entry points keep a watcher light: 'runwatch-llm/daemon' (the service: stores, engines,
// config; node:sqlite, prom-client, zod, ioredis) and 'runwatch-llm/simulator'; the policy schema
// (zod) is loaded on the first policy override, never by this file.
export { waitForIdleThread, watchResponse, watchRun } from './watch-run.js';
export type { WaitForIdleThreadOptions, WatchResponseCallOptions, WatchRunCallOptions } from './watch-run.js';
export { RunWatcher } from './watcher.js';
export type { PollReport, PushMode, RunWatcherEvents, RunWatcherOptions, SettledReport, WatchHandle, WatchInfo, RequiresActionContext, ToolApproval, ToolApprovalHandler, ToolCall, ToolHandler, ToolOutput, WatchOptions, WatchResponseOptions, WatchRunOptions, WatchThreadOptions } from './watcher.js';
export { ApiClient } from './client.js';
export type { ClientOptions, Credentials, PollClient, PollFailure, PollOutcome, PollSuccess, Provider, RequestContext, ResourceAction, StreamOpening } from './client.js';
export { ConfigError, DeliveryError, InvalidIdError, RunwatchError, WatchError } from './errors.js';
export type { ErrorCode } from './errors.js';
export { isResponseEvent, isRunEvent, isWatchError } from './events.js';
export type { EventEnvelope, ThreadEvent, ThreadTransitionEvent, ThreadWatchErrorEvent, ResponseEvent, ResponseTransitionEvent, ResponseWatchErrorEvent, RunEvent, RunTransitionEvent, RunWatchErrorEvent, WatchErrorDetails, WatchEvent } from './events.js';
export { TERMINAL_RESPONSE_STATUSES } from './resource.js';
export type { ResourceKind, ResponseRef, ResponseSnapshot, RunRef, RunSnapshot, Snapshot, ThreadRef, ThreadSnapshot } from './resource.js';
export { ACTIVE_RUN_STATUSES, TERMINAL_RUN_STATUSES } from './status.js';
export type { KnownRunStatus, RunStatus } from './status.js';
export { DEFAULT_POLL_POLICY } from './schedule.js';
export type { IntervalPolicy, PartialPollPolicy, PollPolicy, SafetyNet } from './schedule.js';
export type { StreamOptions } from './stream.js';
export type { BudgetOptions } from './budget.js';
export type { CommitPort, CommitResult, WatchChange, WatchState } from './driver.js';
export type { Progress, StoredProgress } from './step.js';
export { SinkDispatcher } from './sinks/sink.js';
export type { DeliveryContext, Sink, SinkDispatcherOptions, SinkFailure } from './sinks/sink.js';
export { StdoutSink } from './sinks/stdout.js';
export { FileSink } from './sinks/file.js';
export type { FileSinkOptions, FsyncPolicy } from './sinks/file.js';
export { WebhookSink } from './sinks/webhook.js';
export { verifyWebhook } from './standard-webhooks.js';
export { OpenAIHookReceiver } from './hooks.js';
export type { HookAnswer, HookDeps, HookOutcome } from './hooks.js';
export type { WebhookSinkOptions } from './sinks/webhook.js';
