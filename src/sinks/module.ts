import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { ConfigError } from '../errors.js';
import type { Sink } from './sink.js';

/**
 * Loads a user's sink from a module: its default export is either a `Sink` or a function
 * `(options) => Sink | Promise<Sink>`.
 */
export async function loadModuleSink(modulePath: string, options: Readonly<Record<string, unknown>> = {}): Promise<Sink> {
  let exported: unknown;
  try {
    exported = ((await import(pathToFileURL(path.resolve(modulePath)).href)) as { default?: unknown }).default;
  } catch (error) {
    throw new ConfigError(`cannot load sink module ${modulePath}: ${error instanceof Error ? error.message : String(error)}`);
  }
  const sink = typeof exported === 'function' ? await (exported as (o: unknown) => unknown)(options) : exported;
  if (!isSink(sink)) throw new ConfigError(`sink module ${modulePath} must export default a Sink ({ name, deliver }) or a function returning one`);
  return sink;
}

function isSink(value: unknown): value is Sink {
  return typeof value === 'object' && value !== null && typeof (value as Sink).name === 'string' && typeof (value as Sink).deliver === 'function';
}
