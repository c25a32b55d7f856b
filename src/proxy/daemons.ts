// The kvferry daemons of the instances' nodes, as the proxy sees them.
//
// A DaemonLink wraps the typed client of one daemon's client API and what the proxy must
// know about it: its node id (GetServerInfo) and its peer API address (its own record in
// ListNodes), which is what another daemon's BatchTransfer names as target and what a
// decode-side Get names as source. Both are learnt at start-up and again on every health
// check, since a restarted daemon may come back with new ports. Instances on one node
// share one link. The proxy moves KV through a link (push) and frees a transfer id that a
// failed or aborted request left behind (release; NOT_FOUND means there was nothing left).
import type { Logger } from "pino";
import { KvferryClient } from "../client/client.js";
import { NotFoundError } from "../errors.js";
import type { TransferResult } from "../gen/kvferry/v1/kvferry.js";

export type ReleaseResult = "released" | "absent" | "failed";

export class DaemonLink {
  readonly client: KvferryClient;
  /** Learnt from the daemon; undefined until it first answered. */
  nodeId: string | undefined;
  peerAddress: string | undefined;
  /** Why the last refresh failed; undefined when it succeeded. */
  lastError: string | undefined = "not asked yet";
  #refreshing: Promise<boolean> | undefined;

  constructor(readonly address: string, private readonly log: Logger) {
    this.client = new KvferryClient(address);
  }

  /**
   * Asks the daemon who it is and where its peer API listens. Concurrent callers (the
   * instances sharing this node) share one round. Resolves to whether it answered.
   */
  refresh(timeoutMs: number): Promise<boolean> {
    this.#refreshing ??= this.#refresh(timeoutMs).finally(() => (this.#refreshing = undefined));
    return this.#refreshing;
  }

  async #refresh(timeoutMs: number): Promise<boolean> {
    try {
      const { nodeId, peerAddress } = await this.client.identity({ timeoutMs });
      if (peerAddress === undefined) throw new Error(`node ${nodeId} is missing from its own ListNodes answer`);
      if (peerAddress !== this.peerAddress || nodeId !== this.nodeId) {
        this.log.info({ daemon: this.address, nodeId, peer: peerAddress }, "daemon identified");
      }
      this.nodeId = nodeId;
      this.peerAddress = peerAddress;
      this.lastError = undefined;
      return true;
    } catch (err) {
      const message = (err as Error).message;
      if (this.lastError === undefined) this.log.warn({ daemon: this.address, err: message }, "daemon unreachable");
      this.lastError = message;
      return false;
    }
  }

  /**
   * BatchTransfer PUSH of one entry to the daemon whose peer API is `targetPeer`. Not
   * abortable: a push in flight is waited for (up to its deadline), so that a release
   * after it finds the entry wherever it ended up.
   */
  async push(transferId: string, targetPeer: string, deadlineMs: number): Promise<TransferResult> {
    // The call's own deadline is a little past the transfer's, so that the daemon's
    // per-id answer (DEADLINE_EXCEEDED with a message) is what comes back.
    const res = await this.client.batchTransfer([transferId], targetPeer, "push", { deadlineMs, timeoutMs: deadlineMs + 2000 });
    const result = res.results.find((r) => r.transferId === transferId);
    if (result === undefined) throw new Error(`BatchTransfer answered no result for ${transferId}`);
    return result;
  }

  /** Frees the entry if it is still here; says why when the call failed. Never throws. */
  async release(transferId: string, timeoutMs = 5000): Promise<{ result: ReleaseResult; error?: string }> {
    try {
      await this.client.release(transferId, { timeoutMs });
      return { result: "released" };
    } catch (err) {
      if (err instanceof NotFoundError) return { result: "absent" };
      return { result: "failed", error: (err as Error).message };
    }
  }

  close(): void {
    this.client.close();
  }
}

/** One link per daemon address. */
export class DaemonDirectory {
  readonly #links = new Map<string, DaemonLink>();
  constructor(private readonly log: Logger) {}

  get(address: string): DaemonLink {
    let link = this.#links.get(address);
    if (link === undefined) this.#links.set(address, (link = new DaemonLink(address, this.log)));
    return link;
  }

  all(): DaemonLink[] {
    return [...this.#links.values()];
  }

  close(): void {
    for (const link of this.#links.values()) link.close();
  }
}
