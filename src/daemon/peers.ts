// Clients of other daemons' peer APIs, one per address, each knowing (after Hello)
// where that daemon's data plane listens.
//
// A peer's session: none → opening (the handshake of peer-auth.ts) → open; a call the
// server answers UNAUTHENTICATED (it forgot the session) drops it, and the call is made
// once more after a fresh handshake. The handshake stops, sending nothing more, when the
// server cannot prove the cluster token: a listener that is no daemon of this cluster
// learns a random nonce and nothing else.
// A peer is: unknown → greeted (Hello answered: node id, data address); a failed call
// leaves it greeted (the next call retries the channel); Forget drops what Hello said.
// Its channel is replaced (revive) or closed (eviction, close) only once no call is on it.
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import { Client, connectivityState, credentials, Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { DeadlineExceededError, InternalError, InvalidArgumentError, PermissionDeniedError, UnauthenticatedError, UnavailableError } from "../errors.js";
import { errorFromStatus } from "../grpc-errors.js";
import {
  ConfirmSessionRequest,
  ConfirmSessionResponse,
  KvFerryPeerService,
  OpenSessionRequest,
  type HelloRequest,
  type HelloResponse,
} from "../gen/kvferry/v1/peer.js";
import {
  COUNTER_METADATA,
  MAC_METADATA,
  NONCE_BYTES,
  PEER_API_PURPOSE,
  SESSION_METADATA,
  bodyDigest,
  callMac,
  clientProof,
  newNonce,
  purposeKey,
  sameProof,
  serverProof,
  sessionKey,
} from "./peer-auth.js";

/**
 * A peer that was down (not started yet, restarting) is retried within a second:
 * grpc-js's default backoff grows to two minutes, during which every call fails at once.
 */
const CHANNEL_OPTIONS = { "grpc.initial_reconnect_backoff_ms": 100, "grpc.max_reconnect_backoff_ms": 1_000 };
/**
 * A call on a channel in reconnect backoff first waits this long (within its deadline) for the
 * channel to reconnect: the longest backoff and a connect. Without it the call fails at once
 * with the last attempt's error, though the peer may be listening again by now (a daemon that
 * restarted, or another that took its ports while its start was slow).
 */
const RECONNECT_WAIT_MS = 2_000;
/** Peers with an open channel at once; the oldest is closed beyond this. */
const MAX_PEERS = 1024;
/** A handshake (two round trips) gives up after this; callers stop waiting at their own deadlines. */
const HANDSHAKE_TIMEOUT_MS = 10_000;

/**
 * A method of the peer API that needs a session (all but the handshake's two), as its
 * generated definition: `peer.call(KvFerryPeerService.hello, request, ms)`.
 */
export type PeerMethod = (typeof KvFerryPeerService)[Exclude<keyof typeof KvFerryPeerService, "openSession" | "confirmSession">];
type RequestOf<M extends PeerMethod> = Parameters<M["requestSerialize"]>[0];
type ResponseOf<M extends PeerMethod> = ReturnType<M["responseDeserialize"]>;

/** "host:port" with a port; the only form a peer address takes. */
export function checkPeerAddress(address: string, field: string): string {
  if (!/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(address) || Number(address.split(":").pop()) > 65535) {
    throw new InvalidArgumentError(field, `${JSON.stringify(address)} is not a peer address "host:port"`);
  }
  return address;
}

/** "host:port" (checked) with the host as a numeric IPv4 or [IPv6] address, looked up when it is a name (IPv4 first). */
/** A TCP peer's data address from its Hello, numeric. */
async function tcpTarget(hello: HelloResponse, peer: string): Promise<string> {
  try {
    checkPeerAddress(hello.dataAddress, "data_address");
  } catch {
    throw new UnavailableError(`peer ${peer} advertised no usable data address (${JSON.stringify(hello.dataAddress)})`);
  }
  return numericAddress(hello.dataAddress, peer);
}

/** Longest UCX connection info taken from a peer (16 rails of worker addresses, base64). */
const MAX_UCX_INFO = 64 << 10;

/** An rdma peer's UCX connection info ("ucx:" and its rails' worker addresses) from its Hello's record. */
function ucxTarget(hello: HelloResponse, peer: string): string {
  const info = hello.node?.transports.find((t) => t.name === "rdma")?.params.find((p) => p.key === "connectionInfo")?.value ?? "";
  if (!/^ucx:[A-Za-z0-9_,-]+$/.test(info) || info.length > MAX_UCX_INFO) {
    throw new UnavailableError(`peer ${peer} advertised no usable UCX connection info (transports[rdma].params.connectionInfo: ${JSON.stringify(info.slice(0, 64))})`);
  }
  return info;
}

async function numericAddress(dataAddress: string, peer: string): Promise<string> {
  const at = dataAddress.lastIndexOf(":");
  const host = dataAddress.slice(0, at).replace(/^\[|\]$/g, "");
  if (isIP(host) !== 0) return dataAddress;
  try {
    // An IPv4 address when the name has one (a data plane on "localhost" listens there).
    const found = (await lookup(host, { all: true })).sort((x, y) => x.family - y.family)[0]!;
    return `${found.family === 6 ? `[${found.address}]` : found.address}${dataAddress.slice(at)}`;
  } catch (err) {
    throw new UnavailableError(`peer ${peer}'s data address ${JSON.stringify(dataAddress)} does not resolve: ${(err as Error).message}`);
  }
}

/** One gRPC channel and the calls on it; once retired it closes when its last call ends. */
class Channel {
  readonly #client: Client;
  #inFlight = 0;
  #retired = false;
  closed = false;

  constructor(address: string, retired: boolean) {
    this.#client = new Client(address, credentials.createInsecure(), CHANNEL_OPTIONS);
    this.#retired = retired;
  }

  async unary<Res>(path: string, bytes: Buffer, decode: (b: Buffer) => Res, metadata: Metadata, deadline: number): Promise<Res> {
    this.#inFlight++;
    try {
      const giveUpAt = Math.min(deadline, Date.now() + RECONNECT_WAIT_MS);
      for (;;) {
        if (this.#client.getChannel().getConnectivityState(false) === connectivityState.TRANSIENT_FAILURE) {
          // Still down after the wait: the call below fails at once, with the latest attempt's error.
          await new Promise<void>((resolve) => this.#client.waitForReady(giveUpAt, () => resolve()));
        }
        try {
          return await this.#call(path, bytes, decode, metadata, deadline);
        } catch (err) {
          // Never sent (no connection when it was to go): tried again while the wait lasts.
          if (!notSent(err) || Date.now() >= giveUpAt) throw err;
        }
      }
    } finally {
      this.#inFlight--;
      this.#closeIfDone();
    }
  }

  #call<Res>(path: string, bytes: Buffer, decode: (b: Buffer) => Res, metadata: Metadata, deadline: number): Promise<Res> {
    return new Promise<Res>((resolve, reject) => {
      const identity = (b: Buffer) => b;
      this.#client.makeUnaryRequest(path, identity, decode, bytes, metadata, { deadline }, (err: ServiceError | null, res?: Res) => {
        if (err) reject(err);
        else resolve(res!);
      });
    });
  }

  retire(): void {
    this.#retired = true;
    this.#closeIfDone();
  }

  #closeIfDone(): void {
    if (!this.#retired || this.#inFlight > 0 || this.closed) return;
    this.closed = true;
    this.#client.close();
  }
}

