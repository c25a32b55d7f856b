// The embedded registry: no server. Daemons learn each other through the Hello of the
// peer API, which carries both sides' records: a daemon greets the peers it was given
// (--peer, or the other side of prefill_url / decode_url) at start-up, and a daemon
// that is greeted learns the caller. Every ttl/3 it greets every node it knows again;
// a node whose greetings have failed for longer than the TTL has left. Seeds not
// answering yet are retried at the same pace, so start-up order does not matter.
// A node id belongs to one running daemon (node-id.ts): a Hello claiming a known node's id
// from another address is refused while that node answers, and a seed that refuses this
// daemon's greeting for that reason fails its start-up. A seed that cannot tell yet (the
// holder does not answer in time) is greeted again, for at most a TTL, before start-up ends.
import type { Logger } from "pino";
import { AlreadyExistsError, FailedPreconditionError } from "../errors.js";
import { NodeCache } from "./node-cache.js";
import { nodeIdTaken, nodeIdVerdict, type WhoIs } from "./node-id.js";
import type { NodeRecord } from "./node.js";
import type { NodeEvent, NodeRegistry, RegistryHealth, RegistryOptions } from "./registry.js";

/** A claimant waits for undecided seeds at most the TTL plus this (by then a silent holder is forgotten). */
const UNDECIDED_MARGIN_MS = 1_000;
/** Nodes known at once; a Hello from one more is not learned (the cache must stay bounded). */
const MAX_NODES = 1024;

/** Greets the daemon whose peer API is at `peerAddress` with our record; resolves to its record. */
export type Greet = (peerAddress: string, self: NodeRecord) => Promise<NodeRecord>;

export class EmbeddedRegistry implements NodeRegistry {
  readonly backend = "embedded" as const;
  readonly where: string;
  readonly #cache: NodeCache;
  /** When each other node last answered a greeting or greeted us (ms, Date.now()). */
  readonly #lastSeen = new Map<string, number>();
  #self: NodeRecord | undefined;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  /** Peer addresses whose last greeting failed (warned once per outage). */
  readonly #unanswered = new Set<string>();
  /** Set while MAX_NODES are known (warned once). */
  #full = false;
  #beating = false;
  /** A peer refused our greeting because a running daemon holds our node id. */
  #taken: AlreadyExistsError | undefined;
  /** Peers that could not tell yet whether our node id is held (they asked its holder, who was silent). */
  readonly #undecided = new Set<string>();

  constructor(
    private readonly options: RegistryOptions & { seeds: readonly string[] },
    private readonly log: Logger,
    private readonly greet: Greet,
    /** Asks a peer API which node answers there (shorter than a greeting: it runs inside one). */
    private readonly whoIs: WhoIs,
  ) {
    this.#cache = new NodeCache(log);
    const seeds = options.seeds.length;
    this.where = `embedded peer-to-peer metadata (${seeds} seed peer${seeds === 1 ? "" : "s"})`;
  }

