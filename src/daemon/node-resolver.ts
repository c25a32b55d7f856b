// What a BatchTransfer's `target` or a Get's `source` names: a node id known to the
// metadata backend (looked up first, so a node id shaped like "host:port" — the default
// one is — still means the node), else a peer API address "host:port".
import { InvalidArgumentError, NotFoundError, UnavailableError } from "../errors.js";
import type { NodeRegistry } from "../metadata/registry.js";
import { checkPeerAddress } from "./peers.js";

/** What a node id may look like (config's node_id). */
const NODE_ID = /^[\x21-\x7e]{1,256}$/;

/** The peer API address to call, and the node id it was resolved from (if it was). */
export interface ResolvedPeer {
  address: string;
  nodeId?: string;
}

export type ResolvePeer = (target: string, field: string) => Promise<ResolvedPeer>;

export function nodeResolver(registry: () => NodeRegistry | undefined): ResolvePeer {
  return async (target, field) => {
    if (!NODE_ID.test(target)) {
      throw new InvalidArgumentError(field, `${JSON.stringify(target)} is neither a node id nor a peer address "host:port"`);
    }
    const nodes = registry();
    let lookupFailure: Error | undefined;
    if (nodes !== undefined) {
      try {
        const node = await nodes.lookup(target);
        if (node !== undefined) return { address: node.peerAddress, nodeId: node.nodeId };
      } catch (err) {
        lookupFailure = err as Error;
      }
    }
    // Something that was meant as an address (a port, a scheme, a path) is checked as one.
    if (/:\d*$|\//.test(target)) return { address: checkPeerAddress(target, field) };
    if (lookupFailure !== undefined) {
      throw new UnavailableError(`${field}: cannot look node ${JSON.stringify(target)} up: ${lookupFailure.message}`);
    }
    throw new NotFoundError(
      `${field}: node ${JSON.stringify(target)} is not known to ${nodes?.where ?? "the metadata backend"} ` +
        `(it left, or never registered); a peer address needs a port: "host:port"`,
    );
  };
}
