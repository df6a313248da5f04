export { SinkDispatcher } from './sink.js';
export type { Sink, SinkDispatcherOptions, SinkFailure } from './sink.js';
export { StdoutSink } from './stdout.js';
