// Store types ↔ wire types. The store knows nothing of protobuf; this is the seam.
// (Node records ↔ wire: src/metadata/wire-node.ts.)
import { InvalidArgumentError } from "../errors.js";
import { EntryState as WireState, type EntryInfo as WireEntryInfo } from "../gen/kvferry/v1/kvferry.js";
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
