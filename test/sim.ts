import { afterAll, beforeAll } from 'vitest';
import type { RunningSimulator, SimulatorOptions } from '../src/simulator.js';
import { startSimulator } from '../src/simulator.js';

/** Starts one simulator before the file's tests and closes it after them; `set` receives it. */
export function useSimulator(options: SimulatorOptions, set: (sim: RunningSimulator) => void): void {
  let running: RunningSimulator | undefined;
  beforeAll(async () => {
    running = await startSimulator(options);
    set(running);
  });
  afterAll(async () => {
    await running?.close();
  });
}
