// The daemon: one gRPC server carrying the client API, health and reflection.
//
// Lifecycle: starting → serving → draining → stopped. Draining stops accepting
// calls, reports NOT_SERVING, lets in-flight calls finish within the grace period,
// then cancels what is left.
import { readFileSync } from "node:fs";
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { HealthImplementation } from "grpc-health-check";
import type { Logger } from "pino";
import type { Config } from "../config/config.js";
import { UnavailableError } from "../errors.js";
import { HeapMemory } from "../store/memory.js";
import { LookupBuffer } from "../store/lookup-buffer.js";
import { kvferryService } from "./kvferry-service.js";
import { widenSessionWindows, widenStreamWindows } from "./http2-windows.js";
import { addReflection } from "./reflection.js";
import { KvFerryServiceDefinition } from "./wire-limits.js";

export const SERVICE_NAME = "kvferry.v1.KvFerry";
/** Room for a message's framing beyond its payload. */
const MESSAGE_OVERHEAD = 64 * 1024;
/** HTTP/2 windows: a streamed part moves in MiB-sized messages, not 64 KiB steps. */
const STREAM_WINDOW = 16 << 20;
const SESSION_WINDOW = 64 << 20;

export const VERSION: string = JSON.parse(
  readFileSync(new URL("../../package.json", import.meta.url), "utf8"),
).version;

export type DaemonState = "starting" | "serving" | "draining" | "stopped";

export class Daemon {
  state: DaemonState = "starting";
  readonly store: LookupBuffer;
  readonly #server: Server;
  readonly #health: HealthImplementation;
  #port = 0;
  /** The configured node id; a default made from port 0 gets the bound port. */
  nodeId: string;

  constructor(readonly config: Config, private readonly log: Logger) {
    this.nodeId = config.nodeId;
    this.store = new LookupBuffer({
      memory: new HeapMemory(config.kvBufferSize),
      leaseTtlMs: config.leaseTtlMs,
      putDeadlineMs: config.putDeadlineMs,
      getWaitMs: config.getWaitMs,
      recentlyRemoved: config.recentlyRemoved,
      maxWaiters: config.maxWaiters,
      onRemoved: (e) => log.info({ transferId: e.transferId, reason: e.reason, bytes: e.bytes }, `entry ${e.reason}`),
    });
    const maxMessage = config.maxMessageBytes + MESSAGE_OVERHEAD;
    this.#server = new Server({
      "grpc.max_receive_message_length": maxMessage,
      "grpc.max_send_message_length": maxMessage,
    });
    this.#server.addService(
      KvFerryServiceDefinition,
      kvferryService({
        store: this.store,
        log,
        nodeId: () => this.nodeId,
        version: VERSION,
        startedAt: Date.now(),
        maxMessageBytes: config.maxMessageBytes,
        streamIdleMs: config.putDeadlineMs,
        dataPlane: () => ({ bytesSent: 0, bytesReceived: 0 }),
      }),
    );
    widenStreamWindows(this.#server, STREAM_WINDOW, log);
    this.#health = new HealthImplementation({ "": "NOT_SERVING", [SERVICE_NAME]: "NOT_SERVING" });
    this.#health.addToServer(this.#server);
    addReflection(this.#server);
  }

  /** The client API's bound port (useful with --listen HOST:0). */
  get port(): number {
    return this.#port;
  }

  async start(): Promise<void> {
    const { host, port } = this.config.listen;
    const address = host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
    this.#port = await new Promise<number>((resolve, reject) => {
      this.#server.bindAsync(address, ServerCredentials.createInsecure(), (err, bound) => {
        if (err) reject(new UnavailableError(`cannot listen on ${address}: ${err.message}`, { cause: err }));
        else resolve(bound);
      });
    });
    widenSessionWindows(this.#server, SESSION_WINDOW, this.log);
    if (this.config.listen.port === 0 && this.nodeId.endsWith(":0")) {
      this.nodeId = `${this.nodeId.slice(0, -2)}:${this.#port}`;
    }
    this.#setHealth("SERVING");
    this.state = "serving";
    this.log.info(
      { listen: `${host}:${this.#port}`, nodeId: this.nodeId, kvBufferSize: this.config.kvBufferSize, version: VERSION },
      "kvferry daemon serving",
    );
  }

  /** Stops accepting calls, waits up to the grace period for in-flight ones, then cancels the rest. */
  async shutdown(graceMs = this.config.shutdownGraceMs): Promise<void> {
    if (this.state === "draining" || this.state === "stopped") return;
    this.state = "draining";
    this.#setHealth("NOT_SERVING");
    this.log.info({ graceMs }, "draining");
    const graceful = new Promise<void>((resolve) => this.#server.tryShutdown(() => resolve()));
    let timer: NodeJS.Timeout | undefined;
    const forced = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        this.log.warn("grace period over: cancelling calls still in flight");
        this.store.close();
        this.#server.forceShutdown();
        resolve();
      }, graceMs);
    });
    await Promise.race([graceful, forced]);
    clearTimeout(timer);
    this.store.close();
    this.state = "stopped";
    this.log.info("stopped");
  }

  #setHealth(status: "SERVING" | "NOT_SERVING"): void {
    this.#health.setStatus("", status);
    this.#health.setStatus(SERVICE_NAME, status);
  }
}
