// The daemon: the client API (127.0.0.1 by default), the peer API (the node's
// address, token-authenticated) and the native engine's data plane.
//
// Lifecycle: starting → serving → draining → stopped. Draining stops accepting
// calls, reports NOT_SERVING, lets in-flight calls finish within the grace period,
// cancels what is left, undoes reservations made for peers, and stops the engine.
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { Server } from "@grpc/grpc-js";
import { HealthImplementation } from "grpc-health-check";
import type { Logger } from "pino";
import { formatHostPort, type Config } from "../config/config.js";
import { ConfigError } from "../errors.js";
import { KvFerryPeerService } from "../gen/kvferry/v1/peer.js";
import { TransferEngine } from "../engine/transfer-engine.js";
import { LookupBuffer } from "../store/lookup-buffer.js";
import { bind, drain } from "./grpc-server.js";
import { widenSessionWindows, widenStreamWindows } from "./http2-windows.js";
import { kvferryService } from "./kvferry-service.js";
import { peerService } from "./peer-service.js";
import { PeerDirectory } from "./peers.js";
import { addReflection } from "./reflection.js";
import { Transfers } from "./transfers.js";
import { KvFerryServiceDefinition } from "./wire-limits.js";

export const SERVICE_NAME = "kvferry.v1.KvFerry";
export const PEER_SERVICE_NAME = "kvferry.v1.KvFerryPeer";
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
  readonly engine: TransferEngine;
  readonly transfers: Transfers;
  readonly #peers: PeerDirectory;
  readonly #server: Server;
  readonly #peerServer: Server;
  readonly #health: HealthImplementation;
  #port = 0;
  #peerPort = 0;
  /** The configured node id; a default made from port 0 gets the bound port. */
  nodeId: string;

  constructor(readonly config: Config, private readonly log: Logger) {
    if (config.protocol !== "tcp") {
      throw new ConfigError(config.source, "protocol", config.protocol, `"tcp" (the rdma transport through UCX is not built yet)`);
    }
    if (config.clusterToken === "") {
      log.warn("no cluster_token: any process that reaches the peer API or the data port can use them");
    }
    this.nodeId = config.nodeId;
    this.engine = new TransferEngine(
      {
        poolSize: config.kvBufferSize,
        token: config.clusterToken,
        listenHost: config.dataListen.host,
        listenPort: config.dataListen.port,
        connectionsPerPeer: config.connectionsPerPeer,
      },
      log,
    );
    this.store = new LookupBuffer({
      memory: this.engine.memory,
      leaseTtlMs: config.leaseTtlMs,
      putDeadlineMs: config.putDeadlineMs,
      getWaitMs: config.getWaitMs,
      recentlyRemoved: config.recentlyRemoved,
      maxWaiters: config.maxWaiters,
      // Consumed and transferred entries are the normal flow (thousands a second): debug.
      // Evictions, expiries and releases are what an operator looks for: info.
      onRemoved: (e) => {
        const level = e.reason === "consumed" || e.reason === "transferred" ? "debug" : "info";
        log[level]({ transferId: e.transferId, reason: e.reason, bytes: e.bytes }, `entry ${e.reason}`);
      },
    });
    this.#peers = new PeerDirectory(config.clusterToken, () => this.nodeId);
    this.transfers = new Transfers({
      store: this.store,
      engine: this.engine,
      peers: this.#peers,
      log,
      nodeId: () => this.nodeId,
      transferDeadlineMs: config.transferDeadlineMs,
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
        transfers: this.transfers,
        dataPlane: () => {
          const s = this.engine.stats();
          return { bytesSent: s.bytesSent, bytesReceived: s.bytesReceived };
        },
      }),
    );
    widenStreamWindows(this.#server, STREAM_WINDOW, log);
    this.#health = new HealthImplementation({ "": "NOT_SERVING", [SERVICE_NAME]: "NOT_SERVING" });
    this.#health.addToServer(this.#server);
    addReflection(this.#server, [SERVICE_NAME, "grpc.health.v1.Health"]);

    this.#peerServer = new Server();
    this.#peerServer.addService(
      KvFerryPeerService,
      peerService({
        token: config.clusterToken,
        transfers: this.transfers,
        log,
        nodeId: () => this.nodeId,
        version: VERSION,
        dataAddress: () => this.dataAddress,
      }),
    );
  }

  /** The client API's bound port (useful with --listen HOST:0). */
  get port(): number {
    return this.#port;
  }

  /** Where peers reach this daemon's data plane. */
  get dataAddress(): string {
    const host = this.config.dataListen.host;
    const advertised = host === "0.0.0.0" || host === "::" ? (this.config.dataAddress?.host ?? hostname()) : host;
    return formatHostPort({ host: advertised, port: this.engine.dataPort });
  }

  async start(): Promise<void> {
    this.#port = await bind(this.#server, this.config.listen, "client API");
    this.#peerPort = await bind(this.#peerServer, this.config.peerListen, "peer API");
    widenSessionWindows(this.#server, SESSION_WINDOW, this.log);
    if (this.config.listen.port === 0 && this.nodeId.endsWith(":0")) {
      this.nodeId = `${this.nodeId.slice(0, -2)}:${this.#port}`;
    }
    this.#setHealth("SERVING");
    this.state = "serving";
    this.log.info(
      {
        listen: formatHostPort({ host: this.config.listen.host, port: this.#port }),
        peer: formatHostPort({ host: this.config.peerListen.host, port: this.#peerPort }),
        data: this.dataAddress,
        nodeId: this.nodeId,
        kvBufferSize: this.config.kvBufferSize,
        version: VERSION,
      },
      "kvferry daemon serving",
    );
  }

  /** Stops accepting calls, waits up to the grace period for in-flight ones, then cancels the rest. */
  async shutdown(graceMs = this.config.shutdownGraceMs): Promise<void> {
    if (this.state === "draining" || this.state === "stopped") return;
    this.state = "draining";
    this.#setHealth("NOT_SERVING");
    this.log.info({ graceMs }, "draining");
    const onForce = () => {
      this.log.warn("grace period over: cancelling calls still in flight");
      this.store.close();
    };
    await Promise.all([drain(this.#server, graceMs, onForce), drain(this.#peerServer, graceMs, onForce)]);
    // Undo reservations held for peers; a peer stuck mid-frame cannot hold this past the
    // grace period: the engine's shutdown below closes its connection either way.
    let undone: NodeJS.Timeout | undefined;
    await Promise.race([
      this.transfers.close().catch((err) => this.log.warn({ err }, "undoing reservations failed")),
      new Promise<void>((resolve) => {
        undone = setTimeout(() => {
          this.log.warn("reservations still held by peers after the grace period: stopping the data plane");
          resolve();
        }, graceMs);
      }),
    ]);
    clearTimeout(undone);
    this.store.close();
    this.#peers.close();
    this.engine.shutdown();
    this.state = "stopped";
    this.log.info("stopped");
  }

  #setHealth(status: "SERVING" | "NOT_SERVING"): void {
    this.#health.setStatus("", status);
    this.#health.setStatus(SERVICE_NAME, status);
  }
}
