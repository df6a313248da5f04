export { SinkDispatcher } from './sink.js';
export type { DeliveryContext, Sink, SinkDispatcherOptions, SinkFailure } from './sink.js';
export { StdoutSink } from './stdout.js';
export { FileSink } from './file.js';
export type { FileSinkOptions, FsyncPolicy } from './file.js';
export { WebhookSink, signWebhook, verifyWebhook, webhookKey } from './webhook.js';
export type { WebhookSinkOptions } from './webhook.js';
export { loadModuleSink } from './module.js';
