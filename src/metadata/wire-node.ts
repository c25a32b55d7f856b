// Node records ↔ the wire's NodeInfo (Hello, ListNodes, `kvferry status`). The message
// type is generated code with no gRPC in it; the daemon and the CLI both convert here.
import type { NodeInfo as WireNodeInfo } from "../gen/kvferry/v1/node.js";
import { decodeNode, type NodeRecord } from "./node.js";

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
  };
}

/** A peer's NodeInfo as a registry record; its ids and addresses are checked like a stored record's. */
export function fromWireNode(info: WireNodeInfo): NodeRecord | Error {
  return decodeNode(
    JSON.stringify({
      ...info,
      transports: info.transports.map((t) => ({ name: t.name, params: Object.fromEntries(t.params.map((p) => [p.key, p.value])) })),
      startedAt: info.startedAtMs,
      updatedAt: info.updatedAtMs,
    }),
  );
}
