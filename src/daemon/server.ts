// The daemon: the client API (127.0.0.1 by default), the peer API (the node's
// address, authenticated by proof of the cluster token) and the native engine's data plane.
//
// Lifecycle: starting → serving → draining → stopped. Draining stops accepting
// calls, reports NOT_SERVING, lets in-flight calls finish within the grace period,
// cancels what is left, undoes reservations made for peers, and stops the engine.
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { Server } from "@grpc/grpc-js";
import { HealthImplementation } from "grpc-health-check";
import type { Logger } from "pino";
import { formatHostPort, type Config } from "../config/config.js";
import { existsSync, readdirSync } from "node:fs";
import { AlreadyExistsError, ConfigError, MetadataUnavailableError, UnavailableError } from "../errors.js";
import type { ListNodesResponse } from "../gen/kvferry/v1/kvferry.js";
import type { NodeInfo } from "../gen/kvferry/v1/node.js";
import { TransferEngine } from "../engine/transfer-engine.js";
import { EmbeddedRegistry, type Greet } from "../metadata/embedded.js";
import { byNodeId, type NodeRecord } from "../metadata/node.js";
import { nodeIdTaken, nodeIdVerdict, type WhoIs } from "../metadata/node-id.js";
import { openRegistry, registerWithRetry } from "../metadata/open.js";
import type { NodeRegistry } from "../metadata/registry.js";
import { LookupBuffer } from "../store/lookup-buffer.js";
import { VERSION } from "../version.js";
import { fromWireNode, toWireNode } from "../metadata/wire-node.js";
import { EngineDirectory } from "./engines.js";
import { bind, drain } from "./grpc-server.js";
import { widenSessionWindows, widenStreamWindows } from "./http2-windows.js";
import { kvferryService } from "./kvferry-service.js";
import { LocalPath } from "./local-path.js";
import { PeerServiceDefinition, peerService } from "./peer-service.js";
import { nodeResolver } from "./node-resolver.js";
import { LogLimiter } from "./log-limiter.js";
import { DaemonMetrics } from "./metrics.js";
import { MetricsServer } from "./metrics-server.js";
import { PeerDirectory } from "./peers.js";
import { addReflection } from "./reflection.js";
import { Transfers } from "./transfers.js";
import { KvFerryServiceDefinition } from "./wire-limits.js";

export const SERVICE_NAME = "kvferry.v1.KvFerry";
export const PEER_SERVICE_NAME = "kvferry.v1.KvFerryPeer";
/** Room for a message's framing beyond its payload. */
const MESSAGE_OVERHEAD = 64 * 1024;
/** Waiting for a silent holder's record to lapse: this long past the TTL. */
const LAPSE_MARGIN_MS = 1_000;
/** HTTP/2 windows: a streamed part moves in MiB-sized messages, not 64 KiB steps. */
const STREAM_WINDOW = 16 << 20;
const SESSION_WINDOW = 64 << 20;


export type DaemonState = "starting" | "serving" | "draining" | "stopped";

export class Daemon {
  state: DaemonState = "starting";
  readonly store: LookupBuffer;
  readonly engine: TransferEngine;
  readonly transfers: Transfers;
  /** Clients on this node that map the pool: their reservations and loans. */
  readonly local: LocalPath;
  /** The local path's socket; "" while none is served. */
  #localSocket = "";
  /** Inference engines on this node that announced themselves; published in the record. */
  readonly engines: EngineDirectory;
  readonly #peers: PeerDirectory;
  /** Daemons that claimed this one's node id, logged once a minute each. */
  readonly #conflicts = new LogLimiter();
  readonly #server: Server;
  readonly #peerServer: Server;
  readonly #health: HealthImplementation;
  /** Both present when metrics_listen is set. */
  readonly #metrics: DaemonMetrics | undefined;
  readonly #metricsServer: MetricsServer | undefined;
  #port = 0;
  #peerPort = 0;
  #metricsPort = 0;
  readonly #startedAt = Date.now();
  /** Open from start() until shutdown(). */
  #registry: NodeRegistry | undefined;
  #refresh: NodeJS.Timeout | undefined;
  /** The configured node id; a default made from port 0 gets the bound port. */
  nodeId: string;

