// Clients of other daemons' peer APIs, one per address, each knowing (after Hello)
// where that daemon's data plane listens.
//
// A peer is: unknown → greeted (Hello answered: node id, data address) ; a failed call
// leaves it greeted (the next call retries the channel); Forget drops it.
import { credentials, Metadata, type ServiceError } from "@grpc/grpc-js";
import { errorFromStatus, InvalidArgumentError, UnavailableError } from "../errors.js";
import { KvFerryPeerClient, type HelloResponse } from "../gen/kvferry/v1/peer.js";

export const TOKEN_METADATA = "kvferry-token";
/** Peers with an open channel at once; the oldest is closed beyond this. */
const MAX_PEERS = 1024;

/** "host:port" with a port; the only form a peer address takes. */
export function checkPeerAddress(address: string, field: string): string {
  if (!/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(address) || Number(address.split(":").pop()) > 65535) {
    throw new InvalidArgumentError(field, `${JSON.stringify(address)} is not a peer address "host:port"`);
  }
  return address;
}

export class Peer {
  readonly client: KvFerryPeerClient;
  hello: HelloResponse | undefined;

  constructor(readonly address: string, private readonly token: string) {
    this.client = new KvFerryPeerClient(address, credentials.createInsecure());
  }

  /** Calls one unary method with the cluster token and a deadline; errors come back typed. */
  call<Req, Res>(method: string, request: Req, timeoutMs: number): Promise<Res> {
    const metadata = new Metadata();
    metadata.set(TOKEN_METADATA, this.token);
    const fn = (this.client as unknown as Record<string, Function>)[method]!;
    return new Promise<Res>((resolve, reject) => {
      fn.call(this.client, request, metadata, { deadline: Date.now() + timeoutMs }, (err: ServiceError | null, res: Res) => {
        if (!err) return resolve(res);
        const typed = errorFromStatus(err.code, `peer ${this.address}: ${err.details}`);
        reject(typed);
      });
    });
  }
}

export class PeerDirectory {
  readonly #peers = new Map<string, Peer>();

  constructor(private readonly token: string, private readonly nodeId: () => string) {}

  /** The peer at `address`, greeted: its data address is known. */
  async get(address: string, timeoutMs: number): Promise<Peer & { hello: HelloResponse }> {
    let peer = this.#peers.get(address);
    if (peer === undefined) {
      if (this.#peers.size >= MAX_PEERS) {
        // Least recently added first: its channel closes, a later call re-creates it.
        const [oldest, gone] = this.#peers.entries().next().value!;
        gone.client.close();
        this.#peers.delete(oldest);
      }
      this.#peers.set(address, (peer = new Peer(address, this.token)));
    }
    if (peer.hello === undefined) {
      const hello = await peer.call<{ nodeId: string }, HelloResponse>("hello", { nodeId: this.nodeId() }, timeoutMs);
      try {
        checkPeerAddress(hello.dataAddress, "data_address");
      } catch {
        throw new UnavailableError(`peer ${address} advertised no usable data address (${JSON.stringify(hello.dataAddress)})`);
      }
      peer.hello = hello;
    }
    return peer as Peer & { hello: HelloResponse };
  }

  /** Drops what is known of a peer (its data address may have changed). */
  forget(address: string): void {
    const peer = this.#peers.get(address);
    if (peer !== undefined) peer.hello = undefined;
  }

  close(): void {
    for (const peer of this.#peers.values()) peer.client.close();
    this.#peers.clear();
  }
}
