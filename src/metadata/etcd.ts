// The etcd backend of the node registry (metadata_server "HOST:PORT", "etcd://HOST:PORT"
// or "etcd://H1:P1,H2:P2,...").
//
// This node's record lives at `${prefix}nodes/${nodeId}` under an etcd lease of
// ceil(ttl) seconds that the etcd3 client keeps alive: the lease is the liveness. The
// record is written when a lease is granted, again when update() changed it (checked
// every ttl/3), and otherwise only every max(ttl, 60 s) to move its updatedAt: every put
// is a new etcd revision, kept in etcd's history until it is compacted. When the lease is
// lost (etcd restarted without its data, keepalives failing for twice the lease, someone
// revoked it) the registration grants a new lease and writes the record again by itself,
// retrying with a backoff of 200 ms doubling to ttl/3 until close(). close() revokes the
// lease, so the record disappears at once rather than a TTL later.
//
// The other nodes come from a watch-fed NodeCache: one read of every key under the nodes
// prefix at revision R, then a prefix watch from R+1, so no change falls between the two.
// When the watch breaks (etcd restarting) it is dropped and the read + watch run again
// once etcd answers; the cache is replaced with what the read found, so listeners hear of
// the joins and leaves the outage hid. A record that does not decode is skipped, and
// warned about once per value (BadValues). Lookups answer from the cache once the first
// read + watch succeeded.
//
// Calls are bounded by min(ttl, 5 s), and so is register() as a whole. How a call's
// attempts are spread over the endpoints (a deadline per attempt, silent streams
// cancelled, endpoints that did not answer skipped, error messages) is etcd-client.ts.
//
// Two lifecycles, each a state machine: the registration (idle → registering → alive ⇄
// recovering → closed) and the cache's feed (cold → live ⇄ resyncing → closed).
import type { IKeyValue, Lease, Watcher } from "etcd3";
import type { Logger } from "pino";
import { CancelledError, FailedPreconditionError, KvferryError, UnavailableError } from "../errors.js";
import { EtcdClient, etcdEndpoints } from "./etcd-client.js";
import { NodeCache } from "./node-cache.js";
import { contentOf, decodeNode, encodeNode, type NodeRecord } from "./node.js";
import { BadValues, within } from "./refreshing-registry.js";
import { nodeKey, nodesPrefix, type NodeEvent, type NodeRegistry, type RegistryHealth, type RegistryOptions } from "./registry.js";

export { etcdEndpoints } from "./etcd-client.js";

/** The longest any single etcd call (and register() as a whole) may take. */
const CALL_TIMEOUT_CAP_MS = 5_000;
/** close() gives up on a polite revoke after this long; the lease then lapses by itself. */
const CLOSE_TIMEOUT_MS = 2_000;
/** First wait before re-registering or re-syncing; doubles up to ttl/3. */
const FIRST_RETRY_MS = 200;
/** An unchanged record is written again (to move its updatedAt) after max(ttl, this). */
const REWRITE_UNCHANGED_MS = 60_000;

type Registration =
  | { state: "idle" }
  | { state: "registering" }
  /** Our record is written under `lease`; `timer` is the next refresh. */
  | { state: "alive"; lease: Lease; timer: NodeJS.Timeout }
  /** The lease was lost; `timer` is the next attempt to register again. */
  | { state: "recovering"; timer: NodeJS.Timeout | undefined; backoffMs: number }
  | { state: "closed" };

type Feed =
  /** Nothing read yet. */
  | { state: "cold" }
  /** The cache holds what was read at some revision R, and `watcher` streams the changes since. */
  | { state: "live"; watcher: Watcher }
  /** A read failed or the watch broke; `timer` is the next read + watch. The cache keeps its last state. */
  | { state: "resyncing"; timer: NodeJS.Timeout | undefined }
  | { state: "closed" };

export class EtcdRegistry implements NodeRegistry {
  readonly backend = "etcd" as const;
  readonly where: string;

