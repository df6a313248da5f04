// The daemon's OpenTelemetry export: an SDK and an OTLP exporter, loaded only when the
// environment asks for them (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT),
// so neither the library nor a daemon without it pays their memory.
import type * as SdkTrace from '@opentelemetry/sdk-trace';
import type { TextMapPropagator } from '@opentelemetry/api';
import type { Logger } from 'pino';
import { ConfigError } from '../errors.js';
import { VERSION } from '../version.js';

/** The service name spans are exported under when neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES names one. */
export const DEFAULT_SERVICE_NAME = 'runwatch';

/** What the environment asks of the export, checked before anything is loaded. */
export interface TelemetrySettings {
  /** Where spans go: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as is, else OTEL_EXPORTER_OTLP_ENDPOINT + `/v1/traces`. */
  readonly url: string;
  /** OTEL_TRACES_SAMPLER (and its argument). */
  readonly sampler: { readonly name: string; readonly ratio: number };
  /** OTEL_PROPAGATORS: `tracecontext`, `baggage`, or none. */
  readonly propagators: readonly ('tracecontext' | 'baggage')[];
  /** OTEL_BSP_*: the batch span processor's limits (the SDK's defaults where unset). */
  readonly batch: { readonly scheduledDelayMillis?: number; readonly maxQueueSize?: number; readonly maxExportBatchSize?: number; readonly exportTimeoutMillis?: number };
}

/** A running export: flushes and stops at the daemon's shutdown. */
export interface DaemonTelemetry {
  readonly settings: TelemetrySettings;
  /** Exports the spans still buffered (within `timeoutMs`), then unregisters the SDK. Idempotent. */
  shutdown(timeoutMs: number): Promise<void>;
}

const SAMPLERS = ['always_on', 'always_off', 'traceidratio', 'parentbased_always_on', 'parentbased_always_off', 'parentbased_traceidratio'];

/**
 * Reads OpenTelemetry's environment variables: `undefined` when no OTLP endpoint is set (or
 * OTEL_SDK_DISABLED=true, or OTEL_TRACES_EXPORTER=none). Throws `ConfigError` for what
 * runwatch cannot do (another exporter or protocol, an unknown sampler or propagator, a bad URL).
 */
export function telemetrySettings(env: NodeJS.ProcessEnv): TelemetrySettings | undefined {
  const value = (name: string): string | undefined => {
    const raw = env[name]?.trim();
    return raw === undefined || raw === '' ? undefined : raw;
  };
  if (value('OTEL_SDK_DISABLED')?.toLowerCase() === 'true') return undefined;
  const exporters = list(value('OTEL_TRACES_EXPORTER') ?? 'otlp');
  if (exporters.includes('none')) return undefined;
  const specific = value('OTEL_EXPORTER_OTLP_TRACES_ENDPOINT');
  const general = value('OTEL_EXPORTER_OTLP_ENDPOINT');
  if (specific === undefined && general === undefined) return undefined;
  const other = exporters.find((name) => name !== 'otlp');
  if (other) throw new ConfigError(`OTEL_TRACES_EXPORTER ${JSON.stringify(other)} is not supported: runwatch exports traces over OTLP only (otlp or none)`);
  const protocol = value('OTEL_EXPORTER_OTLP_TRACES_PROTOCOL') ?? value('OTEL_EXPORTER_OTLP_PROTOCOL') ?? 'http/protobuf';
  if (protocol !== 'http/protobuf') throw new ConfigError(`OTEL_EXPORTER_OTLP_PROTOCOL ${JSON.stringify(protocol)} is not supported: runwatch exports http/protobuf (a collector's port 4318)`);
  const url = specific ?? `${general!.replace(/\/+$/, '')}/v1/traces`;
  let parsed: URL | undefined;
  try {
    parsed = new URL(url);
  } catch {
    parsed = undefined;
  }
  if (!parsed || (parsed.protocol !== 'http:' && parsed.protocol !== 'https:')) {
    throw new ConfigError(`invalid ${specific === undefined ? 'OTEL_EXPORTER_OTLP_ENDPOINT' : 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'}: expected an http(s) URL such as http://collector:4318`);
  }
  const samplerName = (value('OTEL_TRACES_SAMPLER') ?? 'parentbased_always_on').toLowerCase();
  if (!SAMPLERS.includes(samplerName)) throw new ConfigError(`OTEL_TRACES_SAMPLER ${JSON.stringify(samplerName)} is not supported: use ${SAMPLERS.join(', ')}`);
  const arg = value('OTEL_TRACES_SAMPLER_ARG');
  const ratio = arg === undefined ? 1 : Number(arg);
  if (!(ratio >= 0 && ratio <= 1)) throw new ConfigError(`invalid OTEL_TRACES_SAMPLER_ARG ${JSON.stringify(arg)}: expected a ratio between 0 and 1`);
  const propagators = list(value('OTEL_PROPAGATORS') ?? 'tracecontext,baggage').filter((name) => name !== 'none');
  const unknown = propagators.find((name) => name !== 'tracecontext' && name !== 'baggage');
  if (unknown) throw new ConfigError(`OTEL_PROPAGATORS ${JSON.stringify(unknown)} is not supported: use tracecontext, baggage or none`);
  const batch: Record<string, number> = {};
  for (const [name, key] of [
    ['OTEL_BSP_SCHEDULE_DELAY', 'scheduledDelayMillis'],
    ['OTEL_BSP_MAX_QUEUE_SIZE', 'maxQueueSize'],
    ['OTEL_BSP_MAX_EXPORT_BATCH_SIZE', 'maxExportBatchSize'],
    ['OTEL_BSP_EXPORT_TIMEOUT', 'exportTimeoutMillis'],
  ] as const) {
    const raw = value(name);
    if (raw === undefined) continue;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < 1) throw new ConfigError(`invalid ${name} ${JSON.stringify(raw)}: expected a positive integer`);
    batch[key] = n;
  }
  return { url, sampler: { name: samplerName, ratio }, propagators: propagators as TelemetrySettings['propagators'], batch };
}

