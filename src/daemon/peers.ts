// Clients of other daemons' peer APIs, one per address, each knowing (after Hello)
// where that daemon's data plane listens.
//
// A peer is: unknown → greeted (Hello answered: node id, data address) ; a failed call
// leaves it greeted (the next call retries the channel); Forget drops it.
import { credentials, Metadata, type ServiceError } from "@grpc/grpc-js";
import { errorFromStatus, InvalidArgumentError, UnavailableError } from "../errors.js";
import { KvFerryPeerClient, type HelloRequest, type HelloResponse } from "../gen/kvferry/v1/peer.js";

export const TOKEN_METADATA = "kvferry-token";
/**
 * A peer that was down (not started yet, restarting) is retried within a second:
 * grpc-js's default backoff grows to two minutes, during which every call fails at once.
 */
const CHANNEL_OPTIONS = { "grpc.initial_reconnect_backoff_ms": 100, "grpc.max_reconnect_backoff_ms": 1_000 };
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
    this.client = new KvFerryPeerClient(address, credentials.createInsecure(), CHANNEL_OPTIONS);
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

  /** `hello` is what this daemon says of itself when it greets a peer. */
  constructor(private readonly token: string, private readonly hello: () => HelloRequest) {}

  /** The peer at `address`, greeted: its data address is known. */
  async get(address: string, timeoutMs: number): Promise<Peer & { hello: HelloResponse }> {
    const peer = this.#peer(address);
    return peer.hello === undefined ? this.greet(address, timeoutMs) : (peer as Peer & { hello: HelloResponse });
  }

  /** Says Hello to the peer at `address` (again, if it was greeted before) and keeps its answer. */
  async greet(address: string, timeoutMs: number): Promise<Peer & { hello: HelloResponse }> {
    const peer = this.#peer(address);
    const hello = await peer.call<HelloRequest, HelloResponse>("hello", this.hello(), timeoutMs);
    try {
      checkPeerAddress(hello.dataAddress, "data_address");
    } catch {
      throw new UnavailableError(`peer ${address} advertised no usable data address (${JSON.stringify(hello.dataAddress)})`);
    }
    peer.hello = hello;
    return peer as Peer & { hello: HelloResponse };
  }

  #peer(address: string): Peer {
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
    return peer;
  }

  /**
   * The peer at `address` just showed it is up (it greeted us). If our channel to it has
   * never worked, it may sit in reconnect backoff: start afresh so the next call connects.
   */
  revive(address: string): void {
    const peer = this.#peers.get(address);
    if (peer === undefined || peer.hello !== undefined) return;
    peer.client.close();
    this.#peers.delete(address);
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
