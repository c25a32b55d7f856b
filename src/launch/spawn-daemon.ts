// Starts `kvferry daemon` as a child process (spawn-service.ts) and reads its three
// addresses from the readiness line. Used by the demo, the integration tests and the
// benchmarks: real processes.
import { spawnService, type SpawnedService, type SpawnOptions } from "./spawn-service.js";

export type { SpawnOptions } from "./spawn-service.js";

/** The msg of the daemon's readiness line. */
export const DAEMON_SERVING = "kvferry daemon serving";

export interface SpawnedDaemon extends SpawnedService {
  /** The peer API's address (what another daemon's BatchTransfer names as target). */
  readonly peerAddress: string;
  /** The native data plane's address. */
  readonly dataAddress: string;
}

/** Runs `kvferry daemon ...args` (add `--listen 127.0.0.1:0` for a free port). */
export async function spawnDaemon(args: string[], options: SpawnOptions = {}): Promise<SpawnedDaemon> {
  const d = await spawnService("daemon", args, DAEMON_SERVING, options);
  return Object.assign(d, { peerAddress: String(d.ready.peer), dataAddress: String(d.ready.data) });
}
