// `runwatch/daemon`: the service's pieces, kept out of the main entry so the library stays light
export { Daemon } from './daemon.js';
export type { DaemonSecrets } from './daemon.js';
export { DEFAULT_CONFIG, ENV_ALIASES, loadConfig, validateConfig } from './config.js';
export type { ConfigSources, DaemonConfig } from './config.js';
export { createControlApi, callbackAllowed } from './api.js';
export type { ControlApiDeps, ControlApiOptions, NewWatchInput, WatchView, WatchViewFields } from './api.js';
export { OutboxWorker } from './outbox.js';
export type { DeliveryOutcome, OutboxWorkerOptions } from './outbox.js';
export { SqliteStore } from '../store/sqlite.js';
export type { ActionMemory, EventFilter, NewWatch, PendingDelivery, SinkStats, Store, StoredEvent, StoredWatchEvent, WatchFields, WatchKindName, WatchRecord, WatchState, WatchTarget } from '../store/store.js';
export { RedisStreamSink } from '../sinks/redis-stream.js';
export type { RedisStreamSinkOptions } from '../sinks/redis-stream.js';