interface Session {
  id: string;
  key: Buffer;
  /** The last call counter used. */
  counter: number;
}

type SessionState = { state: "none" } | { state: "opening"; done: Promise<Session> } | { state: "open"; session: Session };

export class Peer {
  hello: HelloResponse | undefined;
  /**
   * Where the engine reaches its data plane: Hello's data address with the host resolved
   * to a numeric address here, once per greeting, so that no lookup ever runs on (and
   * blocks) an engine I/O loop.
   */
  dataTarget = "";
  readonly #k: Buffer;
  #channel: Channel | undefined;
  #session: SessionState = { state: "none" };
  /** Some call on this peer got an answer: its address reaches a gRPC server. */
  #answered = false;
  /** Out of the directory: every channel closes once its calls are done. */
  #detached = false;
  /** Times a never-answered channel was replaced (revive): a handshake begun before is stale. */
  #revivals = 0;

  constructor(readonly address: string, token: string) {
    this.#k = purposeKey(token, PEER_API_PURPOSE);
  }

  /**
   * Calls one unary method within an authenticated session, with a deadline; errors come
   * back typed. A session the server forgot is re-established once, transparently.
   */
  async call<M extends PeerMethod>(method: M, request: RequestOf<M>, timeoutMs: number): Promise<ResponseOf<M>> {
    const deadline = Date.now() + timeoutMs;
    const bytes = (method.requestSerialize as (r: RequestOf<M>) => Buffer)(request);
    const body = bodyDigest(bytes);
    for (let attempt = 0; ; attempt++) {
      const session = await this.#authenticated(deadline);
      const counter = ++session.counter;
      const metadata = new Metadata();
      metadata.set(SESSION_METADATA, session.id);
      metadata.set(COUNTER_METADATA, String(counter));
      metadata.set(MAC_METADATA, callMac(session.key, method.path, counter, body).toString("hex"));
      try {
        return await this.#unary(method.path, bytes, method.responseDeserialize as (b: Buffer) => ResponseOf<M>, metadata, deadline);
      } catch (err) {
        if (!(err instanceof UnauthenticatedError) || attempt > 0) throw err;
        // The server forgot the session (restarted, expired, too many): authenticate again.
        if (this.#session.state === "open" && this.#session.session === session) this.#session = { state: "none" };
      }
    }
  }

  /** Replaces a channel that never got an answer (it may sit in reconnect backoff); calls on it finish there. */
  revive(): void {
    if (this.#answered || this.#channel === undefined) return;
    this.#channel.retire();
    this.#channel = undefined;
    // A handshake under way runs on the old channel: callers start or join one on the new.
    this.#revivals++;
    if (this.#session.state === "opening") this.#session = { state: "none" };
  }

  /** Closes the channel once its calls are done; a later call opens one that closes after it. */
  close(): void {
    this.#detached = true;
    this.#channel?.retire();
  }

  /** The open session, after a handshake if needed; a caller waits for one no longer than its own deadline. */
  async #authenticated(deadline: number): Promise<Session> {
    for (;;) {
      const s = this.#session;
      if (s.state === "open") return s.session;
      const revivals = this.#revivals;
      const done = s.state === "opening" ? s.done : this.#startHandshake();
      try {
        return await untilDeadline(done, deadline, () => new DeadlineExceededError(`peer ${this.address}: the handshake did not finish within the call's deadline`));
      } catch (err) {
        // It failed on a channel revived meanwhile (the peer greeted us): try the new one.
        if (this.#revivals === revivals || Date.now() >= deadline) throw err;
      }
    }
  }

  /** One handshake at a time, on its own deadline: a caller with a short one does not fail the others. */
  #startHandshake(): Promise<Session> {
    const current = () => this.#session.state === "opening" && this.#session.done === done;
    const done: Promise<Session> = this.#handshake(Date.now() + HANDSHAKE_TIMEOUT_MS).then(
      (session) => {
        if (current()) this.#session = { state: "open", session };
        return session;
      },
      (err) => {
        if (current()) this.#session = { state: "none" };
        throw err;
      },
    );
    this.#session = { state: "opening", done };
    return done;
  }

  /** OpenSession, check the server's proof, and only then ConfirmSession with ours. */
  async #handshake(deadline: number): Promise<Session> {
    const nonceC = newNonce();
    const open = KvFerryPeerService.openSession;
    const opened = await this.#unary(open.path, open.requestSerialize(OpenSessionRequest.create({ clientNonce: nonceC })), open.responseDeserialize, new Metadata(), deadline);
    const nonceS = Buffer.from(opened.serverNonce);
    if (nonceS.length !== NONCE_BYTES || !sameProof(opened.serverProof, serverProof(this.#k, nonceC, nonceS))) {
      throw new PermissionDeniedError(
        `peer ${this.address} could not prove that it holds the cluster token (another token, or not a kvferry daemon): nothing more was sent to it`,
      );
    }
    const confirm = KvFerryPeerService.confirmSession;
    const request = ConfirmSessionRequest.create({ sessionId: opened.sessionId, clientProof: clientProof(this.#k, nonceC, nonceS) });
    await this.#unary<ConfirmSessionResponse>(confirm.path, confirm.requestSerialize(request), confirm.responseDeserialize, new Metadata(), deadline);
    return { id: opened.sessionId, key: sessionKey(this.#k, nonceC, nonceS), counter: 0 };
  }

  async #unary<Res>(path: string, bytes: Buffer, decode: (b: Buffer) => Res, metadata: Metadata, deadline: number): Promise<Res> {
    if (this.#channel === undefined || this.#channel.closed) this.#channel = new Channel(this.address, this.#detached);
    try {
      const res = await this.#channel.unary(path, bytes, decode, metadata, deadline);
      this.#answered = true;
      return res;
    } catch (err) {
      const e = err as ServiceError;
      if (typeof e.code !== "number") throw new InternalError(`peer ${this.address}: ${e.message}`, { cause: err });
      if (e.code !== status.UNAVAILABLE && e.code !== status.DEADLINE_EXCEEDED) this.#answered = true;
      throw errorFromStatus(e.code, `peer ${this.address}: ${e.details}`);
    }
  }
}

export class PeerDirectory {
  readonly #peers = new Map<string, Peer>();

  /**
   * @param protocol the transport this daemon's data plane speaks: a peer that answers
   *   Hello with another is refused at the greeting, naming both
   * @param hello what this daemon says of itself when it greets a peer
   */
  constructor(
    private readonly token: string,
    private readonly protocol: string,
    private readonly hello: () => HelloRequest,
  ) {}

  /** Peers held (greeted, or being greeted). */
  get size(): number {
    return this.#peers.size;
  }

  /** The peer at `address`, greeted: its data address is known. */
  async get(address: string, timeoutMs: number): Promise<Peer & { hello: HelloResponse }> {
    const peer = this.#peer(address);
    return peer.hello === undefined ? this.greet(address, timeoutMs) : (peer as Peer & { hello: HelloResponse });
  }

  /** Says Hello to the peer at `address` (again, if it was greeted before) and keeps its answer. */
  async greet(address: string, timeoutMs: number): Promise<Peer & { hello: HelloResponse }> {
    const peer = this.#peer(address);
    const hello = await peer.call(KvFerryPeerService.hello, this.hello(), timeoutMs);
    if (hello.protocol !== this.protocol) {
      throw new UnavailableError(`peer ${address} moves bytes over ${JSON.stringify(hello.protocol)}, this daemon over ${JSON.stringify(this.protocol)} (protocol must match across the cluster)`);
    }
    peer.dataTarget = this.protocol === "rdma" ? ucxTarget(hello, address) : await tcpTarget(hello, address);
    peer.hello = hello;
    return peer as Peer & { hello: HelloResponse };
  }

  #peer(address: string): Peer {
    let peer = this.#peers.get(address);
    if (peer === undefined) {
      if (this.#peers.size >= MAX_PEERS) {
        // Least recently added first: its channel closes once idle, a later call re-creates it.
        const [oldest, gone] = this.#peers.entries().next().value!;
        gone.close();
        this.#peers.delete(oldest);
      }
      this.#peers.set(address, (peer = new Peer(address, this.token)));
    }
    return peer;
  }

  /**
   * The peer at `address` just showed it is up (it greeted us). If our channel to it has
   * never worked, it may sit in reconnect backoff: the next call starts on a fresh one.
   * Calls in flight finish on the old channel (closing it under them failed them INTERNAL
   * "Channel has been shut down" when two daemons first greeted each other at once).
   */
  revive(address: string): void {
    this.#peers.get(address)?.revive();
  }

  /** Drops what is known of a peer (its data address may have changed). */
  forget(address: string): void {
    const peer = this.#peers.get(address);
    if (peer !== undefined) peer.hello = undefined;
  }

  close(): void {
    for (const peer of this.#peers.values()) peer.close();
    this.#peers.clear();
  }
}

/** grpc-js failed the call when picking a connection for it: nothing of it reached the peer. */
function notSent(err: unknown): boolean {
  const e = err as Partial<ServiceError>;
  return e.code === status.UNAVAILABLE && typeof e.details === "string" && e.details.startsWith("No connection established");
}

/** `p`, or `timeout()` once `deadline` (ms since the epoch) has passed. */
function untilDeadline<T>(p: Promise<T>, deadline: number, timeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(timeout()), Math.max(0, deadline - Date.now()));
  });
  return Promise.race([p, expired]).finally(() => clearTimeout(timer));
}
