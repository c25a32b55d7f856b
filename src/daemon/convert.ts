// Store types ↔ wire types. The store knows nothing of protobuf; this is the seam.
import { InvalidArgumentError } from "../errors.js";
import { EntryState as WireState, type EntryInfo as WireEntryInfo } from "../gen/kvferry/v1/kvferry.js";
import type { NodeInfo as WireNodeInfo } from "../gen/kvferry/v1/node.js";
import { fromWireEngineRole, toWireEngineRole } from "../metadata/engine-wire.js";
import { decodeNode, type NodeRecord } from "../metadata/node.js";
import type { EntryInfo, EntryState } from "../store/entry.js";

export function toWireEntry(info: EntryInfo): WireEntryInfo {
  return {
    transferId: info.transferId,
    state: info.state === "sealed" ? WireState.ENTRY_STATE_SEALED : WireState.ENTRY_STATE_OPEN,
    parts: info.parts,
    partCount: info.partCount,
    bytes: info.bytes,
    leaseRemainingMs: info.leaseRemainingMs,
    createdAtMs: info.createdAtMs,
    lastAccessMs: info.lastAccessMs,
    readers: info.readers,
    writers: info.writers,
  };
}

export function fromWireState(state: WireState): EntryState | undefined {
  switch (state) {
    case WireState.ENTRY_STATE_UNSPECIFIED: return undefined;
    case WireState.ENTRY_STATE_OPEN: return "open";
    case WireState.ENTRY_STATE_SEALED: return "sealed";
    default: throw new InvalidArgumentError("state", `${state} is not an EntryState`);
  }
}

/** A registry record as the wire's NodeInfo (Hello, ListNodes). */
export function toWireNode(node: NodeRecord): WireNodeInfo {
  return {
    nodeId: node.nodeId,
    hostname: node.hostname,
    clientAddress: node.clientAddress,
    peerAddress: node.peerAddress,
    dataAddress: node.dataAddress,
    transports: node.transports.map((t) => ({
      name: t.name,
      params: Object.entries(t.params).map(([key, value]) => ({ key, value: String(value) })),
    })),
    poolBytes: node.poolBytes,
    poolUsedBytes: node.poolUsedBytes,
    version: node.version,
    startedAtMs: node.startedAt,
    updatedAtMs: node.updatedAt,
    engines: node.engines.map((e) => ({ url: e.url, role: toWireEngineRole(e.role), models: e.models })),
  };
}


/** A peer's NodeInfo as a registry record; its ids and addresses are checked like a stored record's. */
export function fromWireNode(info: WireNodeInfo): NodeRecord | Error {
  return decodeNode(
    JSON.stringify({
      ...info,
      transports: info.transports.map((t) => ({ name: t.name, params: Object.fromEntries(t.params.map((p) => [p.key, p.value])) })),
      engines: info.engines.map((e) => ({ ...e, role: fromWireEngineRole(e.role) })),
      startedAt: info.startedAtMs,
      updatedAt: info.updatedAtMs,
    }),
  );
}