  /**
   * Greets the seeds once and keeps greeting every ttl/3.
   * @throws AlreadyExistsError when a seed says a running daemon holds this node's id.
   */
  async register(self: NodeRecord): Promise<void> {
    this.#self = { ...self, updatedAt: Date.now() };
    this.#cache.set(this.#self);
    // Seeds that do not answer yet are no error: they are retried at every heartbeat.
    await this.#heartbeat();
    // Seeds that cannot tell yet whether our id is taken are asked again until they can.
    const until = Date.now() + this.options.ttlMs + UNDECIDED_MARGIN_MS;
    while (this.#undecided.size > 0 && this.#taken === undefined && Date.now() < until) {
      await new Promise((resolve) => setTimeout(resolve, Math.min(500, this.options.ttlMs / 4)));
      await this.#heartbeat();
    }
    if (this.#taken !== undefined) {
      this.#closed = true;
      throw this.#taken;
    }
    if (this.#undecided.size > 0) {
      this.log.warn({ peers: [...this.#undecided], nodeId: self.nodeId }, "some peers still cannot tell whether this node id is held by another daemon: starting anyway");
    }
    this.#timer = setInterval(() => void this.#heartbeat(), Math.max(1, Math.floor(this.options.ttlMs / 3)));
    this.#timer.unref();
  }

  /** No server to lose: connected always; registered from register() to close(). */
  health(): RegistryHealth {
    return { connected: true, registered: this.#timer !== undefined && !this.#closed };
  }

  update(patch: Partial<Omit<NodeRecord, "nodeId">>): void {
    if (this.#self === undefined) return;
    this.#self = { ...this.#self, ...patch, nodeId: this.#self.nodeId, updatedAt: Date.now() };
    this.#cache.set(this.#self);
  }

  /**
   * A node greeted us (the peer API's Hello) or answered our greeting: it is alive, with
   * this record. A record claiming the id of a known node at another address is learned
   * only once that node no longer answers there.
   * @throws AlreadyExistsError when that node still runs: the id is taken.
   * @throws FailedPreconditionError when that cannot be told now (the greeter tries again later).
   */
  async learn(node: NodeRecord): Promise<void> {
    if (this.#closed || node.nodeId === this.#self?.nodeId) return;
    const known = this.#cache.get(node.nodeId);
    if (known !== undefined && known.peerAddress !== node.peerAddress) {
      const id = JSON.stringify(node.nodeId);
      const held = await nodeIdVerdict(node, known, this.whoIs);
      if (held.verdict === "taken") throw nodeIdTaken(known);
      if (held.verdict === "unknown") {
        throw new FailedPreconditionError(`cannot tell yet whether the daemon at ${known.peerAddress} holding node id ${id} still runs (${held.why}); greet again later`);
      }
      const now = this.#cache.get(node.nodeId);
      if (now !== undefined && now.peerAddress !== node.peerAddress) {
        // Another claimant took the id while we asked: it is asked about at the next greeting.
        if (now.peerAddress !== known.peerAddress) throw new FailedPreconditionError(`node id ${id} was just claimed from ${now.peerAddress}; greet again later`);
        this.#forget(node.nodeId, `it no longer answers at ${known.peerAddress}; ${node.peerAddress} holds its id now`);
      }
    }
    if (!this.#cache.get(node.nodeId) && this.#lastSeen.size >= MAX_NODES) {
      if (!this.#full) this.log.warn({ max: MAX_NODES, nodeId: node.nodeId }, "embedded registry full: not learning more nodes");
      this.#full = true;
      return;
    }
    // Whoever else was known at this peer address is not there any more.
    for (const other of this.#cache.list()) {
      if (other.peerAddress === node.peerAddress && other.nodeId !== node.nodeId && other.nodeId !== this.#self?.nodeId) {
        this.#forget(other.nodeId, `node ${JSON.stringify(node.nodeId)} answers at its address`);
      }
    }
    this.#lastSeen.set(node.nodeId, Date.now());
    this.#cache.set(node);
  }

  #forget(nodeId: string, why: string): void {
    this.#lastSeen.delete(nodeId);
    this.#cache.delete(nodeId);
    if (this.#lastSeen.size < MAX_NODES) this.#full = false;
    this.log.info({ nodeId }, `node left (${why})`);
  }

  /** This node's record as it stands (what a Hello answers with). */
  get self(): NodeRecord | undefined {
    return this.#self;
  }

  async lookup(nodeId: string): Promise<NodeRecord | undefined> {
    return this.#cache.get(nodeId);
  }

  async list(): Promise<NodeRecord[]> {
    return this.#cache.list();
  }

  watch(listener: (event: NodeEvent) => void): () => void {
    return this.#cache.watch(listener);
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
  }

  async #heartbeat(): Promise<void> {
    const self = this.#self;
    if (self === undefined || this.#closed || this.#beating) return;
    this.#beating = true;
    try {
      await this.#greetAll(self);
    } finally {
      this.#beating = false;
    }
  }

  async #greetAll(self: NodeRecord): Promise<void> {
    const known = this.#cache.list().filter((n) => n.nodeId !== self.nodeId);
    const addresses = new Set([...known.map((n) => n.peerAddress), ...this.options.seeds]);
    addresses.delete(self.peerAddress);
    for (const address of this.#unanswered) if (!addresses.has(address)) this.#unanswered.delete(address);
    await Promise.all(
      [...addresses].map(async (address) => {
        let node: NodeRecord;
        try {
          node = await this.greet(address, self);
          if (node.nodeId === self.nodeId && node.peerAddress !== self.peerAddress) throw nodeIdTaken(node);
        } catch (err) {
          if (err instanceof AlreadyExistsError) {
            // The peer refused us: a running daemon holds our node id.
            this.#taken ??= err;
            if (!this.#unanswered.has(address)) this.log.error({ peerAddress: address, err: err.message }, "node id conflict: this daemon's node_id is taken");
          } else if (err instanceof FailedPreconditionError) {
            if (!this.#undecided.has(address)) this.log.warn({ peerAddress: address, err: err.message }, "a peer cannot tell yet whether this node id is held by another daemon");
            this.#undecided.add(address);
            return;
          } else if (!this.#unanswered.has(address)) {
            // Once per address and outage: a seed that is not up yet, or holds another token.
            this.log.warn({ peerAddress: address, err: (err as Error).message }, "a peer does not answer our greeting (retried every metadata_ttl_ms / 3)");
          }
          this.#unanswered.add(address);
          return;
        }
        this.#undecided.delete(address);
        if (node.nodeId === self.nodeId) return; // a seed list that names this daemon
        const joined = !this.#cache.get(node.nodeId);
        try {
          await this.learn(node);
        } catch (err) {
          // Two other daemons answer to one id: keep the one known (it still runs, or may).
          if (!this.#unanswered.has(address)) {
            const message = (err as Error).message;
            if (err instanceof AlreadyExistsError) this.log.error({ peerAddress: address, err: message }, "node id conflict between two peers: the later one is not learned");
            else this.log.warn({ peerAddress: address, err: message }, "a peer claims a known node's id: not learned until that node's state is known");
          }
          this.#unanswered.add(address);
          return;
        }
        this.#unanswered.delete(address);
        if (joined) this.log.info({ nodeId: node.nodeId, peerAddress: address }, "node joined");
      }),
    );
    const now = Date.now();
    for (const node of known) {
      const seen = this.#lastSeen.get(node.nodeId);
      if (seen !== undefined && now - seen > this.options.ttlMs) this.#forget(node.nodeId, "no answer within metadata_ttl_ms");
    }
  }
}
