// Loads the native addon (built by node-gyp into build/Release/) and types its surface.
import { createRequire } from "node:module";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

export interface NativeOptions {
  poolSize: number;
  /** The transport (native/engine/transport_factory.h): "tcp", or "rdma" when built with UCX. */
  protocol: string;
  /** "rdma": device names (rails), comma-separated; "" for UCX's choice. */
  devices: string;
  token: string;
  listenHost: string;
  listenPort: number;
  connectionsPerPeer: number;
  sliceBytes: number;
  ioTimeoutMs: number;
  handshakeTimeoutMs: number;
  /** Data-plane I/O threads (epoll loops), shared by incoming and outgoing connections; 0: the engine's default. */
  ioThreads: number;
}

/** Ops to one peer, as columns (one element per op). kinds: 1 write, 2 read. */
export interface NativeOpColumns {
  ids: Float64Array;
  kinds: Uint8Array;
  localOffsets: Float64Array;
  remoteHandles: BigUint64Array;
  remoteOffsets: Float64Array;
  lengths: Float64Array;
  /** Extents op i gathers (0: its localOffsets entry), with `gather`: their [offset, size] pairs in op order. */
  gatherCounts?: Uint32Array;
  gather?: Float64Array;
}

/** Engine status codes, as native/engine/status.cc names them. */
export type NativeCode =
  | "OK" | "INVALID_ARGUMENT" | "NOT_FOUND" | "OUT_OF_RANGE" | "RESOURCE_EXHAUSTED" | "UNAVAILABLE"
  | "CANCELLED" | "DEADLINE_EXCEEDED" | "PERMISSION_DENIED" | "NOT_SUPPORTED" | "INTERNAL";

/** Engine codes by number, in native/engine/status.h's order. */
export const NATIVE_CODES: readonly NativeCode[] = [
  "OK", "INVALID_ARGUMENT", "NOT_FOUND", "OUT_OF_RANGE", "RESOURCE_EXHAUSTED", "UNAVAILABLE",
  "CANCELLED", "DEADLINE_EXCEEDED", "PERMISSION_DENIED", "NOT_SUPPORTED", "INTERNAL",
];

/** One drained batch of completions, as columns; `messages` only for failed ops (by index). */
export interface NativeCompletions {
  ids: Float64Array;
  codes: Int32Array;
  bytes: Float64Array;
  micros: Float64Array;
  messages: Record<number, string>;
  /** Revoked handles whose last access ended: their extents may be freed. */
  released: BigUint64Array;
}

export interface NativeEngine {
  poolBuffer(): ArrayBuffer;
  /** An offset, or -1 when no extent fits now. */
  allocate(size: number): number;
  /**
   * Several extents holding `size` bytes when no single one does, as [offset, size, …]
   * (sizes rounded; they add up to the rounded size), or null when the bytes are not free
   * in at most `maxExtents` extents (then nothing was allocated). Each extent is freed alone.
   */
  allocateScattered(size: number, maxExtents: number): Float64Array | null;
  free(offset: number): void;
  poolStats(): { capacity: number; used: number; freeExtents: number; largestFree: number; allocations: number };
  /** One handle over the extents [offset, size, …] seen as one range, in order. */
  exposeExtents(extents: Float64Array, access: "read" | "write"): bigint;
  /** Revokes each: 1 where revoked (release reported later), 0 where unknown. */
  revokeAll(handles: BigUint64Array): Uint8Array;
  dataPort(): number;
  /** What peers name to reach this engine when it is not host:dataPort ("ucx:…" for rdma; "" for tcp). */
  connectionInfo(): string;
  /** Keep the event loop alive while completions are awaited / let it go. */
  ref(): void;
  unref(): void;
  submit(peer: string, ops: NativeOpColumns): void;
  cancel(id: number): void;
  disconnect(peer: string): void;
  stats(): {
    poolUsed: number; poolCapacity: number; bytesSent: number; bytesReceived: number; opsCompleted: number;
    opsFailed: number; handshakesRefused: number; framesRefused: number; connectionsShed: number; peersConnected: number;
  };
  shutdown(): void;
  /** Hands the pool's memfd to admitted clients on a Unix socket (stopped by shutdown). */
  serveLocal(options: LocalSocketOptions): void;
  localStats(): { admitted: number; refused: number };
}

export interface LocalSocketOptions {
  path: string;
  mode: number;
  /** JSON members sent to an admitted client beside "ok": true. */
  header: string;
  allowedUids: number[];
  allowedGids: number[];
}

interface Addon {
  Engine: new (options: NativeOptions, onCompletions: (batch: NativeCompletions) => void) => NativeEngine;
  /** The pool of the daemon at a local socket: its header line, and the mapping unless refused. */
  mapLocalPool(path: string, timeoutMs: number): { header: string; buffer?: ArrayBuffer };
  /** The transports this build has: "tcp", and "rdma" when it was built with UCX. */
  protocols: string[];
}

const ADDON = fileURLToPath(new URL("../../build/Release/kvferry_native.node", import.meta.url));

let addon: Addon | undefined;

export function loadAddon(): Addon {
  if (addon === undefined) {
    if (!existsSync(ADDON)) {
      throw new Error(`the native engine is not built (${ADDON}): run \`npm run build\``);
    }
    addon = createRequire(import.meta.url)(ADDON) as Addon;
  }
  return addon;
}
