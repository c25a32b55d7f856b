// The simulator's link to its node's kvferry daemon: the typed client, and who the daemon
// is (its node id, and its peer API address when the metadata backend knows it), which a
// prefill instance hands to the decode side in kv_transfer_params.
import { KvferryClient } from "../client/client.js";

export interface DaemonIdentity {
  nodeId: string;
  /** The daemon's peer API address, when ListNodes lists it. */
  peerAddress?: string;
}

export class DaemonLink {
  readonly client: KvferryClient;
  #identity: Promise<DaemonIdentity> | undefined;

  constructor(readonly address: string) {
    this.client = new KvferryClient(address);
  }

  /** Connects (up to timeoutMs) and learns the daemon's identity; rejects if it cannot. */
  async connect(timeoutMs: number): Promise<DaemonIdentity> {
    await this.client.waitForReady(timeoutMs);
    return this.identity();
  }

  /** The daemon's identity, asked once and remembered (asked again after a failure). */
  identity(): Promise<DaemonIdentity> {
    if (this.#identity === undefined) {
      this.#identity = this.#ask();
      this.#identity.catch(() => (this.#identity = undefined));
    }
    return this.#identity;
  }

  #ask(): Promise<DaemonIdentity> {
    // Without a peer address (ListNodes failed) the daemon still serves its own entries.
    return this.client.identity({ timeoutMs: 5000 });
  }

  close(): void {
    this.client.close();
  }
}
