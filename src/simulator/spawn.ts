// Starts `kvferry simulate` as a child process (spawn-service.ts) and learns its URL.
// Used by the tests and the demo: a simulated engine as a real process.
import { spawnService, type SpawnedService, type SpawnOptions } from "../launch/spawn-service.js";

/** The message of the simulator's readiness line; its `listen` field is the bound address. */
export const SIMULATOR_SERVING = "kvferry simulator serving";

export interface SpawnedSimulator extends SpawnedService {
  /** "http://127.0.0.1:PORT". */
  readonly url: string;
}

export type SpawnSimulatorOptions = SpawnOptions;

/** Runs `kvferry simulate ...args` (add `--listen 127.0.0.1:0` for a free port). */
export async function spawnSimulator(args: string[], options: SpawnSimulatorOptions = {}): Promise<SpawnedSimulator> {
  const s = await spawnService("simulate", args, SIMULATOR_SERVING, options);
  return Object.assign(s, { url: `http://${s.address}` });
}
