// The daemon's Prometheus metrics (README "Metrics"), on a registry of its own.
//
// Most series mirror totals other parts already keep and are read at each scrape: the
// store's counters and bytes, the native engine's byte and connection counts, the metadata
// backend's health. Two kinds are recorded as they happen: every finished gRPC call (a
// server interceptor: method and status code, RESOURCE_EXHAUSTED among them) and every
// batch this daemon ran as the initiator of a push or pull (entries by result, bytes,
// duration).
import {
  ResponderBuilder,
  ServerInterceptingCall,
  status as GrpcStatus,
  type ServerInterceptor,
} from "@grpc/grpc-js";
import { collectDefaultMetrics } from "prom-client";
import type { MetadataBackend } from "../config/metadata.js";
import type { RemovalReason } from "../errors.js";
import { grpcStatusOf } from "../grpc-errors.js";
import type { TransferEngine } from "../engine/transfer-engine.js";
import type { RegistryHealth } from "../metadata/registry.js";
import { Counter, Gauge, Histogram, mirroredCounter, Registry } from "../metrics/registry.js";
import type { LookupBuffer } from "../store/lookup-buffer.js";
import type { DaemonState } from "./server.js";
import type { Mode, TransferOutcome } from "./transfers.js";

/** A batch moves from a millisecond (a small entry on loopback) to its 30 s deadline. */
const TRANSFER_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const DAEMON_STATES: readonly DaemonState[] = ["starting", "serving", "draining", "stopped"];

/** What the scrape reads from the running daemon. */
export interface DaemonMetricSources {
  store: LookupBuffer;
  engine: TransferEngine;
  state(): DaemonState;
  /** The metadata backend's kind, and its health once opened (undefined before). */
  backend: MetadataBackend;
  metadata(): RegistryHealth | undefined;
  /** Peers the peer API has greeted (channels held). */
  peersKnown(): number;
  /** The local path's reservations and loans held now. */
  localOpen(): { reservations: number; loans: number };
}

export class DaemonMetrics {
  readonly registry = new Registry();
  readonly #calls: Counter<"method" | "code">;
  readonly #transfers: Counter<"mode" | "result">;
  readonly #transferBytes: Counter<"mode">;
  readonly #transferSeconds: Histogram<"mode">;

