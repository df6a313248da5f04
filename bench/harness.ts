// Small helpers the benches share: the machine note their results carry, and a worker's IPC.
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import os from 'node:os';

/** CPU, cores, memory, Node and kernel, as the results tables name the machine. */
export function describeMachine(): string {
  const cpus = os.cpus();
  return `${cpus[0]?.model ?? 'unknown CPU'}, ${cpus.length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, ${os.platform()} ${os.release()}`;
}

/** Sends a message to a forked worker and resolves with its next message. */
export async function ask<T>(child: ChildProcess, message: object): Promise<T> {
  const reply = once(child, 'message') as Promise<[T]>;
  child.send(message);
  const [value] = await reply;
  return value;
}
