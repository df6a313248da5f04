import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { expect } from 'vitest';
// the daemon delivers run events (its store holds run watches)
import type { RunEvent } from '../src/events.js';
import type { SimulatedRun } from '../src/simulator.js';
import { TERMINAL_RUN_STATUSES } from '../src/status.js';
import { verifyWebhook } from '../src/standard-webhooks.js';

/** A webhook delivery as the receiver saw it. */
export interface Received {
  readonly id: string;
  readonly body: string;
  readonly event: RunEvent;
  readonly signatureValid: boolean;
  readonly headers: http.IncomingHttpHeaders;
  /** When it arrived (epoch ms). */
  readonly atMs: number;
}

/** A webhook receiver on 127.0.0.1 that checks Standard Webhooks signatures. */
export interface Receiver {
  readonly url: string;
  readonly received: Received[];
  /** Every request, answered 2xx or not. */
  attempts: number;
  /** The event of every request, answered 2xx or not, in arrival order. */
  readonly tried: RunEvent[];
  /** What to answer: 200 by default. */
  answer: number;
  /** Resolves when `predicate` holds for what was received so far. */
  waitFor(predicate: (received: readonly Received[]) => boolean, timeoutMs?: number): Promise<void>;
  /** Resolves when `check` holds, tried after every request. */
  until(check: () => boolean, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

/** Starts a receiver; requests are acknowledged with `receiver.answer`. */
export async function startReceiver(secret: string): Promise<Receiver> {
  const waiters = new Set<() => void>();
  const receiver: Receiver = {
    url: '',
    received: [],
    attempts: 0,
    tried: [],
    answer: 200,
    waitFor: (predicate, timeoutMs) => receiver.until(() => predicate(receiver.received), timeoutMs),
    until(condition, timeoutMs = 60_000) {
      if (condition()) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`receiver: condition not met after ${timeoutMs} ms (${receiver.received.length} received, ${receiver.attempts} tried)`));
        }, timeoutMs);
        const check = (): void => {
          if (!condition()) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve();
        };
        waiters.add(check);
      });
    },
    close: async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      receiver.attempts += 1;
      receiver.tried.push(JSON.parse(body) as RunEvent);
      if (receiver.answer >= 200 && receiver.answer < 300) {
        receiver.received.push({ id: String(req.headers['webhook-id']), body, event: JSON.parse(body) as RunEvent, signatureValid: verifyWebhook(secret, req.headers, body), headers: req.headers, atMs: Date.now() });
      }
      res.writeHead(receiver.answer).end();
      for (const check of [...waiters]) check();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  (receiver as { url: string }).url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
  return receiver;
}

/** Events per run in arrival order, redeliveries removed. */
export function byRun(received: readonly Received[]): Map<string, RunEvent[]> {
  const runs = new Map<string, RunEvent[]>();
  const seen = new Set<string>();
  for (const { event } of received) {
    if (seen.has(event.id)) continue;
    seen.add(event.id);
    const list = runs.get(event.run_id) ?? [];
    list.push(event);
    runs.set(event.run_id, list);
  }
  return runs;
}

const TERMINAL = new Set<string>(TERMINAL_RUN_STATUSES);

/** How many runs have a terminal event at the receiver. */
export function terminalRuns(receiver: Receiver): number {
  let count = 0;
  for (const events of byRun(receiver.received).values()) if (events.some((e) => e.type !== 'watch.error' && TERMINAL.has(e.to))) count += 1;
  return count;
}

/**
 * The acceptance checks on everything a receiver got: valid signatures, one payload per event
 * id, per run seqs that never go back (redeliveries repeat one), no gap, the right last status.
 */
export function expectCompleteAndOrdered(receiver: Receiver, runs: readonly SimulatedRun[]): void {
  expect(receiver.received.every((r) => r.signatureValid)).toBe(true);
  const payloads = new Map<string, string>();
  for (const { id, body } of receiver.received) {
    expect(payloads.get(id) ?? body).toBe(body);
    payloads.set(id, body);
  }
  const arrivals = new Map<string, number[]>();
  for (const { event } of receiver.received) arrivals.set(event.run_id, [...(arrivals.get(event.run_id) ?? []), event.seq]);
  const runsSeen = byRun(receiver.received);
  for (const run of runs) {
    const seqs = arrivals.get(run.runId) ?? [];
    expect(seqs, run.runId).toEqual([...seqs].sort((a, b) => a - b));
    const events = runsSeen.get(run.runId) ?? [];
    expect(events.map((e) => e.seq), run.runId).toEqual(events.map((_, i) => i + 1));
    expect(events.at(-1)?.type, run.runId).toBe(`run.${run.timeline.at(-1)!.status}`);
  }
}
