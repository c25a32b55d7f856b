// The node registry: where daemons publish who they are and find each other.
//
// One interface, four backends (embedded peer-to-peer, etcd, redis, http). A backend
// keeps this node's record alive while the daemon runs (a lease, a TTL, or a heartbeat),
// knows the other nodes (a watch-fed or polled cache), and tells listeners when a node
// joins or leaves. Records are JSON (node.ts), the same in every backend, one key per
// node under a prefix (default "kvferry/v1/"): `${prefix}nodes/${nodeId}`.
import type { MetadataBackend } from "../config/metadata.js";
import type { NodeRecord } from "./node.js";

export type { NodeRecord } from "./node.js";

export type NodeEvent =
  /** A node not known before (also every node present when a watch starts). */
  | { type: "join"; node: NodeRecord }
  /** A known node's record changed (e.g. its pool usage, or its addresses after a restart). */
  | { type: "update"; node: NodeRecord }
  /** A node deregistered, or its lease / TTL / heartbeat lapsed. */
  | { type: "leave"; nodeId: string };

export interface NodeRegistry {
  readonly backend: MetadataBackend;
  /** For messages and logs: e.g. `etcd at 127.0.0.1:2379 (prefix "kvferry/v1/")`. */
  readonly where: string;

  /**
   * Publishes this node's record and keeps it alive until close(): refreshed every
   * ttl/3, re-registered by itself when the backend lost it (a lapsed lease, a restarted
   * server). Resolves once written.
   * @throws UnavailableError naming the backend when it cannot be reached.
   */
  register(self: NodeRecord): Promise<void>;

  /** Changes fields of this node's record (pool usage); written with the next refresh. */
  update(patch: Partial<Omit<NodeRecord, "nodeId">>): void;

  /** The node's record, or undefined when the backend does not know it (or it lapsed). */
  lookup(nodeId: string): Promise<NodeRecord | undefined>;

  /** Every live node, this one included, ordered by node id. */
  list(): Promise<NodeRecord[]>;

  /** Calls `listener` on joins, updates and leaves; returns the unsubscribe function. */
  watch(listener: (event: NodeEvent) => void): () => void;

  /** Where this node stands with the backend now (metrics, /health). */
  health(): RegistryHealth;

  /** Deregisters this node (best effort, bounded in time) and closes connections. Idempotent. */
  close(): Promise<void>;
}

export interface RegistryHealth {
  /** The backend answers (embedded: always; it has no server). */
  connected: boolean;
  /** This node's record is published and kept alive (not lost, not closed). */
  registered: boolean;
}

/** What every backend is given besides its server address. */
export interface RegistryOptions {
  /** Key prefix, ending in "/" (metadata_prefix). */
  prefix: string;
  /** Lifetime of a record that is not refreshed (metadata_ttl_ms); refreshed every ttl/3. */
  ttlMs: number;
}

/** The key of a node's record. */
export function nodeKey(prefix: string, nodeId: string): string {
  return `${prefix}nodes/${nodeId}`;
}

/** The prefix under which every node record lives. */
export function nodesPrefix(prefix: string): string {
  return `${prefix}nodes/`;
}
