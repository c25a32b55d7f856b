// Starts `kvferry proxy` as a child process (spawn-service.ts) and learns its URL. Used by
// the tests, the demo and the benchmarks: the proxy as a real process.
import { spawnService, type SpawnedService, type SpawnOptions } from "../launch/spawn-service.js";

/** The message of the proxy's readiness line; its `listen` field is the bound address. */
export const PROXY_SERVING = "kvferry proxy serving";

export interface SpawnedProxy extends SpawnedService {
  /** "http://127.0.0.1:PORT". */
  readonly url: string;
}

/** Runs `kvferry proxy ...args` (add `--listen 127.0.0.1:0` for a free port). */
export async function spawnProxy(args: string[], options: SpawnOptions = {}): Promise<SpawnedProxy> {
  const s = await spawnService("proxy", args, PROXY_SERVING, options);
  return Object.assign(s, { url: `http://${s.address}` });
}
