// `npm run demo`: the simulator and a RunWatcher in one process, no keys and no network.
// Events go to stdout as NDJSON (what the CLI and the stdout sink write); a summary to stderr.
import { idFieldsOf } from './events.js';
import { createLogger } from './logger.js';
import { SinkDispatcher } from './sinks/sink.js';
import { StdoutSink } from './sinks/stdout.js';
import type { Sink } from './sinks/sink.js';
import { DEMO_RUNS, startSimulator } from './simulator.js';
import { RunWatcher } from './watcher.js';

const apiKey = 'sk-demo-not-a-real-key';
const sim = await startSimulator({ apiKey, runs: DEMO_RUNS });
const logger = await createLogger(process.env.LOG_LEVEL ?? 'warn');
const watcher = new RunWatcher({ provider: 'openai', baseUrl: sim.baseUrl, credentials: { apiKey }, logger });
// a terminal gets one readable line per event; a pipe gets the NDJSON the CLI writes
const terminalSink: Sink = {
  name: 'terminal',
  deliver: (event) => {
    // an action (tool outputs submitted) leaves the status as it was: name the action instead
    const detail = event.type === 'watch.error' ? `${event.error.code}: ${event.error.message}` : event.from === event.to ? `${event.type.slice(event.type.indexOf('.') + 1)} (${event.to})` : `${event.from ?? '(first seen)'} -> ${event.to}`;
    process.stdout.write(`${event.observed_at.slice(11, 23)}  ${(idFieldsOf(event).at(-1)?.[1] ?? '').padEnd(22)} #${event.seq}  ${detail}\n`);
  },
};
const dispatcher = new SinkDispatcher([process.stdout.isTTY ? terminalSink : new StdoutSink()], { logger });
watcher.on('event', (event) => dispatcher.dispatch(event));

const outcomes = await Promise.all(
  DEMO_RUNS.map(async ({ threadId, runId }) => {
    const started = Date.now();
    try {
      const run = await watcher.watchRun({
        threadId,
        runId,
        watchId: `w_demo_${runId}`,
        // a tool handler answers requires_action; its outputs are submitted and the watch goes on
        onRequiresAction: ({ toolCalls }) => toolCalls.map((call) => ({ tool_call_id: call.id, output: '{"temperature":21}' })),
      }).promise;
      return { runId, result: run.status, ms: Date.now() - started };
    } catch (error) {
      return { runId, result: `error: ${(error as Error).message}`, ms: Date.now() - started };
    }
  }),
);
await watcher.close();
await dispatcher.close();
await sim.close();
process.stderr.write('\nrun                    ended as          after   requests\n');
for (const { runId, result, ms } of outcomes) {
  const requests = sim.requests(runId).length;
  process.stderr.write(`${runId.padEnd(22)} ${result.padEnd(17)} ${`${(ms / 1000).toFixed(1)}s`.padStart(6)} ${String(requests).padStart(10)}\n`);
}
