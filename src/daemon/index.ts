// `runwatch-llm/daemon`: the service's pieces, kept out of the main entry so the library stays light
export { Daemon } from './daemon.js';
export { loadToolHandler, loadToolHandlers } from '../actions.js';
export type { ToolHandlers } from '../actions.js';
export { ListenError, StoreOpenError, StoreUnavailableError, StoreWriteError } from '../errors.js';
export type { DaemonSecrets } from './daemon.js';
export { checkConfig, DEFAULT_CONFIG, ENV_ALIASES, loadConfig, validateConfig } from './config.js';
export type { ConfigCheck, ConfigSources, DaemonConfig } from './config.js';
export { createControlApi, callbackAllowed } from './api.js';
export type { ControlApiDeps, ControlApiOptions, FleetView, NewWatchInput, WatchView, WatchViewFields } from './api.js';
export { LocalEngine, engineSettings } from './engine.js';
export type { Engine, EngineEvents, EngineSettings } from './engine.js';
export { RedisEngine } from './redis-engine.js';
export type { RedisEngineOptions } from './redis-engine.js';
export { ShardedEngine, ShardedOutbox } from './shards.js';
export type { ShardedEngineOptions } from './shards.js';
export { OutboxWorker } from './outbox.js';
export type { DeliveryOutcome, Outbox, OutboxWorkerOptions } from './outbox.js';
export { MemoryStore } from '../store/memory.js';
export { SqliteStore } from '../store/sqlite.js';
export { RedisStore } from '../store/redis.js';
export type { RedisClient } from '../store/redis.js';
export { fleetBudgetKey, RedisKeys, shardPrefix } from '../store/redis-keys.js';
export { formatLogCursor, parseLogCursor, shardOf, ShardedStore } from '../store/sharded.js';
export type { ShardedEvent } from '../store/sharded.js';
export type {
  CommitResult,
  DeliveryLog,
  EventFilter,
  NewWatch,
  PendingDelivery,
  Retention,
  SinkStats,
  StoredEvent,
  StoredProgress,
  StoredWatchEvent,
  WatchChange,
  WatchFields,
  WatchKindName,
  WatchOrder,
  WatchQuery,
  WatchRecord,
  WatchState,
  WatchStore,
  WatchTarget,
} from '../store/store.js';
export { RedisStreamSink } from '../sinks/redis-stream.js';
export type { RedisStreamSinkOptions } from '../sinks/redis-stream.js';
