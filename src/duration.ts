import { ConfigError } from './errors.js';

const UNITS_MS: Readonly<Record<string, number>> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 };

/**
 * Parses a duration: plain milliseconds (`1500`) or a number with a unit (`500ms`, `30s`,
 * `10m`, `1.5h`). Throws `ConfigError` naming `name` and the bad value.
 */
export function parseDurationMs(name: string, raw: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(raw);
  const value = match ? Number(match[1]) * (UNITS_MS[match[2] ?? 'ms'] ?? 1) : NaN;
  if (!Number.isFinite(value) || value <= 0 || value > 2 ** 31 - 1) {
    throw new ConfigError(`invalid ${name} ${JSON.stringify(raw)}: use milliseconds or a number with ms, s, m or h (e.g. 30s, 10m)`);
  }
  return Math.round(value);
}
