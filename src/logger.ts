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
  /** One human-readable line per entry instead of JSON. @default true when stderr is a terminal (and not under CI) */
  readonly pretty?: boolean;
  /** Colours in pretty lines. @default true unless `NO_COLOR` is set (to anything but an empty string) */
  readonly color?: boolean;
  /**
   * Where the lines go instead of stderr (fd 2), e.g. a stream a test reads back; written
   * synchronously to stderr when omitted.
   */
  readonly destination?: DestinationStream;
}

/**
 * The operational logger: JSON lines on stderr (stdout carries events only), one human-readable
 * line per entry when stderr is a terminal. Synchronous, so nothing is lost on exit.
 */
export async function createLogger(level: string, options: LoggerOptions = {}): Promise<Logger> {
  if (!LOG_LEVELS.includes(level as LevelWithSilent)) {
    throw new ConfigError(`invalid log level ${JSON.stringify(level)}: use one of ${LOG_LEVELS.join(', ')}`);
  }
  const config = { level, redact: { paths: [...REDACT_PATHS], censor: '[REDACTED]' }, base: { pid: process.pid } };
  if (options.pretty ?? (process.stderr.isTTY && !process.env.CI)) {
    // loaded only for terminals: it is the heavier path and machines read JSON
    const { prettyFactory } = (await import('pino-pretty')).default;
    // no error-like keys: pino-pretty would print those on lines of their own, even with singleLine
    const format = prettyFactory({ colorize: options.color ?? !process.env.NO_COLOR, singleLine: true, errorLikeObjectKeys: [], translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' });
    const out = options.destination ?? { write: (text: string) => void process.stderr.write(text) };
    return pino(config, { write: (line: string) => out.write(format(oneLineError(line))) });
  }
  return pino(config, options.destination ?? pino.destination({ fd: 2, sync: true }));
}

/** A log entry whose `err` is reduced to `Type: message`: a stack does not fit on one line (JSON logs keep it). */
function oneLineError(line: string): string | Record<string, unknown> {
  if (!line.includes('"err":{')) return line;
  const entry = JSON.parse(line) as Record<string, unknown>;
  const err = entry.err as { type?: unknown; message?: unknown } | null;
  if (typeof err === 'object' && err !== null) entry.err = `${typeof err.type === 'string' ? err.type : 'Error'}: ${String(err.message)}`;
  return entry;
}
