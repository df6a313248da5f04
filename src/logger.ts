import { pino } from 'pino';
import type { DestinationStream, Logger, LevelWithSilent } from 'pino';
import { ConfigError } from './errors.js';

/** Log levels accepted by `--log-level` and `LOG_LEVEL`. */
export const LOG_LEVELS: readonly LevelWithSilent[] = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

/** Paths pino censors, whatever a caller logs by mistake. */
export const REDACT_PATHS: readonly string[] = [
  'headers.authorization',
  'headers["x-portkey-api-key"]',
  'headers["x-portkey-virtual-key"]',
  'headers["x-portkey-config"]',
  '*.headers.authorization',
  '*.headers["x-portkey-api-key"]',
  '*.headers["x-portkey-virtual-key"]',
  '*.headers["x-portkey-config"]',
  'credentials',
  '*.credentials',
  'apiKey',
  '*.apiKey',
];

/** Options of `createLogger`. */
export interface LoggerOptions {
  /** Human-readable lines instead of JSON. @default true when stderr is a terminal (and not under CI) */
  readonly pretty?: boolean;
  /**
   * Where the lines go instead of stderr (fd 2), e.g. a stream a test reads back; written
   * synchronously to stderr when omitted.
   */
  readonly destination?: DestinationStream;
}

/**
 * The operational logger: JSON lines on stderr (stdout carries events only), human-readable
 * when stderr is a terminal. Synchronous, so nothing is lost on exit.
 */
export async function createLogger(level: string, options: LoggerOptions = {}): Promise<Logger> {
  if (!LOG_LEVELS.includes(level as LevelWithSilent)) {
    throw new ConfigError(`invalid log level ${JSON.stringify(level)}: use one of ${LOG_LEVELS.join(', ')}`);
  }
  const config = { level, redact: { paths: [...REDACT_PATHS], censor: '[REDACTED]' }, base: { pid: process.pid } };
  if (options.pretty ?? (process.stderr.isTTY && !process.env.CI)) {
    // loaded only for terminals: it is the heavier path and machines read JSON
    const { default: pretty } = await import('pino-pretty');
    return pino(config, pretty({ destination: options.destination ?? 2, sync: true, colorize: true, ignore: 'pid,hostname' }));
  }
  return pino(config, options.destination ?? pino.destination({ fd: 2, sync: true }));
}