  /** The etcd3 client, and why calls failed (EtcdClient.reason). */
  readonly #etcd: EtcdClient;
  readonly #cache: NodeCache;
  readonly #badValues: BadValues;
  /** "etcd at h1:p1,h2:p2", the start of every error message. */
  readonly #server: string;
  readonly #nodesPrefix: string;
  readonly #ttlSeconds: number;
  readonly #refreshMs: number;
  readonly #rewriteMs: number;
  readonly #callTimeoutMs: number;
  readonly #maxBackoffMs: number;
  #closed = false;
  #closing: Promise<void> | undefined;
  /** Attempts to register and syncs still running, which close() waits for. */
  readonly #inflight = new Set<Promise<unknown>>();

  // The registration.
  #self: NodeRecord | undefined;
  /** Our record as last written under the current lease (undefined: not yet). */
  #written: NodeRecord | undefined;
  #reg: Registration = { state: "idle" };
  /** Something went wrong with our record and was logged at warn; cleared (at info) when it is fine again. */
  #recordTrouble = false;

  // The cache and what feeds it.
  #feed: Feed = { state: "cold" };
  /** The first read + watch succeeded: lookups answer from the cache from now on. */
  #primed = false;
  /** The read + watch running now, if any. */
  #syncing: Promise<void> | undefined;
  #resyncBackoffMs = FIRST_RETRY_MS;
  #watchTrouble = false;
  /** Watchers given up on: whatever they still deliver is ignored. */
  readonly #dropped = new WeakSet<Watcher>();
  /** The lease each known record lives under (its node's heartbeat: list()). */
  #leases = new Map<string, string>();

  constructor(
    server: string,
    private readonly options: RegistryOptions,
    private readonly log: Logger,
  ) {
    const endpoints = etcdEndpoints(server);
    this.#server = `etcd at ${endpoints.join(",")}`;
    this.where = `${this.#server} (prefix ${JSON.stringify(options.prefix)})`;
    this.#nodesPrefix = nodesPrefix(options.prefix);
    this.#ttlSeconds = Math.max(1, Math.ceil(options.ttlMs / 1000));
    this.#refreshMs = Math.max(1, Math.floor(options.ttlMs / 3));
    this.#rewriteMs = Math.max(options.ttlMs, REWRITE_UNCHANGED_MS);
    this.#callTimeoutMs = Math.min(options.ttlMs, CALL_TIMEOUT_CAP_MS);
    this.#maxBackoffMs = Math.max(FIRST_RETRY_MS, this.#refreshMs);
    this.#cache = new NodeCache(log);
    this.#badValues = new BadValues(log, this.where);
    this.#etcd = new EtcdClient(endpoints, this.#callTimeoutMs, this.#maxBackoffMs);
  }