  constructor(readonly config: Config, private readonly log: Logger) {
    if (!TransferEngine.builds(config.protocol)) {
      throw new ConfigError(
        config.protocolSource, "protocol", config.protocol,
        `"tcp" (this build has no UCX transport for "rdma": install UCX, e.g. \`apt-get install libucx-dev\`, then \`npm run build\`)`,
      );
    }
    if (config.protocol === "rdma") checkDevices(config);
    if (config.clusterToken === "") {
      log.warn("no cluster_token: any process that reaches the peer API or the data port can use them");
    }
    this.nodeId = config.nodeId;
    this.engine = new TransferEngine(
      {
        poolSize: config.kvBufferSize,
        protocol: config.protocol,
        devices: config.deviceName ?? "",
        token: config.clusterToken,
        listenHost: config.dataListen.host,
        listenPort: config.dataListen.port,
        connectionsPerPeer: config.connectionsPerPeer,
        ioThreads: config.ioThreads,
        handshakeTimeoutMs: config.dataHandshakeTimeoutMs,
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
      maxEntries: config.maxEntries,
      maxPartsPerEntry: config.maxPartsPerEntry,
      maxWaitingPutBytes: config.maxWaitingPutBytes,
      consumeLeaseMs: config.consumeLeaseMs,
      // Consumed and transferred entries are the normal flow (thousands a second): debug.
      // Evictions, expiries and releases are what an operator looks for: info.
      onRemoved: (e) => {
        const level = e.reason === "consumed" || e.reason === "transferred" ? "debug" : "info";
        log[level]({ transferId: e.transferId, reason: e.reason, bytes: e.bytes }, `entry ${e.reason}`);
      },
      // A lapse means a reader got the bytes but never confirmed (a lost reply, a dead client).
      onConsumeReturned: (e) => {
        const level = e.cause === "lapsed" ? "info" : "debug";
        log[level]({ transferId: e.transferId, cause: e.cause, heldMs: e.heldMs }, "consume not confirmed: entry given back");
      },
    });
    if (config.metricsListen !== undefined) {
      const sources = {
        state: () => this.state,
        backend: config.metadata.backend,
        metadata: () => this.#registry?.health(),
      };
      this.#metrics = new DaemonMetrics(
        { ...sources, store: this.store, engine: this.engine, peersKnown: () => this.#peers.size, localOpen: () => this.local.open },
        { version: VERSION, nodeId: () => this.nodeId },
      );
      this.#metricsServer = new MetricsServer(this.#metrics, sources);
    }
    this.engines = new EngineDirectory(log, (engines) => this.#registry?.update({ engines }));
    this.#peers = new PeerDirectory(config.clusterToken, config.protocol, () => ({ nodeId: this.nodeId, node: this.#selfInfo() }));
    this.transfers = new Transfers({
      store: this.store,
      engine: this.engine,
      peers: this.#peers,
      log,
      nodeId: () => this.nodeId,
      transferDeadlineMs: config.transferDeadlineMs,
      resolve: nodeResolver(() => this.#registry),
      onBatch: this.#metrics && ((mode, outcomes, seconds) => this.#metrics!.batchDone(mode, outcomes, seconds)),
    });

    this.local = new LocalPath({
      store: this.store,
      log,
      extentsOf: (block) => this.engine.extentsOf(block),
      reservationTtlMs: config.leaseTtlMs,
      consumeLeaseMs: config.consumeLeaseMs,
    });

    const maxMessage = config.maxMessageBytes + MESSAGE_OVERHEAD;
    this.#server = new Server({
      "grpc.max_receive_message_length": maxMessage,
      "grpc.max_send_message_length": maxMessage,
      ...(this.#metrics && { interceptors: [this.#metrics.interceptor] }),
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
        listNodes: () => this.#listNodes(),
        engines: this.engines,
        local: this.local,
        localInfo: () => ({ socket: this.#localSocket, poolId: this.local.poolId, poolBytes: this.store.capacity }),
      }),
    );
    widenStreamWindows(this.#server, STREAM_WINDOW, log);
    this.#health = new HealthImplementation({ "": "NOT_SERVING", [SERVICE_NAME]: "NOT_SERVING" });
    this.#health.addToServer(this.#server);
    addReflection(this.#server, [SERVICE_NAME, "grpc.health.v1.Health"]);

    this.#peerServer = new Server(this.#metrics && { interceptors: [this.#metrics.interceptor] });
    this.#peerServer.addService(
      PeerServiceDefinition,
      peerService({
        token: config.clusterToken,
        transfers: this.transfers,
        log,
        nodeId: () => this.nodeId,
        version: VERSION,
        dataAddress: () => this.dataAddress,
        protocol: this.config.protocol,
        self: () => this.#selfInfo(),
        learn: (node, from) => this.#learn(node, from),
      }),
    );
  }

  /** The client API's bound port (useful with --listen HOST:0). */
  get port(): number {
    return this.#port;
  }

  /** Where peers reach this daemon's data plane ("host:0" over rdma: UCX listens on no port of ours; see #transport). */
  get dataAddress(): string {
    return advertised(this.config.dataListen.host, this.engine.dataPort, this.config.dataAddress?.host);
  }

  /** What a peer needs to reach the data plane under the configured protocol (the node record's transports entry). */
  #transport(): NodeRecord["transports"][number] {
    const params: NodeRecord["transports"][number]["params"] = this.config.protocol === "rdma"
      ? { connectionInfo: this.engine.connectionInfo, devices: this.config.deviceName ?? "" }
      : { address: this.dataAddress, connectionsPerPeer: this.config.connectionsPerPeer };
    return { name: this.config.protocol, params };
  }

  /** Binds, starts the engine and registers; `abort` (a signal during start-up) gives up waiting for the metadata backend. */
  async start(abort?: AbortSignal): Promise<void> {
    try {
      // First: /health answers "starting" while the rest binds and registers.
      if (this.#metricsServer !== undefined) this.#metricsPort = await this.#metricsServer.listen(this.config.metricsListen!);
      this.#port = await bind(this.#server, this.config.listen, "client API (listen)");
      this.#peerPort = await bind(this.#peerServer, this.config.peerListen, "peer API (peer_listen; by default the data port + 1)");
      widenSessionWindows(this.#server, SESSION_WINDOW, this.log);
      if (this.config.listen.port === 0 && this.nodeId.endsWith(":0")) {
        this.nodeId = `${this.nodeId.slice(0, -2)}:${this.#port}`;
      }
      this.#serveLocal();
      await this.#register(abort);
    } catch (err) {
      await this.#metricsServer?.close();
      throw err;
    }
    this.#setHealth("SERVING");
    this.state = "serving";
    this.log.info(
      {
        listen: formatHostPort({ host: this.config.listen.host, port: this.#port }),
        peer: formatHostPort({ host: this.config.peerListen.host, port: this.#peerPort }),
        data: this.dataAddress,
        ...(this.config.metricsListen && { metrics: formatHostPort({ host: this.config.metricsListen.host, port: this.#metricsPort }) }),
        local: this.#localSocket || "none",
        nodeId: this.nodeId,
        metadata: this.#registry?.where,
        kvBufferSize: this.config.kvBufferSize,
        version: VERSION,
      },
      "kvferry daemon serving",
    );
  }

  /**
   * The local path's socket: local_socket, else kvferry-PORT.sock (PORT: the client API's)
   * in $XDG_RUNTIME_DIR or the temporary directory; "none" serves none.
   */
  #serveLocal(): void {
    const configured = this.config.localSocket;
    if (configured === "none") return;
    const path = configured ?? join(process.env.XDG_RUNTIME_DIR || tmpdir(), `kvferry-${this.#port}.sock`);
    const open = this.config.localAllowedUids.length > 0 || this.config.localAllowedGids.length > 0;
    try {
      this.engine.serveLocal({
        path,
        // Only the kernel's word on the client's uid admits it; others than the daemon's user need to reach the file.
        mode: open ? 0o666 : 0o600,
        header: `"poolId":${JSON.stringify(this.local.poolId)},"poolBytes":${this.store.capacity}`,
        allowedUids: this.config.localAllowedUids,
        allowedGids: this.config.localAllowedGids,
      });
    } catch (err) {
      // The default path may be taken (another user's file in a shared /tmp): no local path
      // then, and clients go inline — GetServerInfo names no socket, so none maps a stranger's.
      if (configured !== undefined) throw err;
      this.log.warn({ err: (err as Error).message, path }, "cannot serve the local path at its default socket: clients of this node go inline (set local_socket)");
      return;
    }
    this.#localSocket = path;
  }

  /** Stops accepting calls, waits up to the grace period for in-flight ones, then cancels the rest. */
  async shutdown(graceMs = this.config.shutdownGraceMs): Promise<void> {
    if (this.state === "draining" || this.state === "stopped") return;
    this.state = "draining";
    this.#setHealth("NOT_SERVING");
    this.log.info({ graceMs }, "draining");
    // Leave the registry first, so that no node picks this one while it drains; the
    // engines' announcements end (they announce again to the next daemon).
    this.engines.close();
    clearInterval(this.#refresh);
    await this.#registry?.close().catch((err) => this.log.warn({ err }, "leaving the metadata backend failed"));
    const onForce = () => {
      this.log.warn("grace period over: cancelling calls still in flight");
      this.store.close();
    };
    await Promise.all([drain(this.#server, graceMs, onForce), drain(this.#peerServer, graceMs, onForce)]);
    // Local clients' reservations are abandoned and their loans given back.
    this.local.close();
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
    this.state = "stopped"; // the command logs "stopped" (cli/lifecycle.ts), once, as for every command
    await this.#metricsServer?.close();
  }

  /**
   * Opens the metadata backend and publishes this node (retried per metadata_retry_ms).
   * @throws MetadataUnavailableError when it cannot; the servers are closed by then.
   */
  async #register(abort?: AbortSignal): Promise<void> {
    const metadata = this.config.metadata;
    const seeds = this.#seeds();
    let registry: NodeRegistry | undefined;
    try {
      registry = await openRegistry(metadata, this.log, { seeds, greet: this.#greet, whoIs: this.#whoIs });
      const opened = registry;
      // The embedded registry learns of a holder of our id from the seeds' answers instead.
      const check = opened.backend === "embedded" ? undefined : () => this.#claimNodeId(opened, abort);
      await registerWithRetry(registry, this.#record(), { retryMs: metadata.retryMs, log: this.log, abort, check });
    } catch (err) {
      await registry?.close();
      this.#server.forceShutdown();
      this.#peerServer.forceShutdown();
      this.engine.shutdown();
      if (err instanceof AlreadyExistsError) {
        throw new ConfigError(this.config.nodeIdSource, "node_id", this.nodeId, `an id no running daemon holds: ${err.message}`);
      }
      if (registry === undefined) throw err;
      const retried = metadata.retryMs > 0 ? ` (retried for ${metadata.retryMs} ms, metadata_retry_ms)` : "";
      // The backends' messages name themselves and what failed ("etcd at h:p: cannot register node …").
      throw new MetadataUnavailableError(`${(err as Error).message}${retried}`);
    }
    this.#registry = registry;
    // Engines announced while registering are in the record from now on.
    registry.update({ engines: this.engines.list() });
    // The record's changing part: what the pool holds.
    this.#refresh = setInterval(
      () => registry.update({ poolUsedBytes: this.store.bytesUsed }),
      Math.max(1, Math.floor(metadata.ttlMs / 3)),
    );
    this.#refresh.unref();
  }

  /**
   * The peers the embedded registry greets at start-up: --peer / peers, and the other
   * side of prefill_url / decode_url (its peer API at data port + 1, the default).
   */
  #seeds(): string[] {
    const seeds = this.config.peers.map(formatHostPort);
    const { role, prefillUrl, decodeUrl } = this.config;
    const other = role === "prefill" ? decodeUrl : role === "decode" ? prefillUrl : undefined;
    if (other !== undefined && other.port < 65535) seeds.push(formatHostPort({ host: other.host, port: other.port + 1 }));
    const own = formatHostPort({ host: this.config.peerListen.host, port: this.#peerPort });
    return [...new Set(seeds)].filter((s) => s !== own);
  }

  /**
   * Before registering with etcd, redis or http: no running daemon holds this node's id
   * (node-id.ts). A holder that does not say whether it runs (paused, or its host drops
   * packets) has its record wait out: a whole TTL later it has lapsed, or someone keeps it.
   * @throws AlreadyExistsError when the id is taken.
   */
  async #claimNodeId(registry: NodeRegistry, abort?: AbortSignal): Promise<void> {
    const lookup = () => registry.lookup(this.nodeId).catch((err: Error) => {
      throw new UnavailableError(`cannot register node ${JSON.stringify(this.nodeId)}: ${err.message}`, { cause: err });
    });
    const self = this.#record();
    let held = await lookup();
    const first = await nodeIdVerdict(self, held, this.#whoIs);
    if (first.verdict === "taken") throw nodeIdTaken(held!);
    if (first.verdict === "free") return;
    const ttlMs = this.config.metadata.ttlMs;
    this.log.warn(
      { nodeId: this.nodeId, holder: held!.peerAddress, why: first.why, waitMs: ttlMs },
      "another daemon's record holds this node id and it does not say whether it runs: waiting for the record to lapse",
    );
    const until = Date.now() + ttlMs + LAPSE_MARGIN_MS;
    while (Date.now() < until) {
      await new Promise((resolve) => setTimeout(resolve, Math.min(500, ttlMs / 4)));
      if (abort?.aborted) throw new UnavailableError(`node id ${JSON.stringify(this.nodeId)}: stopped waiting for another daemon's record to lapse (${(abort.reason as Error).message})`);
      held = await lookup();
      const now = await nodeIdVerdict(self, held, this.#whoIs);
      if (now.verdict === "free") return;
      if (now.verdict === "taken") throw nodeIdTaken(held!);
    }
    throw nodeIdTaken(held!); // kept alive for a whole TTL: its daemon runs
  }

  #greetTimeoutMs(): number {
    return Math.min(5_000, Math.max(500, Math.floor(this.config.metadata.ttlMs / 3)));
  }

  /** The embedded registry's greeting: Hello with our record, their record back. */
  readonly #greet: Greet = async (address) => {
    const peer = await this.#peers.greet(address, this.#greetTimeoutMs());
    const node = peer.hello.node === undefined ? new Error("no record in its Hello") : fromWireNode(peer.hello.node);
    if (node instanceof Error) throw new Error(`peer ${address} sent no usable node record: ${node.message}`);
    return node;
  };

  /**
   * Which node answers at a peer API: node-id.ts's question, a greeting with half a
   * greeting's deadline (the embedded registry asks it while a greeter waits).
   */
  readonly #whoIs: WhoIs = async (address) => {
    const { hello } = await this.#peers.greet(address, Math.floor(this.#greetTimeoutMs() / 2));
    return { nodeId: hello.nodeId, dataAddress: hello.dataAddress };
  };

  async #learn(info: NodeInfo, from: string): Promise<void> {
    const node = fromWireNode(info);
    if (node instanceof Error) {
      this.log.warn({ from, err: node.message }, "a peer's Hello carried an unusable node record");
      return;
    }
    const self = this.#record();
    if (node.nodeId === self.nodeId && node.peerAddress !== self.peerAddress) {
      this.#conflicts.report(node.peerAddress, () =>
        this.log.error({ peerAddress: node.peerAddress, clientAddress: node.clientAddress, nodeId: node.nodeId }, "another daemon claims this daemon's node id: its greetings are refused"),
      );
      throw nodeIdTaken(self);
    }
    if (!(this.#registry instanceof EmbeddedRegistry)) return;
    this.#peers.revive(node.peerAddress);
    await this.#registry.learn(node);
  }

  /** This node as the registry publishes it, now. */
  #record(): NodeRecord {
    return {
      nodeId: this.nodeId,
      hostname: hostname(),
      clientAddress: advertised(this.config.listen.host, this.#port, this.config.dataAddress?.host),
      peerAddress: advertised(this.config.peerListen.host, this.#peerPort, this.config.dataAddress?.host),
      dataAddress: this.dataAddress,
      // What a peer needs to reach the data plane, per transport (the one configured).
      transports: [this.#transport()],
      poolBytes: this.config.kvBufferSize,
      poolUsedBytes: this.store.bytesUsed,
      version: VERSION,
      startedAt: this.#startedAt,
      updatedAt: Date.now(),
      engines: this.engines.list(),
    };
  }

  #selfInfo(): NodeInfo | undefined {
    return this.#peerPort === 0 ? undefined : toWireNode(this.#record());
  }

  async #listNodes(): Promise<ListNodesResponse> {
    const registry = this.#registry;
    if (registry === undefined) return { backend: this.config.metadata.backend, where: "", nodes: [toWireNode(this.#record())] };
    const nodes = await registry.list();
    // This node's own line is always current, whatever the backend last stored.
    const self = this.#record();
    const merged = [self, ...nodes.filter((n) => n.nodeId !== self.nodeId)].sort(byNodeId);
    return { backend: registry.backend, where: registry.where, nodes: merged.map(toWireNode) };
  }

  #setHealth(status: "SERVING" | "NOT_SERVING"): void {
    this.#health.setStatus("", status);
    this.#health.setStatus(SERVICE_NAME, status);
  }
}

/** "host:port" others use for a listener: a wildcard host becomes `preferred`, else this host's name. */
function advertised(host: string, port: number, preferred?: string): string {
  const wildcard = host === "0.0.0.0" || host === "::";
  return formatHostPort({ host: wildcard ? (preferred ?? hostname()) : host, port });
}

/**
 * protocol rdma: every device_name entry must be a device of this machine, an RDMA device
 * (/sys/class/infiniband, "mlx5_0" or "mlx5_0:1") or a network interface (/sys/class/net,
 * for UCX's tcp): UCX itself only warns about a missing one and carries on without it.
 */
function checkDevices(config: Config): void {
  const names = (config.deviceName ?? "").split(",").map((d) => d.trim()).filter((d) => d !== "");
  const present = (dir: string) => (existsSync(dir) ? readdirSync(dir) : []);
  const here = [...present("/sys/class/infiniband"), ...present("/sys/class/net")];
  const missing = names.filter((d) => !here.includes(d.replace(/:\d+$/, "")));
  if (missing.length > 0) {
    throw new ConfigError(
      config.deviceNameSource, "device_name", config.deviceName,
      `devices of this machine (${missing.join(", ")} ${missing.length === 1 ? "is" : "are"} not; it has ${here.join(", ") || "none"})`,
    );
  }
}
