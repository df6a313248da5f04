import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import type { CONNECTION_FLAGS, connection } from './cli.js';
import { ApiClient } from './client.js';
import type { ErrorCode } from './errors.js';
import { ConfigError } from './errors.js';
import type { RunRef } from './resource.js';
import { RUN_KIND } from './resource.js';

/** What `runwatch submit-tool-outputs` borrows from the CLI: the connection flags of `runwatch cancel`, how they become client options, and the hints per error code. */
export interface ToolOutputsDeps {
  readonly flags: typeof CONNECTION_FLAGS;
  readonly connection: typeof connection;
  readonly hints: Partial<Record<ErrorCode, string>>;
}

/** One entry of `tool_outputs`. */
export interface ToolOutput {
  readonly tool_call_id: string;
  readonly output: string;
}

export const SUBMIT_TOOL_OUTPUTS_HELP = `Usage: runwatch submit-tool-outputs <thread_id> <run_id> --output CALL_ID=VALUE ... [options]

Answers a run waiting at requires_action (runwatch watch --until requires_action exits 10; its
last event lists the tool calls): POSTs {"tool_outputs": [{"tool_call_id", "output"}, ...]}
to {base-url}/threads/{thread_id}/runs/{run_id}/submit_tool_outputs, directly at the provider,
and prints the run it answers with as one JSON line. Follow it with runwatch watch.
The API wants an output for every tool call of the run, in one submission.

Options:
  --output CALL_ID=VALUE      the output of one tool call, repeatable
  --output-file CALL_ID=@PATH the output of one tool call: the file's content, as is; repeatable
  --provider, --base-url, --api-version, --header, --portkey-provider, --request-timeout:
                              as for runwatch watch (and the same secrets: PORTKEY_API_KEY,
                              OPENAI_API_KEY, AZURE_AI_TOKEN, each also as <NAME>_FILE)
  -h, --help                  show this help

Exit codes: 0 accepted, 2 refused (e.g. the run is not at requires_action, a tool call has no
output, not found, unauthorized) or the server could not be reached, 64 usage.
`;

/** Parses `CALL_ID=...` of `--output` / `--output-file`. */
function splitPair(flag: string, pair: string, example: string): [string, string] {
  const eq = pair.indexOf('=');
  if (eq <= 0) throw new ConfigError(`invalid ${flag} ${JSON.stringify(pair.slice(0, 40))}: use ${example}`);
  return [pair.slice(0, eq), pair.slice(eq + 1)];
}

/**
 * The `tool_outputs` of `--output CALL_ID=VALUE` and `--output-file CALL_ID=@PATH` flags; throws
 * `ConfigError` on a malformed pair, an unreadable file, a call id given twice, or none at all.
 */
export function toolOutputsFrom(inline: readonly string[], files: readonly string[]): ToolOutput[] {
  const outputs: ToolOutput[] = [];
  const add = (id: string, output: string): void => {
    if (outputs.some((o) => o.tool_call_id === id)) throw new ConfigError(`tool call ${JSON.stringify(id)} given twice: one output per call`);
    outputs.push({ tool_call_id: id, output });
  };
  for (const pair of inline) add(...splitPair('--output', pair, 'CALL_ID=VALUE, e.g. call_abc={"temp":21}'));
  for (const pair of files) {
    const [id, ref] = splitPair('--output-file', pair, 'CALL_ID=@PATH, e.g. call_abc=@out.json');
    // "@" marks the path as in curl's -d @file; a path without it is taken as is
    const file = ref.startsWith('@') ? ref.slice(1) : ref;
    if (file === '') throw new ConfigError(`--output-file for ${JSON.stringify(id)} names no file: use CALL_ID=@PATH`);
    let content: string;
    try {
      content = readFileSync(file, 'utf8');
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? 'error';
      throw new ConfigError(`cannot read --output-file ${file} for ${JSON.stringify(id)} (${code}): point it at a readable file`);
    }
    add(id, content);
  }
  if (outputs.length === 0) throw new ConfigError('no tool outputs: give --output CALL_ID=VALUE (or --output-file CALL_ID=@PATH) for every tool call of the run');
  return outputs;
}

/** What a 400 on a submission usually means. */
const BAD_REQUEST_HINT = 'the run must be at requires_action and every tool call needs an output: runwatch watch --until requires_action lists them';

/** Writes the one-line error and returns the exit code. */
function fail(code: number, message: string): number {
  process.stderr.write(`runwatch: ${message}\n`);
  return code;
}

/** `runwatch submit-tool-outputs`: exit 0 accepted, 2 refused, 64 usage. */
export async function submitToolOutputsCommand(args: string[], env: NodeJS.ProcessEnv, deps: ToolOutputsDeps): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { ...deps.flags, output: { type: 'string', multiple: true, default: [] }, 'output-file': { type: 'string', multiple: true, default: [] } },
  });
  if (values.help) {
    process.stdout.write(SUBMIT_TOOL_OUTPUTS_HELP);
    return 0;
  }
  if (positionals.length !== 2) throw new ConfigError(`expected <thread_id> <run_id>, got ${positionals.length} argument(s)`);
  const ref: RunRef = { thread_id: positionals[0]!, run_id: positionals[1]! };
  try {
    RUN_KIND.validate(ref);
  } catch (error) {
    throw new ConfigError(error instanceof Error ? error.message : String(error));
  }
  const tool_outputs = toolOutputsFrom(values.output, values['output-file']);
  const client = new ApiClient(deps.connection(values, env));
  try {
    const outcome = await client.act(RUN_KIND, ref, 'submit_tool_outputs', { tool_outputs }, { watchId: 'submit-tool-outputs' });
    if (!outcome.ok) {
      const hint = outcome.code === 'bad_request' ? BAD_REQUEST_HINT : deps.hints[outcome.code];
      return fail(2, `tool outputs refused: ${outcome.message} (${outcome.code})${hint ? `; ${hint}` : ''}`);
    }
    process.stdout.write(`${JSON.stringify(outcome.snapshot)}\n`);
    return 0;
  } finally {
    client.close();
  }
}
