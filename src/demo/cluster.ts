// The demo's cluster on one machine: two daemons (TCP over loopback), a prefill and a
// decode simulator each beside its own daemon, the proxy in front of them, and a
// non-disaggregated (`both`) simulator as the reference. Every process is a real child,
// tracked from the moment it is spawned (not when it is ready), so that stop() — called on
// success, on failure and on SIGINT/SIGTERM/SIGHUP by the demo — ends each one (SIGTERM,
// then SIGKILL after a bound) and reports its exit code; a process exit kills any left.
import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { spawnDaemon, type SpawnedDaemon } from "../launch/spawn-daemon.js";
import type { ExitStatus, SpawnOptions } from "../launch/spawn-service.js";
import { spawnProxy, type SpawnedProxy } from "../proxy/spawn.js";
import { spawnSimulator, type SpawnedSimulator } from "../simulator/spawn.js";

export interface ClusterOptions {
  /** Each daemon's kv_buffer_size, e.g. "1GiB". */
  bufferSize: string;
  /** push: the prefill daemon pushes; pull: the decode daemon pulls. */
  transfer: "push" | "pull";
  /** Simulator flags (model layout, token delay). */
  simulatorArgs: string[];
  /** How long each process may take to serve (its launcher's default when undefined). */
  startTimeoutMs?: number;
  /** Told what starts, one line each, and of a start that is slow. */
  say: (line: string) => void;
}

export interface Cluster {
  prefillDaemon: SpawnedDaemon;
  decodeDaemon: SpawnedDaemon;
  prefill: SpawnedSimulator;
  decode: SpawnedSimulator;
  reference: SpawnedSimulator;
  proxy: SpawnedProxy;
  /** "http://127.0.0.1:PORT" of the proxy. */
  proxyUrl: string;
}

/** Every child started so far, from the moment it exists; stopped in reverse order. */
class Processes {
  readonly #all: { name: string; child: ChildProcess }[] = [];
  #stopping = false;

  constructor() {
    // Whatever is still running when this process exits goes with it (a no-op for the
    // children that already exited).
    process.once("exit", () => {
      for (const { child } of this.#all) child.kill("SIGKILL");
    });
  }

  /** A SpawnOptions.onSpawn that records the child under `name`. */
  track(name: string): (child: ChildProcess) => void {
    return (child) => {
      this.#all.push({ name, child });
      // Spawned by a start-up that is still running while we stop: it goes at once.
      if (this.#stopping) child.kill("SIGTERM");
    };
  }

  /**
   * SIGTERM to each still running (newest first, so the proxy goes before what it calls),
   * SIGKILL after 10 s; how each ended (exit code or signal), by name. A child that a
   * start-up still in progress spawns meanwhile is stopped too.
   */
  async stopAll(): Promise<({ name: string } & ExitStatus)[]> {
    this.#stopping = true;
    const codes = new Map<ChildProcess, { name: string } & ExitStatus>();
    for (;;) {
      const left = this.#all.filter(({ child }) => !codes.has(child)).reverse();
      if (left.length === 0) break;
      for (const { name, child } of left) codes.set(child, { name, ...(await stop(child)) });
    }
    return this.#all.map(({ child }) => codes.get(child)!);
  }
}

async function stop(child: ChildProcess): Promise<ExitStatus> {
  if (child.exitCode !== null || child.signalCode !== null) return { code: child.exitCode, signal: child.signalCode };
  const exited = new Promise<ExitStatus>((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  child.kill("SIGTERM");
  const kill = setTimeout(() => child.kill("SIGKILL"), 10_000);
  const code = await exited;
  clearTimeout(kill);
  return code;
}

/** The values of promises that all fulfilled; else the first rejection (after all settled). */
async function all<T extends unknown[]>(promises: { [K in keyof T]: Promise<T[K]> }): Promise<T> {
  const settled = await Promise.allSettled(promises);
  const failed = settled.find((r) => r.status === "rejected");
  if (failed) throw (failed as PromiseRejectedResult).reason;
  return settled.map((r) => (r as PromiseFulfilledResult<unknown>).value) as T;
}

export class DemoCluster {
  readonly #processes = new Processes();
  cluster: Cluster | undefined;

  async start(o: ClusterOptions): Promise<Cluster> {
    const env = { KVFERRY_CLUSTER_TOKEN: randomBytes(18).toString("base64url") };
    const daemonArgs = (id: string) => [
      "--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0",
      "--kv-buffer-size", o.bufferSize, "--node-id", id,
    ];
    const p = this.#processes;
    // Each child by its role: tracked from its spawn, named in a failure, reported while slow.
    const as = (name: string, env?: NodeJS.ProcessEnv): SpawnOptions => ({
      name,
      env,
      onSpawn: p.track(name),
      startTimeoutMs: o.startTimeoutMs,
      onWaiting: (ms) => o.say(`waiting for ${name} (${Math.round(ms / 1000)} s)…`),
    });
    // Both at once: a daemon reserves its pool at start (fast) and maps it in the background.
    const [prefillDaemon, decodeDaemon] = await all<[SpawnedDaemon, SpawnedDaemon]>([
      spawnDaemon(daemonArgs("prefill-node"), as("prefill daemon", env)),
      spawnDaemon(daemonArgs("decode-node"), as("decode daemon", env)),
    ]);
    o.say(`daemons        prefill-node ${prefillDaemon.address} (data ${prefillDaemon.dataAddress}), decode-node ${decodeDaemon.address} (data ${decodeDaemon.dataAddress}), ${o.bufferSize} pools`);
    const sim = (role: string, name: string, daemon?: SpawnedDaemon) =>
      spawnSimulator(["--role", role, "--listen", "127.0.0.1:0", ...(daemon ? ["--daemon", daemon.address] : []), ...o.simulatorArgs], as(name));
    const [prefill, decode, reference] = await all<[SpawnedSimulator, SpawnedSimulator, SpawnedSimulator]>([
      sim("prefill", "prefill simulator", prefillDaemon),
      sim("decode", "decode simulator", decodeDaemon),
      sim("both", "reference simulator"),
    ]);
    o.say(`simulators     prefill ${prefill.url}, decode ${decode.url}, non-disaggregated reference ${reference.url}`);
    const proxy = await spawnProxy(
      [
        "--listen", "127.0.0.1:0", "--transfer", o.transfer,
        "--prefill", `${prefill.url}=${prefillDaemon.address}`, "--decode", `${decode.url}=${decodeDaemon.address}`,
      ],
      as("proxy"),
    );
    const proxyUrl = proxy.url;
    o.say(`proxy          ${proxyUrl} (KV moves by ${o.transfer.toUpperCase()})`);
    this.cluster = { prefillDaemon, decodeDaemon, prefill, decode, reference, proxy, proxyUrl };
    return this.cluster;
  }

  stop(): Promise<({ name: string } & ExitStatus)[]> {
    return this.#processes.stopAll();
  }
}
