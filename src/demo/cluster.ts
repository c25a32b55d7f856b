// The demo's cluster on one machine: two daemons (TCP over loopback), a prefill and a
// decode simulator each beside its own daemon, the proxy in front of them, and a
// non-disaggregated (`both`) simulator as the reference. Every process is a real child;
// stop() ends them all (SIGTERM, then SIGKILL after a bound) and reports their exit codes,
// and a process exit or a signal while it runs takes them down too: nothing is left behind.
import { randomBytes } from "node:crypto";
import { spawnDaemon, type SpawnedDaemon } from "../cli/spawn-daemon.js";
import { spawnProxy, type SpawnedProxy } from "../proxy/spawn.js";
import { spawnSimulator, type SpawnedSimulator } from "../simulator/spawn.js";

export interface ClusterOptions {
  /** Each daemon's kv_buffer_size, e.g. "1GiB". */
  bufferSize: string;
  /** push: the prefill daemon pushes; pull: the decode daemon pulls. */
  transfer: "push" | "pull";
  /** Simulator flags (model layout, token delay). */
  simulatorArgs: string[];
  /** Told what starts, one line each. */
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

type Stoppable = { stop(killAfterMs?: number): Promise<number | null>; child: { kill(signal: NodeJS.Signals): boolean } };

/** The processes started so far, newest last; stopped in reverse order. */
class Processes {
  readonly #all: { name: string; p: Stoppable }[] = [];
  readonly #onExit = () => {
    for (const { p } of this.#all) p.child.kill("SIGKILL");
  };

  constructor() {
    process.once("exit", this.#onExit);
  }

  add<T extends Stoppable>(name: string, p: T): T {
    this.#all.push({ name, p });
    return p;
  }

  /** SIGTERM to each (newest first, so the proxy goes before what it calls); exit codes by name. */
  async stopAll(): Promise<{ name: string; code: number | null }[]> {
    const codes: { name: string; code: number | null }[] = [];
    for (const { name, p } of [...this.#all].reverse()) codes.push({ name, code: await p.stop(10_000) });
    process.off("exit", this.#onExit);
    return codes.reverse();
  }
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
    const [prefillDaemon, decodeDaemon] = await Promise.all([
      spawnDaemon(daemonArgs("prefill-node"), { env }).then((d) => this.#processes.add("prefill daemon", d)),
      spawnDaemon(daemonArgs("decode-node"), { env }).then((d) => this.#processes.add("decode daemon", d)),
    ]);
    o.say(`daemons        prefill-node ${prefillDaemon.address} (data ${prefillDaemon.dataAddress}), decode-node ${decodeDaemon.address} (data ${decodeDaemon.dataAddress}), ${o.bufferSize} pools`);
    const sim = (role: string, daemon?: SpawnedDaemon) =>
      spawnSimulator(["--role", role, "--listen", "127.0.0.1:0", ...(daemon ? ["--daemon", daemon.address] : []), ...o.simulatorArgs]);
    const [prefill, decode, reference] = await Promise.all([
      sim("prefill", prefillDaemon).then((s) => this.#processes.add("prefill simulator", s)),
      sim("decode", decodeDaemon).then((s) => this.#processes.add("decode simulator", s)),
      sim("both").then((s) => this.#processes.add("reference simulator", s)),
    ]);
    o.say(`simulators     prefill ${prefill.url}, decode ${decode.url}, non-disaggregated reference ${reference.url}`);
    const proxy = this.#processes.add(
      "proxy",
      await spawnProxy([
        "--listen", "127.0.0.1:0", "--transfer", o.transfer,
        "--prefill", `${prefill.url}=${prefillDaemon.address}`, "--decode", `${decode.url}=${decodeDaemon.address}`,
      ]),
    );
    const proxyUrl = proxy.url;
    o.say(`proxy          ${proxyUrl} (KV moves by ${o.transfer.toUpperCase()})`);
    this.cluster = { prefillDaemon, decodeDaemon, prefill, decode, reference, proxy, proxyUrl };
    return this.cluster;
  }

  stop(): Promise<{ name: string; code: number | null }[]> {
    return this.#processes.stopAll();
  }
}
