// What a backend knows of the nodes, and the join / update / leave events that follow
// from each change. Backends feed it (a watch, a poll, a handshake); it diffs and tells
// the listeners. A listener that throws is logged and kept; it cannot stop the others.
import type { Logger } from "pino";
import { byNodeId, contentOf, type NodeRecord } from "./node.js";
import type { NodeEvent } from "./registry.js";

export class NodeCache {
  readonly #nodes = new Map<string, NodeRecord>();
  readonly #listeners = new Set<(event: NodeEvent) => void>();

  constructor(private readonly log: Logger) {}

  get(nodeId: string): NodeRecord | undefined {
    return this.#nodes.get(nodeId);
  }

  /** Every node, ordered by id. */
  list(): NodeRecord[] {
    return [...this.#nodes.values()].sort(byNodeId);
  }

  /** One node written: a join if new, an update if its record changed (beyond being refreshed). */
  set(node: NodeRecord): void {
    const known = this.#nodes.get(node.nodeId);
    this.#nodes.set(node.nodeId, node);
    if (known === undefined) this.#emit({ type: "join", node });
    else if (contentOf(known) !== contentOf(node)) this.#emit({ type: "update", node });
  }

  /** One node gone: a leave if it was known. */
  delete(nodeId: string): void {
    if (this.#nodes.delete(nodeId)) this.#emit({ type: "leave", nodeId });
  }

  /** The whole set as read now (a poll, a watch's initial read): joins, updates and leaves. */
  replace(nodes: Iterable<NodeRecord>): void {
    const seen = new Set<string>();
    for (const node of nodes) {
      seen.add(node.nodeId);
      this.set(node);
    }
    for (const id of [...this.#nodes.keys()]) if (!seen.has(id)) this.delete(id);
  }

  /** Joins for every node known now are delivered at once to a new listener. */
  watch(listener: (event: NodeEvent) => void): () => void {
    this.#listeners.add(listener);
    for (const node of this.list()) this.#call(listener, { type: "join", node });
    return () => this.#listeners.delete(listener);
  }

  #emit(event: NodeEvent): void {
    for (const listener of this.#listeners) this.#call(listener, event);
  }

  #call(listener: (event: NodeEvent) => void, event: NodeEvent): void {
    try {
      listener(event);
    } catch (err) {
      this.log.error({ err, event: event.type }, "a node registry listener threw");
    }
  }
}
