// One node id, one running daemon. Transfers name nodes by id, so two daemons answering to
// one id would receive each other's KV. A record under an id that is not the caller's own
// was either left behind by a daemon that stopped (crashed, or restarted on other ports):
// it may be taken over at once; or it belongs to a daemon that runs: the id is taken.
// Which of the two is asked of the record's peer API, not guessed from a TTL.
import { AlreadyExistsError } from "../errors.js";
import type { NodeRecord } from "./node.js";

/**
 * Asks the daemon whose peer API is at `peerAddress` which node it is. Rejects when nothing
 * answers there in time; an AlreadyExistsError means it refused us for holding its id.
 */
export type WhoIs = (peerAddress: string) => Promise<string>;

/**
 * Throws AlreadyExistsError when `held`, a record under `self`'s node id, belongs to
 * another daemon that is running; resolves when there is no such record or it is stale.
 */
export async function checkNodeIdFree(self: Pick<NodeRecord, "nodeId" | "peerAddress">, held: NodeRecord | undefined, whoIs: WhoIs): Promise<void> {
  // This daemon's own record, or one a daemon before it left on the ports it holds now.
  if (held === undefined || held.peerAddress === self.peerAddress) return;
  let answer: string;
  try {
    answer = await whoIs(held.peerAddress);
  } catch (err) {
    if (err instanceof AlreadyExistsError) throw nodeIdTaken(held);
    return; // nobody answers there: a record left behind
  }
  if (answer === held.nodeId) throw nodeIdTaken(held);
}

/** The id is held by the running daemon of `holder`. */
export function nodeIdTaken(holder: NodeRecord): AlreadyExistsError {
  return new AlreadyExistsError(
    `node id ${JSON.stringify(holder.nodeId)} is held by a running daemon (peer API ${holder.peerAddress}, client API ${holder.clientAddress}, host ${JSON.stringify(holder.hostname)}); each daemon needs its own node_id`,
  );
}