/**
 * Starts exporting spans when the environment asks for it (see `telemetrySettings`): loads the
 * SDK and the OTLP exporter, registers the tracer provider and the propagators globally, and
 * sends OpenTelemetry's own warnings to the log. The exporter reads its other settings
 * (OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT, _COMPRESSION, certificates) from the process
 * environment. Returns `undefined` when nothing is exported.
 */
export async function startTelemetry(env: NodeJS.ProcessEnv, logger: Logger): Promise<DaemonTelemetry | undefined> {
  const settings = telemetrySettings(env);
  if (!settings) return undefined;
  const [{ diag, DiagLogLevel, propagation, trace }, sdk, { OTLPTraceExporter }, resources, core] = await Promise.all([
    import('@opentelemetry/api'),
    import('@opentelemetry/sdk-trace'),
    import('@opentelemetry/exporter-trace-otlp-proto'),
    import('@opentelemetry/resources'),
    import('@opentelemetry/core'),
  ]);
  diag.setLogger(
    {
      error: (message) => logger.warn({ otel: message }, 'OpenTelemetry error'),
      warn: (message) => logger.warn({ otel: message }, 'OpenTelemetry warning'),
      info: () => undefined,
      debug: () => undefined,
      verbose: () => undefined,
    },
    { logLevel: DiagLogLevel.WARN, suppressOverrideMessage: true },
  );
  // lowest precedence first: runwatch's names, the host, then OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME
  const resource = resources
    .defaultResource()
    .merge(resources.resourceFromAttributes({ 'service.name': DEFAULT_SERVICE_NAME, 'service.version': VERSION }))
    .merge(resources.detectResources({ detectors: [resources.hostDetector, resources.resourceAttributesEnvDetector, resources.serviceNameEnvDetector] }));
  const provider = new sdk.TracerProvider({
    resource,
    sampler: sampler(sdk, settings.sampler),
    spanProcessors: [new sdk.BatchSpanProcessor({ exporter: new OTLPTraceExporter({ url: settings.url }), ...settings.batch })],
  });
  if (!trace.setGlobalTracerProvider(provider)) {
    // the process embedding the daemon registered its own: its spans go where it sends them
    logger.warn('a tracer provider is already registered: runwatch uses it and exports nothing of its own');
    await provider.shutdown();
    return undefined;
  }
  const chosen: TextMapPropagator[] = settings.propagators.map((name) => (name === 'tracecontext' ? new core.W3CTraceContextPropagator() : new core.W3CBaggagePropagator()));
  propagation.setGlobalPropagator(new core.CompositePropagator({ propagators: chosen }));
  logger.info({ endpoint: printable(settings.url), sampler: settings.sampler.name, propagators: settings.propagators }, 'exporting traces over OTLP');
  let stopped: Promise<void> | undefined;
  return {
    settings,
    shutdown: (timeoutMs) =>
      (stopped ??= (async () => {
        let timer: NodeJS.Timeout | undefined;
        try {
          await Promise.race([provider.shutdown(), new Promise<void>((resolve) => (timer = setTimeout(resolve, Math.max(1, timeoutMs))))]);
        } finally {
          clearTimeout(timer);
          trace.disable();
          propagation.disable();
          diag.disable();
        }
      })()),
  };
}

function sampler(sdk: typeof SdkTrace, { name, ratio }: TelemetrySettings['sampler']): SdkTrace.Sampler {
  const root = name.endsWith('always_off') ? new sdk.AlwaysOffSampler() : name.endsWith('traceidratio') ? new sdk.TraceIdRatioBasedSampler(ratio) : new sdk.AlwaysOnSampler();
  return name.startsWith('parentbased_') ? new sdk.ParentBasedSampler({ root }) : root;
}

/** A comma-separated list, lower-cased, without blanks. */
function list(raw: string): string[] {
  return raw
    .split(',')
    .map((name) => name.trim().toLowerCase())
    .filter((name) => name !== '');
}

/** The endpoint as the log may show it: no user info, no query. */
function printable(url: string): string {
  const parsed = new URL(url);
  return `${parsed.origin}${parsed.pathname}`;
}