  /**
   * Reads the current nodes, starts the watch, then writes this node's record under a new
   * lease, all within min(ttl, 5 s). From then on the lease is kept alive, the record is
   * written again when update() changed it, and re-registered by itself when the lease is lost.
   * @throws UnavailableError naming etcd and its endpoints when it cannot be reached in time.
   * @throws FailedPreconditionError when already registered (use update()) or closed.
   */
  async register(self: NodeRecord): Promise<void> {
    if (this.#closed) throw new FailedPreconditionError(`${this.#server}: the registry is closed`);
    if (this.#reg.state !== "idle") throw new FailedPreconditionError(`${this.#server}: node ${self.nodeId} is already registered`);
    this.#self = { ...self };
    this.#reg = { state: "registering" };
    const deadlineAt = Date.now() + this.#callTimeoutMs;
    try {
      if (!this.#primed) await within(deadlineAt - Date.now(), this.#sync(), "reading the node records");
      const lease = await this.#establish(deadlineAt);
      this.#alive(lease);
      this.log.info({ nodeId: self.nodeId, metadata: this.where, leaseTtlS: this.#ttlSeconds }, "registered with etcd");
    } catch (err) {
      if (this.#reg.state === "registering") this.#reg = { state: "idle" };
      if (err instanceof KvferryError) throw err;
      throw new UnavailableError(`${this.#server}: cannot register node ${self.nodeId}: ${this.#etcd.reason(err)}`, { cause: err });
    }
  }

  /** Connected while the lease is kept alive and the watch (if any) streams. */
  health(): RegistryHealth {
    const alive = this.#reg.state === "alive";
    return { connected: alive && this.#feed.state !== "resyncing", registered: alive };
  }

  /** Changes fields of this node's record; a change is written at once (an engine announced now is seen now). */
  update(patch: Partial<Omit<NodeRecord, "nodeId">>): void {
    if (this.#self === undefined) return;
    const next = { ...this.#self, ...patch, nodeId: this.#self.nodeId };
    if (contentOf(next) === contentOf(this.#self)) return;
    this.#self = next;
    if (this.#reg.state === "alive") this.#alive(this.#reg.lease, 0);
  }

  /**
   * The node's record as the cache knows it; the first call reads etcd and starts the watch.
   * @throws UnavailableError when that first read cannot reach etcd within min(ttl, 5 s).
   */
  async lookup(nodeId: string): Promise<NodeRecord | undefined> {
    await this.#ready();
    return this.#cache.get(nodeId);
  }

  /**
   * Every live node, this one included, ordered by id (from the cache, as lookup()), each
   * with its last heartbeat as updatedAt (#heartbeats).
   * @throws UnavailableError when the first read cannot reach etcd within min(ttl, 5 s).
   */
  async list(): Promise<NodeRecord[]> {
    await this.#ready();
    return this.#heartbeats(this.#cache.list());
  }

  /**
   * An unchanged record is rewritten only every max(ttl, 60 s), but its lease is kept alive
   * every ttl/3: that keepalive is the node's heartbeat. Each record's updatedAt becomes the
   * lease's last renewal (granted TTL minus remaining TTL ago, to the second) when that is
   * later; a record whose lease cannot be asked keeps its own.
   */
  async #heartbeats(nodes: NodeRecord[]): Promise<NodeRecord[]> {
    // etcd not answering (the watch broke): the cache answers at once, as it is.
    if (this.#feed.state !== "live") return nodes;
    return Promise.all(
      nodes.map(async (node) => {
        const lease = this.#leases.get(node.nodeId);
        if (lease === undefined || lease === "0") return node;
        try {
          const asked = Date.now();
          const r = await within(this.#callTimeoutMs, this.#etcd.client.leaseClient.leaseTimeToLive({ ID: lease }), "asking a lease");
          const remaining = Number(r.TTL);
          const granted = Number(r.grantedTTL);
          if (!(remaining >= 0 && granted > 0 && remaining <= granted)) return node;
          const renewedAt = asked - (granted - remaining) * 1000;
          return renewedAt > node.updatedAt ? { ...node, updatedAt: renewedAt } : node;
        } catch (err) {
          this.log.debug({ err, nodeId: node.nodeId }, "cannot ask a record's lease: its updatedAt stands");
          return node;
        }
      }),
    );
  }

  /**
   * Calls `listener` with a join for every node known now, then with every change. Starts
   * the read + watch if nothing did yet; when etcd cannot be reached it keeps trying in the
   * background, and the joins come once it answers.
   */
  watch(listener: (event: NodeEvent) => void): () => void {
    if (!this.#primed && !this.#closed) {
      // A failure is logged and retried by #sync itself.
      this.#sync().catch(() => undefined);
    }
    return this.#cache.watch(listener);
  }

  /**
   * Revokes the lease (this node's record disappears at once), stops the watch and closes
   * the client. Bounded by 2 s: past that the lease lapses by itself. Idempotent; never throws.
   */
  close(): Promise<void> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  async #shutdown(): Promise<void> {
    this.#closed = true;
    const reg = this.#reg;
    this.#reg = { state: "closed" };
    if (reg.state === "alive" || reg.state === "recovering") clearTimeout(reg.timer);
    const feed = this.#feed;
    this.#feed = { state: "closed" };
    if (feed.state === "resyncing") clearTimeout(feed.timer);
    // The revoke's outcome: none while etcd has not answered.
    const revoke: { outcome?: { ok: true } | { ok: false; err: unknown } } = {};
    let revoking: Promise<void> | undefined;
    if (reg.state === "alive") {
      reg.lease.removeAllListeners();
      revoking = reg.lease.revoke().then(
        () => void (revoke.outcome = { ok: true }),
        (err: unknown) => void (revoke.outcome = { ok: false, err }),
      );
    }
    const work = Promise.allSettled([revoking, feed.state === "live" ? this.#dropWatcher(feed.watcher) : undefined, ...this.#inflight]);
    try {
      await within(CLOSE_TIMEOUT_MS, work, "closing");
    } catch (err) {
      this.log.debug({ err, metadata: this.where }, "etcd did not answer everything close() asked");
    }
    try {
      this.#etcd.client.close();
    } catch (err) {
      this.log.debug({ err }, "closing the etcd client failed");
    }
    if (reg.state !== "alive") return;
    const { outcome } = revoke;
    if (outcome?.ok) {
      this.log.info({ nodeId: this.#self?.nodeId, metadata: this.where }, "deregistered from etcd");
    } else {
      const err = outcome === undefined ? `no answer within ${CLOSE_TIMEOUT_MS} ms` : this.#etcd.reason(outcome.err);
      this.log.warn({ nodeId: this.#self?.nodeId, metadata: this.where, err }, "could not revoke our etcd lease: the record lapses with it");
    }
  }

  // --- The registration ---------------------------------------------------------------

  /**
   * Grants a lease and writes our record under it before `deadlineAt`. On failure, or when
   * close() came meanwhile, the lease is revoked (a late write then fails or goes with it).
   */
  #establish(deadlineAt: number): Promise<Lease> {
    const attempt = (async () => {
      const lease = this.#etcd.client.lease(this.#ttlSeconds);
      lease.on("lost", (err) => this.#onLost(lease, err));
      try {
        await within(deadlineAt - Date.now(), this.#writeRecord(lease), "writing our record");
        if (lease.revoked()) throw new Error("the lease was lost as soon as it was granted");
      } catch (err) {
        void this.#drop(lease);
        throw err;
      }
      if (this.#closed) {
        await this.#drop(lease);
        throw new CancelledError(`${this.#server}: the registry was closed while registering`);
      }
      return lease;
    })();
    return this.#track(attempt);
  }

  /** Writes our record (with a fresh updatedAt) under `lease`, and into our own cache. */
  async #writeRecord(lease: Lease): Promise<void> {
    const self = this.#self;
    if (self === undefined) return;
    const record: NodeRecord = { ...self, updatedAt: Date.now() };
    const text = encodeNode(record);
    await lease.put(nodeKey(this.options.prefix, record.nodeId)).value(text);
    this.#written = record;
    // The watch brings the same record back; setting it now makes list() right at once.
    // Through decodeNode, so the echo compares equal and raises no second event.
    const decoded = decodeNode(text);
    if (this.#primed && !(decoded instanceof Error)) this.#cache.set(decoded);
  }

  /** Keeps `lease` alive: the next refresh in `ms` (replacing any refresh already due). */
  #alive(lease: Lease, ms = this.#refreshMs): void {
    if (this.#reg.state === "alive") clearTimeout(this.#reg.timer);
    this.#reg = { state: "alive", lease, timer: this.#timer(() => void this.#refresh(lease), ms) };
  }

  #isCurrent(lease: Lease): boolean {
    return this.#reg.state === "alive" && this.#reg.lease === lease;
  }

  /**
   * Every ttl/3: the record again if update() changed it, or if it was last written
   * max(ttl, 60 s) ago; the keepalive does the rest. A lost lease shows up as "lost".
   */
  async #refresh(lease: Lease): Promise<void> {
    const self = this.#self;
    const written = this.#written;
    const due =
      self === undefined || written === undefined || contentOf(self) !== contentOf(written) || Date.now() - written.updatedAt >= this.#rewriteMs;
    if (due) {
      try {
        await within(this.#callTimeoutMs, this.#writeRecord(lease), "writing our record");
        if (this.#isCurrent(lease)) this.#recordFine("etcd answers again; our record is written");
      } catch (err) {
        if (this.#isCurrent(lease)) this.#recordFailing("cannot write our record to etcd", err);
      }
    }
    if (this.#isCurrent(lease)) this.#alive(lease);
  }

  #onLost(lease: Lease, err: Error): void {
    if (!this.#isCurrent(lease)) return;
    if (this.#reg.state === "alive") clearTimeout(this.#reg.timer);
    this.#recordFailing("lost the etcd lease of our record; registering again", err);
    this.#reg = { state: "recovering", timer: undefined, backoffMs: FIRST_RETRY_MS };
    this.#scheduleRecovery();
  }

  #scheduleRecovery(): void {
    const reg = this.#reg;
    if (reg.state !== "recovering") return;
    reg.timer = this.#timer(async () => {
      try {
        const lease = await this.#establish(Date.now() + this.#callTimeoutMs);
        if (this.#reg !== reg) {
          await this.#drop(lease);
          return;
        }
        this.#alive(lease);
        this.#recordFine("registered with etcd again");
      } catch (err) {
        if (this.#reg !== reg) return;
        this.log.debug({ err, metadata: this.where, retryInMs: reg.backoffMs }, "registering again failed");
        reg.backoffMs = Math.min(reg.backoffMs * 2, this.#maxBackoffMs);
        this.#scheduleRecovery();
      }
    }, reg.backoffMs);
  }

  /** Stops keeping `lease` alive and revokes it, best effort (it lapses by itself otherwise). */
  async #drop(lease: Lease): Promise<void> {
    lease.removeAllListeners();
    try {
      await lease.revoke();
    } catch (err) {
      this.log.debug({ err, metadata: this.where }, "revoking an etcd lease failed; it lapses with its TTL");
    }
  }

  #recordFailing(message: string, err: unknown): void {
    if (this.#recordTrouble) {
      this.log.debug({ err, metadata: this.where }, message);
      return;
    }
    this.#recordTrouble = true;
    this.log.warn({ err, nodeId: this.#self?.nodeId, metadata: this.where }, message);
  }

  #recordFine(message: string): void {
    if (!this.#recordTrouble) return;
    this.#recordTrouble = false;
    this.log.info({ nodeId: this.#self?.nodeId, metadata: this.where }, message);
  }

  // --- The cache ----------------------------------------------------------------------

  /** Lookups need a primed cache: the first one reads etcd (bounded) or fails. */
  async #ready(): Promise<void> {
    if (this.#primed) return;
    if (this.#closed) throw new FailedPreconditionError(`${this.#server}: the registry is closed`);
    try {
      await within(this.#callTimeoutMs, this.#sync(), "reading the node records");
    } catch (err) {
      throw new UnavailableError(`${this.#server}: cannot read the node records: ${this.#etcd.reason(err)}`, { cause: err });
    }
  }

  /**
   * One read + watch at a time (callers join the one running). A failure is retried in
   * the background with backoff until one succeeds or close() comes.
   */
  #sync(): Promise<void> {
    this.#syncing ??= this.#track(
      this.#readAndWatch().then(
        () => {
          this.#syncing = undefined;
          this.#resyncBackoffMs = FIRST_RETRY_MS;
          if (this.#watchTrouble) {
            this.#watchTrouble = false;
            this.log.info({ metadata: this.where }, "watching etcd again; node list re-read");
          }
        },
        (err: unknown) => {
          this.#syncing = undefined;
          if (this.#closed) throw err;
          this.#watchFailing("cannot read the node records from etcd", err);
          this.#scheduleResync();
          throw err;
        },
      ),
    );
    return this.#syncing;
  }

  /**
   * Reads every record at revision R into the cache and starts a watch from R+1, all within
   * the call timeout. A watch that connects late (or after close()) is dropped.
   */
  async #readAndWatch(): Promise<void> {
    let abandoned = false;
    let watcher: Watcher | undefined;
    const steps = async () => {
      const read = await this.#etcd.client.getAll().prefix(this.#nodesPrefix).exec();
      if (abandoned || this.#closed) return;
      const nodes: NodeRecord[] = [];
      for (const kv of read.kvs) {
        const node = this.#decode(kv);
        if (node !== undefined) nodes.push(node);
      }
      const keys = new Set(read.kvs.map((kv) => kv.key.toString()));
      this.#badValues.keepOnly((key) => keys.has(key));
      this.#leases = new Map(read.kvs.map((kv) => [this.#nodeIdOf(kv), kv.lease]));
      this.#cache.replace(nodes);
      // Changes made after the read, whenever the watch gets connected, arrive through it.
      const from = (BigInt(read.header.revision) + 1n).toString();
      const w = this.#etcd.client.watch().prefix(this.#nodesPrefix).startRevision(from).watcher();
      watcher = w;
      const current = () => !abandoned && !this.#closed && !this.#dropped.has(w);
      w.on("put", (kv) => {
        if (!current()) return;
        this.#leases.set(this.#nodeIdOf(kv), kv.lease);
        const node = this.#decode(kv);
        if (node !== undefined) this.#cache.set(node);
        else this.#cache.delete(this.#nodeIdOf(kv));
      });
      w.on("delete", (kv) => {
        if (!current()) return;
        this.#badValues.clear(kv.key.toString());
        this.#leases.delete(this.#nodeIdOf(kv));
        this.#cache.delete(this.#nodeIdOf(kv));
      });
      // Until connected, a broken stream is retried by etcd3 itself, on another endpoint
      // when this one did not answer (firstAnswerWithin).
      // Once live, a break makes us re-read everything, so the replayed gap cannot confuse us.
      w.on("disconnected", (err) => this.#watchBroke(w, err));
      w.on("error", (err) => {
        abandoned = true;
        this.#watchBroke(w, err);
      });
      await new Promise<void>((resolve, reject) => {
        w.once("connected", () => resolve());
        w.once("error", reject);
      });
    };
    try {
      await within(this.#callTimeoutMs, steps(), "reading and watching the node records");
    } catch (err) {
      abandoned = true;
      if (watcher !== undefined) void this.#dropWatcher(watcher);
      throw err;
    }
    if (this.#closed || watcher === undefined) {
      if (watcher !== undefined) void this.#dropWatcher(watcher);
      throw new CancelledError(`${this.#server}: the registry was closed`);
    }
    this.#feed = { state: "live", watcher };
    this.#primed = true;
  }

  /** The live watch broke (a watch still connecting is etcd3's to retry, within the attempt's deadline). */
  #watchBroke(watcher: Watcher, err: unknown): void {
    if (this.#feed.state !== "live" || this.#feed.watcher !== watcher) return;
    this.#feed = { state: "resyncing", timer: undefined };
    void this.#dropWatcher(watcher);
    this.#watchFailing("the etcd watch broke; will re-read the node records", err);
    this.#scheduleResync();
  }

  #scheduleResync(): void {
    if (this.#feed.state === "closed" || this.#feed.state === "live") return;
    if (this.#feed.state === "resyncing" && this.#feed.timer !== undefined) return;
    const wait = this.#resyncBackoffMs;
    this.#resyncBackoffMs = Math.min(wait * 2, this.#maxBackoffMs);
    const feed: Feed = { state: "resyncing", timer: undefined };
    feed.timer = this.#timer(() => {
      if (this.#feed !== feed) return;
      feed.timer = undefined;
      this.#sync().catch(() => undefined);
    }, wait);
    this.#feed = feed;
  }

  async #dropWatcher(watcher: Watcher): Promise<void> {
    this.#dropped.add(watcher);
    try {
      await watcher.cancel();
    } catch (err) {
      this.log.debug({ err }, "cancelling an etcd watch failed");
    }
  }

  #watchFailing(message: string, err: unknown): void {
    // Before the first success the caller hears of it (UnavailableError); later it is news.
    if (this.#watchTrouble || !this.#primed) {
      this.log.debug({ err, metadata: this.where }, message);
      return;
    }
    this.#watchTrouble = true;
    this.log.warn({ err, metadata: this.where }, message);
  }

  #nodeIdOf(kv: IKeyValue): string {
    return kv.key.toString().slice(this.#nodesPrefix.length);
  }

  /** The record in `kv`, or undefined (warned once per value) when it does not decode or sits under another id's key. */
  #decode(kv: IKeyValue): NodeRecord | undefined {
    const key = kv.key.toString();
    const text = kv.value.toString();
    const node = decodeNode(text);
    const problem =
      node instanceof Error
        ? node.message
        : node.nodeId !== this.#nodeIdOf(kv)
          ? `its nodeId ${JSON.stringify(node.nodeId)} does not match the key`
          : undefined;
    if (problem !== undefined) {
      this.#badValues.warn(key, text, problem);
      return undefined;
    }
    this.#badValues.clear(key);
    return node as NodeRecord;
  }

  // --- Plumbing -----------------------------------------------------------------------

  /** Remembers `work` until it settles, so close() can wait for it. */
  #track<T>(work: Promise<T>): Promise<T> {
    this.#inflight.add(work);
    const forget = () => this.#inflight.delete(work);
    work.then(forget, forget);
    return work;
  }

  /** A timer that does not keep the process alive by itself. */
  #timer(fn: () => void, ms: number): NodeJS.Timeout {
    const timer = setTimeout(fn, ms);
    timer.unref();
    return timer;
  }
}
