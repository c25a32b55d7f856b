// The disaggregating proxy as one object: its lifecycle and the parts it wires together.
//
//   starting ──start()──▶ serving ──shutdown()──▶ draining ──▶ stopped
//
// start() reads the discovered instances (discovery.ts) when the config names a source,
// learns every daemon's identity and checks every instance once (an instance that
// is down is not fatal: health checks bring it in later), then listens. shutdown() stops
// accepting, answers /health 503 and new completions on open connections 503 (each answer
// closing its connection), lets the requests in flight finish for up to the drain period,
// closes what is left, runs the transfer-id releases still due (bounded) and waits for
// those in flight, and closes the daemon clients.
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { Logger } from "pino";
import { formatHostPort } from "../config/parse.js";
import type { ProxyConfig } from "./config.js";
import { DaemonDirectory } from "./daemons.js";
import { Discovery } from "./discovery.js";
import { createFrontDoor, InFlight } from "./http-server.js";
import { InstancePool } from "./instances.js";
import { ProxyMetrics } from "./metrics.js";
import { RequestFlow } from "./request-flow.js";
import { closeIdleConnections } from "./upstream.js";

export type ProxyState = "starting" | "serving" | "draining" | "stopped";

export class Proxy {
  state: ProxyState = "starting";
  readonly metrics = new ProxyMetrics();
  readonly daemons: DaemonDirectory;
  readonly pool: InstancePool;
  /** Present when instances are discovered (config.discovery). */
  readonly discovery: Discovery | undefined;
  readonly #flow: RequestFlow;
  readonly #inFlight = new InFlight();
  readonly #server: Server;

  constructor(readonly config: ProxyConfig, private readonly log: Logger) {
    this.daemons = new DaemonDirectory(log);
    this.pool = new InstancePool(config, this.daemons, this.metrics, log);
    this.discovery =
      config.discovery === undefined
        ? undefined
        : new Discovery(
            config.discovery,
            this.pool,
            { needsDaemon: config.transfer !== "none", intervalMs: config.healthIntervalMs, timeoutMs: config.healthTimeoutMs },
            log,
          );
    this.#flow = new RequestFlow(config, this.pool, this.metrics, log);
    const draining = () => this.state === "draining" || this.state === "stopped";
    this.#server = createFrontDoor({ config, pool: this.pool, flow: this.#flow, metrics: this.metrics, log, draining }, this.#inFlight);
  }

  /** Discovers the instances (when asked to), checks them once, then listens. Resolves to the address it listens on. */
  async start(): Promise<string> {
    await this.discovery?.start();
    await this.pool.start();
    await new Promise<void>((resolve, reject) => {
      this.#server.once("error", reject);
      this.#server.listen(this.config.listen.port, this.config.listen.host, () => {
        this.#server.off("error", reject);
        resolve();
      });
    });
    this.state = "serving";
    const port = (this.#server.address() as AddressInfo).port;
    return formatHostPort({ host: this.config.listen.host, port });
  }

  /** Stops accepting, drains for up to config.drainMs, then closes everything. */
  async shutdown(): Promise<void> {
    if (this.state === "draining" || this.state === "stopped") return;
    this.state = "draining";
    this.#inFlight.closeAfterAnswers();
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#server.closeIdleConnections();
    this.log.info({ inFlight: this.#inFlight.count, drainMs: this.config.drainMs }, "draining");
    let timer: NodeJS.Timeout | undefined;
    const drained = await Promise.race([
      this.#inFlight.idle().then(() => true),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), this.config.drainMs))),
    ]);
    clearTimeout(timer);
    if (!drained) this.log.warn({ inFlight: this.#inFlight.count }, "drain period over: closing the requests still in flight");
    this.#server.closeAllConnections();
    // Closed requests abort their upstream calls and start their releases; let them.
    await Promise.race([this.#inFlight.idle(), new Promise((resolve) => setTimeout(resolve, 2000).unref())]);
    await closed;
    this.pool.stop();
    await this.discovery?.stop();
    await this.#flow.settle();
    this.daemons.close();
    closeIdleConnections();
    this.state = "stopped";
  }
}
