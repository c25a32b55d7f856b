// The embedded registry: no server. Daemons learn each other through the Hello of the
// peer API, which carries both sides' records: a daemon greets the peers it was given
// (--peer, or the other side of prefill_url / decode_url) at start-up, and a daemon
// that is greeted learns the caller. Every ttl/3 it greets every node it knows again;
// a node whose greetings have failed for longer than the TTL has left. Seeds not
// answering yet are retried at the same pace, so start-up order does not matter.
import type { Logger } from "pino";
import { NodeCache } from "./node-cache.js";
import type { NodeRecord } from "./node.js";
import type { NodeEvent, NodeRegistry, RegistryOptions } from "./registry.js";

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
  #beating = false;

  constructor(
    private readonly options: RegistryOptions & { seeds: readonly string[] },
    private readonly log: Logger,
    private readonly greet: Greet,
  ) {
    this.#cache = new NodeCache(log);
    const seeds = options.seeds.length;
    this.where = `embedded peer-to-peer metadata (${seeds} seed peer${seeds === 1 ? "" : "s"})`;
  }

  async register(self: NodeRecord): Promise<void> {
    this.#self = { ...self, updatedAt: Date.now() };
    this.#cache.set(this.#self);
    // Seeds that do not answer yet are no error: they are retried at every heartbeat.
    await this.#heartbeat();
    this.#timer = setInterval(() => void this.#heartbeat(), Math.max(1, Math.floor(this.options.ttlMs / 3)));
    this.#timer.unref();
  }

  update(patch: Partial<Omit<NodeRecord, "nodeId">>): void {
    if (this.#self === undefined) return;
    this.#self = { ...this.#self, ...patch, nodeId: this.#self.nodeId, updatedAt: Date.now() };
    this.#cache.set(this.#self);
  }

  /** A node greeted us (the peer API's Hello): it is alive, with this record. */
  learn(node: NodeRecord): void {
    if (this.#closed || node.nodeId === this.#self?.nodeId) return;
    this.#lastSeen.set(node.nodeId, Date.now());
    this.#cache.set(node);
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
    await Promise.all(
      [...addresses].map(async (address) => {
        try {
          const node = await this.greet(address, self);
          if (node.nodeId === self.nodeId) return; // a seed list that names this daemon
          if (!this.#cache.get(node.nodeId)) this.log.info({ nodeId: node.nodeId, peerAddress: address }, "node joined");
          this.learn(node);
        } catch (err) {
          this.log.debug({ err, peerAddress: address }, "greeting a peer failed");
        }
      }),
    );
    const now = Date.now();
    for (const node of known) {
      const seen = this.#lastSeen.get(node.nodeId) ?? 0;
      if (now - seen > this.options.ttlMs) {
        this.#lastSeen.delete(node.nodeId);
        this.#cache.delete(node.nodeId);
        this.log.info({ nodeId: node.nodeId, silentMs: now - seen }, "node left (no answer within metadata_ttl_ms)");
      }
    }
  }
}
