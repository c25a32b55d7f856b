// Loads the native addon (built by node-gyp into build/Release/) and types its surface.
import { createRequire } from "node:module";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

export interface NativeOptions {
  poolSize: number;
  token: string;
  listenHost: string;
  listenPort: number;
  connectionsPerPeer: number;
  sliceBytes: number;
  ioTimeoutMs: number;
}

export interface NativeOp {
  id: number;
  kind: "write" | "read";
  peer: string;
  localOffset: number;
  remoteHandle: bigint;
  remoteOffset: number;
  length: number;
}

/** Engine status codes, as native/engine/status.cc names them. */
export type NativeCode =
  | "OK" | "INVALID_ARGUMENT" | "NOT_FOUND" | "OUT_OF_RANGE" | "RESOURCE_EXHAUSTED" | "UNAVAILABLE"
  | "CANCELLED" | "DEADLINE_EXCEEDED" | "PERMISSION_DENIED" | "NOT_SUPPORTED" | "INTERNAL";

export type NativeCompletion =
  | { kind: "op"; id: number; code: NativeCode; message: string; bytes: number; micros: number }
  | { kind: "handle-released"; id: bigint; code: NativeCode; message: string; bytes: number; micros: number };

export interface NativeEngine {
  poolBuffer(): ArrayBuffer;
  /** An offset, or -1 when no extent fits now. */
  allocate(size: number): number;
  free(offset: number): void;
  poolStats(): { capacity: number; used: number; freeExtents: number; largestFree: number; allocations: number };
  expose(offset: number, length: number): bigint;
  revoke(handle: bigint): void;
  dataPort(): number;
  submit(ops: NativeOp[]): void;
  cancel(id: number): void;
  disconnect(peer: string): void;
  stats(): {
    poolUsed: number; poolCapacity: number; bytesSent: number; bytesReceived: number; opsCompleted: number;
    opsFailed: number; handshakesRefused: number; framesRefused: number; peersConnected: number;
  };
  shutdown(): void;
}

interface Addon {
  Engine: new (options: NativeOptions, onCompletions: (batch: NativeCompletion[]) => void) => NativeEngine;
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