  constructor(s: DaemonMetricSources, labels: { version: string; nodeId: () => string }) {
    const registers = [this.registry];
    const { store, engine } = s;
    const gauge = (name: string, help: string, read: () => number) =>
      new Gauge({ name, help, registers, collect() { this.set(read()); } });
    const counter = (name: string, help: string, read: () => number) =>
      mirroredCounter(this.registry, name, help, [], () => [[{}, read()]]);

    new Gauge({
      name: "kvferry_daemon_info",
      help: "Always 1; the labels say which daemon this is.",
      labelNames: ["version", "node_id"] as const,
      registers,
      collect() {
        this.reset();
        this.set({ version: labels.version, node_id: labels.nodeId() }, 1);
      },
    });
    new Gauge({
      name: "kvferry_daemon_state",
      help: "1 for the daemon's lifecycle state (starting, serving, draining, stopped), 0 for the others.",
      labelNames: ["state"] as const,
      registers,
      collect() {
        const now = s.state();
        for (const state of DAEMON_STATES) this.set({ state }, state === now ? 1 : 0);
      },
    });

    // The pool and the entries in it.
    gauge("kvferry_daemon_pool_capacity_bytes", "Bytes of the memory pool (kv_buffer_size).", () => store.capacity);
    gauge("kvferry_daemon_pool_used_bytes", "Bytes of the pool held by entries (and by puts about to attach their room).", () => store.bytesUsed);
    new Gauge({
      name: "kvferry_daemon_entries",
      help: "Entries held, by state (open: parts may still come; sealed: complete).",
      labelNames: ["state"] as const,
      registers,
      collect() {
        for (const [state, n] of Object.entries(store.entriesByState())) this.set({ state }, n);
      },
    });
    gauge("kvferry_daemon_waiting_put_bytes", "Bytes of unary puts waiting for room now (bounded by max_waiting_put_bytes).", () => store.waitingPutBytes);

    // What the store did.
    const c = store.counters;
    counter("kvferry_daemon_puts_total", "Parts stored (Put, PutStream, and parts received from peers).", () => c.puts);
    counter("kvferry_daemon_gets_total", "Reads served (Get, GetStream, and sends to peers).", () => c.gets);
    const removed: Record<RemovalReason, () => number> = {
      consumed: () => c.consumed,
      released: () => c.releases,
      evicted: () => c.evictions,
      expired: () => c.expiries,
      transferred: () => c.transferred,
      incomplete: () => c.incomplete,
    };
    mirroredCounter(
      this.registry,
      "kvferry_daemon_entries_removed_total",
      "Entries removed, by reason: consumed, released, evicted (LRU, for room), expired (lease), transferred (moved to a peer), incomplete (a part abandoned).",
      ["reason"] as const,
      () => Object.entries(removed).map(([reason, read]) => [{ reason }, read()] as const),
    );
    counter("kvferry_daemon_evicted_bytes_total", "Bytes of entries evicted to make room.", () => c.bytesEvicted);
    counter("kvferry_daemon_put_waits_total", "Puts (parts) that found no room at once and waited for it.", () => c.putWaits);
    counter(
      "kvferry_daemon_put_timeouts_total",
      "Puts that waited the whole put deadline for room and failed with RESOURCE_EXHAUSTED.",
      () => c.putTimeouts,
    );
    mirroredCounter(
      this.registry,
      "kvferry_daemon_consume_returns_total",
      "Consuming reads whose entry was given back unconsumed, by cause (failed: the call failed; lapsed: never confirmed in time).",
      ["cause"] as const,
      () => [[{ cause: "failed" }, c.consumeReturns - c.consumeLapses], [{ cause: "lapsed" }, c.consumeLapses]],
    );

    // The client and peer APIs.
    this.#calls = new Counter({
      name: "kvferry_daemon_grpc_calls_total",
      help: "gRPC calls finished, by method (service/Method) and status code (OK, NOT_FOUND, RESOURCE_EXHAUSTED, ...).",
      labelNames: ["method", "code"] as const,
      registers,
    });

    // The data plane.
    this.#transfers = new Counter({
      name: "kvferry_daemon_transfers_total",
      help: "Entries this daemon moved as the initiator of a batch (BatchTransfer, or a Get that pulls), by mode (push, pull) and result (OK or the status code of the failure).",
      labelNames: ["mode", "result"] as const,
      registers,
    });
    this.#transferBytes = new Counter({
      name: "kvferry_daemon_transfer_bytes_total",
      help: "Bytes of the entries this daemon moved as the initiator of a batch, by mode.",
      labelNames: ["mode"] as const,
      registers,
    });
    this.#transferSeconds = new Histogram({
      name: "kvferry_daemon_transfer_duration_seconds",
      help: "Duration of the batches this daemon ran as the initiator, by mode.",
      labelNames: ["mode"] as const,
      buckets: TRANSFER_BUCKETS,
      registers,
    });
    const stats = () => engine.stats();
    counter("kvferry_daemon_data_sent_bytes_total", "Bytes the native data plane sent to peers.", () => stats().bytesSent);
    counter("kvferry_daemon_data_received_bytes_total", "Bytes the native data plane received from peers.", () => stats().bytesReceived);
    gauge("kvferry_daemon_data_peers_connected", "Peers the native data plane holds connections to now.", () => stats().peersConnected);
    counter("kvferry_daemon_data_handshakes_refused_total", "Incoming data-plane connections refused at the handshake (a wrong or missing cluster token, a timeout).", () => stats().handshakesRefused);
    counter("kvferry_daemon_data_connections_shed_total", "Incoming data-plane connections closed because too many were open.", () => stats().connectionsShed);
    gauge("kvferry_daemon_peers_known", "Peer APIs this daemon holds a channel to (greeted peers).", () => s.peersKnown());

    // The local path (clients on this node that map the pool).
    counter("kvferry_daemon_local_clients_admitted_total", "Clients on this node handed the pool on the local socket.", () => engine.localStats().admitted);
    counter("kvferry_daemon_local_clients_refused_total", "Clients refused on the local socket (another uid, not allowed).", () => engine.localStats().refused);
    gauge("kvferry_daemon_local_reservations", "Local reservations open now (room reserved, not yet committed).", () => s.localOpen().reservations);
    gauge("kvferry_daemon_local_loans", "Local loans open now (entries lent for reading in place).", () => s.localOpen().loans);

    // The metadata backend.
    const health = (pick: keyof RegistryHealth) =>
      new Gauge({
        name: `kvferry_daemon_metadata_${pick}`,
        help: pick === "connected"
          ? "1 while the metadata backend answers (embedded: always), else 0; labelled by backend."
          : "1 while this node's record is published and kept alive in the metadata backend, else 0; labelled by backend.",
        labelNames: ["backend"] as const,
        registers,
        collect() {
          this.set({ backend: s.backend }, s.metadata()?.[pick] === true ? 1 : 0);
        },
      });
    health("connected");
    health("registered");

    // process_* and nodejs_* (CPU, memory, event loop lag, heap, handles).
    collectDefaultMetrics({ register: this.registry });
  }

  /** A batch this daemon initiated has ended (each entry with its own result). */
  batchDone(mode: Mode, outcomes: readonly TransferOutcome[], seconds: number): void {
    let bytes = 0;
    for (const o of outcomes) {
      const result = o.error === undefined ? "OK" : GrpcStatus[grpcStatusOf(o.error)];
      this.#transfers.inc({ mode, result });
      bytes += o.bytes;
    }
    this.#transferBytes.inc({ mode }, bytes);
    this.#transferSeconds.observe({ mode }, seconds);
  }

  /** Counts every finished call of a gRPC server by method and status code. */
  readonly interceptor: ServerInterceptor = (method, call) =>
    new ServerInterceptingCall(
      call,
      new ResponderBuilder()
        .withSendStatus((st, next) => {
          this.#calls.inc({ method: method.path.replace(/^\//, ""), code: GrpcStatus[st.code] ?? String(st.code) });
          next(st);
        })
        .build(),
    );
}
