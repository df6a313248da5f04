export { waitForIdleThread, watchResponse, watchRun } from './watch-run.js';
export type { WaitForIdleThreadOptions, WatchResponseCallOptions, WatchRunCallOptions } from './watch-run.js';
export { DEFAULT_DEADLINES, RunWatcher, randomWatchId } from './watcher.js';
export type { PollReport, RunWatcherEvents, RunWatcherOptions, SettledReport, WatchHandle, WatchInfo, RequiresActionContext, ToolCall, ToolHandler, ToolOutput, WatchOptions, WatchResponseOptions, WatchRunOptions, WatchThreadOptions } from './watcher.js';
export { ApiClient, DEFAULT_AZURE_API_VERSION, DEFAULT_BASE_URLS, DEFAULT_CLIENT, PROVIDERS, classifyResponse, parseHints, redactSecrets } from './client.js';
export type { ClientOptions, Credentials, PollClient, PollFailure, PollOutcome, PollSuccess, Provider, RequestContext, ResourceAction } from './client.js';
export { ConfigError, DeliveryError, InvalidIdError, RunwatchError, WatchError } from './errors.js';
export type { ErrorCode } from './errors.js';
export { actionEvent, eventId, isRunEvent, isWatchError } from './events.js';
export type { ActionEventName } from './events.js';
export type { EventEnvelope, ThreadEvent, ThreadTransitionEvent, ThreadWatchErrorEvent, ResponseEvent, ResponseTransitionEvent, ResponseWatchErrorEvent, RunEvent, RunTransitionEvent, RunWatchErrorEvent, WatchErrorDetails, WatchEvent } from './events.js';
export { ID_PATTERN, RESPONSE_KIND, RUN_KIND, TERMINAL_RESPONSE_STATUSES, THREAD_KIND, assertValidId } from './resource.js';
export type { ResourceKind, ResponseRef, ResponseSnapshot, RunRef, RunSnapshot, Snapshot, ThreadRef, ThreadSnapshot } from './resource.js';
export { DEFAULT_POLL_POLICY, deadlineFor, nextDelayMs, planNextStep, resolvePollPolicy } from './schedule.js';
export type { IntervalPolicy, PartialPollPolicy, PollPolicy, ServerHints } from './schedule.js';
export { ACTIVE_RUN_STATUSES, StatusMachine, TERMINAL_RUN_STATUSES, normalizeStatus } from './status.js';
export type { KnownRunStatus, MachineState, Observation, RunStatus, StatusRules } from './status.js';
export { DEFAULT_BUDGET, RequestBudget } from './budget.js';
export type { BudgetOptions } from './budget.js';
export { SinkDispatcher } from './sinks/sink.js';
export type { DeliveryContext, Sink, SinkDispatcherOptions, SinkFailure } from './sinks/sink.js';
export { StdoutSink } from './sinks/stdout.js';
export { FileSink } from './sinks/file.js';
export type { FileSinkOptions, FsyncPolicy } from './sinks/file.js';
export { WebhookSink, signWebhook, verifyWebhook, webhookKey } from './sinks/webhook.js';
export type { WebhookSinkOptions } from './sinks/webhook.js';
export { loadModuleSink } from './sinks/module.js';
// separate entry points, so a watcher does not load what it does not use: 'runwatch/daemon'
// (node:sqlite, prom-client, zod, ioredis; also the Redis stream sink), 'runwatch/simulator' (zod)
