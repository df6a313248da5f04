import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { ConfigError } from './errors.js';
import type { PartialPollPolicy } from './schedule.js';
import { resolvePollPolicy } from './schedule.js';

const ms = z.number().finite().nonnegative();
const interval = z.object({ baseMs: ms.optional(), capMs: ms.optional() }).strict();
const policySchema = z
  .object({
    intervals: z.record(z.string(), interval).optional(),
    growth: z.number().optional(),
    jitter: z.number().optional(),
    minIntervalMs: ms.optional(),
    errorBackoff: z.object({ baseMs: ms.optional(), capMs: ms.optional(), growth: z.number().optional() }).strict().optional(),
    maxRetryAfterMs: ms.optional(),
    maxPollAfterMs: ms.optional(),
  })
  .strict();

/** Formats the first zod issue as `path: message`, naming the setting. */
export function describeIssue(error: z.ZodError, prefix: string): string {
  const issue = error.issues[0];
  if (!issue) return `${prefix}: invalid`;
  const where = issue.path.length > 0 ? `${prefix}.${issue.path.join('.')}` : prefix;
  return `invalid ${where}: ${issue.message}`;
}

/**
 * Parses a polling policy override given as JSON text, or as `@path` to a JSON file, and
 * validates it against the defaults. Throws `ConfigError` naming the bad field.
 */
export function parsePolicyArgument(raw: string, name = '--policy'): PartialPollPolicy {
  let text = raw;
  if (raw.startsWith('@')) {
    try {
      text = readFileSync(raw.slice(1), 'utf8');
    } catch (error) {
      throw new ConfigError(`cannot read ${name} file ${raw.slice(1)}: ${(error as NodeJS.ErrnoException).code ?? 'error'}`);
    }
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new ConfigError(`invalid ${name}: not JSON (pass e.g. '{"jitter":0.5}' or @policy.json)`);
  }
  const parsed = policySchema.safeParse(json);
  if (!parsed.success) throw new ConfigError(describeIssue(parsed.error, name));
  resolvePollPolicy(parsed.data);
  return parsed.data;
}
