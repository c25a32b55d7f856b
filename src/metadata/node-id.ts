// One node id, one running daemon. Transfers name nodes by id, so two daemons answering to
// one id would receive each other's KV. A record under an id that is not the caller's own
// was either left behind by a daemon that stopped (crashed, or restarted on other ports):
// it may be taken over at once; or it belongs to a daemon that runs: the id is taken.
// Which of the two is asked of the record's peer API, not guessed from a TTL; only when
// the question gets no clear answer (a holder that is paused, a host that drops packets)
// does the caller fall back to waiting for the record to lapse.
import { AlreadyExistsError, UnavailableError } from "../errors.js";
import type { NodeRecord } from "./node.js";

/** How a refused connection reads in grpc-js's UNAVAILABLE details ("connect ECONNREFUSED 127.0.0.1:P"). */
const REFUSED = /ECONNREFUSED|connection refused/i;

/** Who answered at a peer API: its node id and the data address it advertises. */
export interface WhoIsAnswer {
  nodeId: string;
  dataAddress: string;
}

/**
 * Asks the daemon whose peer API is at `peerAddress` which node it is, with a short
 * deadline. An UnavailableError naming a refused connection means nothing listens there;
 * an AlreadyExistsError that it refused us for claiming its id; anything else leaves the
 * question open.
 */
export type WhoIs = (peerAddress: string) => Promise<WhoIsAnswer>;

/** free: no running daemon holds the id; taken: one does; unknown: its holder did not say. */
export type NodeIdVerdict = { verdict: "free" } | { verdict: "taken" } | { verdict: "unknown"; why: string };

type Claimant = Pick<NodeRecord, "nodeId" | "peerAddress" | "dataAddress">;

/** Whether `held`, a record under `claimant`'s node id, belongs to another daemon that runs. */
export async function nodeIdVerdict(claimant: Claimant, held: NodeRecord | undefined, whoIs: WhoIs): Promise<NodeIdVerdict> {
  // No record; or the claimant's own, or one a daemon before it left on the ports it holds now.
  if (held === undefined || held.peerAddress === claimant.peerAddress) return { verdict: "free" };
  let answer: WhoIsAnswer;
  try {
    answer = await whoIs(held.peerAddress);
  } catch (err) {
    if (err instanceof AlreadyExistsError) return { verdict: "taken" };
    // Refused: nothing listens there any more, a record left behind. Any other failure (a
    // timeout, a name that does not resolve here, a peer that cannot prove the token) says nothing of the holder.
    if (err instanceof UnavailableError && REFUSED.test(err.message)) return { verdict: "free" };
    return { verdict: "unknown", why: (err as Error).message };
  }
  // The claimant itself, reached under another name for its address (0.0.0.0, a hostname).
  if (answer.dataAddress === claimant.dataAddress) return { verdict: "free" };
  return answer.nodeId === held.nodeId ? { verdict: "taken" } : { verdict: "free" };
}

/** The id is held by the running daemon of `holder`. */
export function nodeIdTaken(holder: NodeRecord): AlreadyExistsError {
  return new AlreadyExistsError(
    `node id ${JSON.stringify(holder.nodeId)} is held by a running daemon (peer API ${holder.peerAddress}, client API ${holder.clientAddress}, host ${JSON.stringify(holder.hostname)}); each daemon needs its own node_id`,
  );
}
