import { readFileSync } from 'node:fs';
import type { z } from 'zod';
import { ConfigError } from './errors.js';
import type { PartialPollPolicy, SettingIssue } from './policy.js';
import { firstIssue, pollPolicySchema, settingIssues, showValue } from './policy.js';

/**
 * Formats the first zod issue as `invalid PREFIX.PATH: MESSAGE (got VALUE)`, naming the
 * setting and, when the parse reported it (`reportInput: true`), the value.
 */
export function describeIssue(error: z.ZodError, prefix: string): string {
  return describeSettingIssue(firstIssue(error), prefix);
}

/** Formats every zod issue as `describeIssue` does the first: one message per problem. */
export function describeIssues(error: z.ZodError, prefix: string): string[] {
  return settingIssues(error).map((issue) => describeSettingIssue(issue, prefix));
}

function describeSettingIssue(issue: SettingIssue, prefix: string): string {
  const where = [prefix, ...issue.path].join('.');
  return `invalid ${where}: ${issue.message}${issue.got ? ` (got ${showValue(issue.got.value)})` : ''}`;
}

/**
 * Parses a polling policy override given as JSON text, or as `@path` to a JSON file, and
 * validates it with `pollPolicySchema`. Returns the override as given; throws `ConfigError`
 * naming the bad field.
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
  const parsed = pollPolicySchema.safeParse(json, { reportInput: true });
  if (!parsed.success) throw new ConfigError(describeIssue(parsed.error, name));
  // the override as given, now known to be valid: RunWatcher merges it over the defaults
  return json as PartialPollPolicy;
}
