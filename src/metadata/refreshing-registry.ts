// The lifecycle shared by the node registries that keep their record alive by writing it
// again every ttl/3 and know the other nodes by reading them all again every ttl/3: redis
// (a TTL on the key) and http (an updatedAt a reader checks). They differ only in how a
// record is written, read, listed and deleted, and in what they do when a watcher comes;
// a backend supplies those (the abstract members at the end) and everything else is here
// once:
//
//  - the registration, a state machine: idle → registering → registered → closed, a
//    failed register() going back to idle. register() writes within min(ttl, 5 s);
//  - the period: one timer runs one tick at a time, every ttl/3: it writes the record
//    again (when registered) and reads every node (when watched). Asked for at once while
//    a tick runs (a reconnect), it runs again right after; a failed write is retried after
//    100 ms, doubling to ttl/3. A write is bounded by the backend (an abandoned one might
//    land after close() deleted the record); a read, which is safe to abandon, here;
//  - an outage is warned about once, and its end noted at info;
//  - the NodeCache that reads feed: a refresh that only moves updatedAt is a heartbeat,
//    not an update. lookup() and list() answer from it when the server cannot be reached
//    and this registry keeps it current (registered or watched), else UnavailableError;
//    and at once, without asking, while the backend knows the server is not answering
//    (`reachable`: a connection down or stalled), so that callers never wait out a
//    reconnect for what the cache already holds;
//  - a value that does not decode is warned about once (again when it changes), skipped;
//  - close() lets the tick in flight finish (a refresh landing after the delete would
//    bring the record back), then deletes the record within 2 s or leaves it to lapse.
//
// etcd keeps its record under a lease that its client keeps alive and follows a watch
// stream: another lifecycle, which does not build on this one (it shares `within` and
// BadValues from here).
import type { Logger } from "pino";
import type { MetadataBackend } from "../config/metadata.js";
import { FailedPreconditionError, UnavailableError } from "../errors.js";
import { NodeCache } from "./node-cache.js";
import { byNodeId, contentOf, decodeNode, type NodeRecord } from "./node.js";
import { nodeKey, type NodeEvent, type NodeRegistry, type RegistryHealth, type RegistryOptions } from "./registry.js";

/** idle → registering → registered → closed; a failed register() goes back to idle. */
type State = "idle" | "registering" | "registered" | "closed";

/** register() (and a tick's read) gives up after min(ttl, this). */
const BOUND_MS = 5_000;
/** close() deletes the record within this, or leaves it to lapse. */
const CLOSE_BOUND_MS = 2_000;
/** First retry of a failed refresh; doubles up to ttl/3. */
const FIRST_RETRY_MS = 100;
/** Undecodable values remembered at most (then forgotten all at once, and warned about again). */
const BAD_VALUES_KEPT = 1024;

/**
 * Rejects with "`what`: no answer within `ms` ms" if `promise` has not settled by then
 * (`promise` itself goes on). The one deadline helper of the registries (etcd's too).
 */
export function within<T>(ms: number, promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const wait = Math.max(0, Math.round(ms));
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${wait} ms`)), wait);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}


/** Undecodable values already warned about, by key, so that a re-read does not warn again. */
export class BadValues {
  readonly #seen = new Map<string, string>();

  constructor(
    private readonly log: Logger,
    private readonly where: string,
  ) {}

  /** Warns that `text` under `key` is skipped, unless this very value was warned about. */
  warn(key: string, text: string, problem: string, message = "skipping a node record that does not decode"): void {
    if (this.#seen.get(key) === text) return;
    if (this.#seen.size >= BAD_VALUES_KEPT) this.#seen.clear();
    this.#seen.set(key, text);
    this.log.warn({ key, metadata: this.where, problem }, message);
  }

  /** `key` holds a good value now: a bad one there later is news again. */
  clear(key: string): void {
    this.#seen.delete(key);
  }

  /** Forgets the keys for which `exists` is false (gone from the server). */
  keepOnly(exists: (key: string) => boolean): void {
    for (const key of this.#seen.keys()) if (!exists(key)) this.#seen.delete(key);
  }
}

export abstract class RefreshingRegistry implements NodeRegistry {
  abstract readonly backend: MetadataBackend;
  readonly where: string;
  protected readonly options: RegistryOptions;
  protected readonly log: Logger;
  /** ttl/3: how often the record is written and the nodes read. */
  protected readonly period: number;
  /** min(ttl, 5 s): register() as a whole, a tick's read, and whatever a backend bounds by it. */
  protected readonly bound: number;
  protected readonly badValues: BadValues;
  readonly #cache: NodeCache;
  #state: State = "idle";
  /** This node's record as last written (or being written); set from register() to close(). */
  #self: NodeRecord | undefined;
  /** update() changed the record since it was last written. */
  #changed = false;
  /** Writes are failing; warned once, cleared (with an info) by the next good write. */
  #outage = false;
  #retryMs = FIRST_RETRY_MS;
  #watchers = 0;
  #registering: Promise<void> | undefined;
  #closing: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #timerAt = 0;
  #ticking = false;
  /** The tick in progress, which close() lets finish before it deletes the record. */
  #running: Promise<void> | undefined;
  #tickAgain = false;

  /** `server` names the backend and its address, e.g. "redis at 127.0.0.1:6379". */
  constructor(server: string, options: RegistryOptions, log: Logger) {
    this.where = `${server} (prefix ${JSON.stringify(options.prefix)})`;
    this.options = options;
    this.log = log;
    this.period = Math.max(1, Math.floor(options.ttlMs / 3));
    this.bound = Math.min(options.ttlMs, BOUND_MS);
    this.badValues = new BadValues(log, this.where);
    this.#cache = new NodeCache(log);
  }

  /**
   * Writes this node's record and keeps it alive until close().
   * @throws UnavailableError naming the server when it cannot be reached within min(ttl, 5 s).
   * @throws FailedPreconditionError when already registered or closed.
   */
  async register(self: NodeRecord): Promise<void> {
    if (this.#state !== "idle") throw new FailedPreconditionError(`register() on a node registry that is ${this.#state}`);
    this.#state = "registering";
    this.#registering = this.#register(self);
    try {
      await this.#registering;
    } finally {
      this.#registering = undefined;
    }
  }

  async #register(self: NodeRecord): Promise<void> {
    const record = { ...self, updatedAt: Date.now() };
    // Set before writing, so that a close() racing this write deletes what it wrote.
    this.#self = record;
    let nodes: NodeRecord[] | undefined;
    try {
      nodes = await within(this.bound, this.writeRecord(record, true), this.serverName);
    } catch (err) {
      if (this.#state === "registering") {
        this.#state = "idle";
        this.#self = undefined;
        // Nothing is left running after a failed register() unless watchers need it.
        if (this.#watchers === 0) this.disconnect();
      }
      throw new UnavailableError(`cannot register with ${this.where}: ${this.reason(err)}`, { cause: err });
    }
    if (this.closed) return; // closed meanwhile: close() deletes the record
    this.#state = "registered";
    this.#feed(record, nodes);
    this.log.info({ metadata: this.where, nodeId: record.nodeId, ttlMs: this.options.ttlMs }, "registered with the node registry");
    this.#schedule(this.period);
  }

  health(): RegistryHealth {
    const connected = this.#state !== "closed" && !this.#outage && this.reachable;
    return { connected, registered: this.#state === "registered" && !this.#outage };
  }

  /** Changes fields of this node's record; a change is written at once (an engine announced now is seen now). */
  update(patch: Partial<Omit<NodeRecord, "nodeId">>): void {
    const self = this.#self;
    if (self === undefined || this.#state === "closed") return;
    const next = { ...self, ...patch, nodeId: self.nodeId };
    if (contentOf(next) === contentOf(self)) return;
    this.#self = next;
    this.#changed = true;
    if (this.#state === "registered" && !this.#outage) this.#schedule(0);
  }

  /**
   * The node's record as the server has it now. When the server cannot be reached, a
   * registry that is registered or watching answers with the last known record.
   * @throws UnavailableError when the server cannot be reached and this registry has no view of its own.
   */
  async lookup(nodeId: string): Promise<NodeRecord | undefined> {
    if (this.#state === "closed" || (this.#ownView && !this.reachable)) return this.#cache.get(nodeId);
    let text: string | undefined;
    try {
      text = await this.readRecord(nodeId);
    } catch (err) {
      this.#unreachable("lookup", err);
      return this.#cache.get(nodeId);
    }
    return this.heard(nodeId, text);
  }

  /**
   * Every live node the server has now. When the server cannot be reached, a registry that
   * is registered or watching answers with the last known nodes.
   * @throws UnavailableError when the server cannot be reached and this registry has no view of its own.
   */
  async list(): Promise<NodeRecord[]> {
    if (this.#state === "closed" || (this.#ownView && !this.reachable)) return this.#cache.list();
    try {
      const nodes = await this.readAll();
      this.#feed(undefined, nodes);
      return nodes.sort(byNodeId);
    } catch (err) {
      this.#unreachable("list", err);
      return this.#cache.list();
    }
  }

  /** Joins for the nodes known now, then joins, updates and leaves as the reads (and the backend) find them. */
  watch(listener: (event: NodeEvent) => void): () => void {
    if (this.#state === "closed") return () => {};
    this.#watchers++;
    if (this.#watchers === 1) {
      this.startWatching();
      // A read at once, unless the refreshes already read every node.
      if (!(this.#state === "registered" && this.writeReadsAll)) this.#schedule(0);
    }
    const unsubscribe = this.#cache.watch(listener);
    let watching = true;
    return () => {
      if (!watching) return;
      watching = false;
      this.#watchers--;
      unsubscribe();
    };
  }

  /** Deletes this node's record (best effort, within 2 s) and disconnects. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#state = "closed";
    clearTimeout(this.#timer);
    const deregister = async () => {
      await this.#registering?.catch(() => {});
      await this.#running?.catch(() => {}); // a refresh landing after the delete would bring the record back
      const self = this.#self;
      if (self !== undefined) await this.deleteRecord(self.nodeId);
    };
    try {
      await within(CLOSE_BOUND_MS, deregister(), "deleting the record");
    } catch (err) {
      this.log.warn({ err, metadata: this.where }, "could not delete this node's record: it lapses after the TTL");
    }
    this.disconnect();
  }

  /** This registry keeps its cache current: it is registered, or someone watches. */
  get #ownView(): boolean {
    return this.#state === "registered" || this.#watchers > 0;
  }

  /** A read failed: answer from the cache if it is kept up to date, else throw. */
  #unreachable(what: string, err: unknown): void {
    if (!this.#ownView) {
      throw new UnavailableError(`cannot read from ${this.where}: ${this.reason(err)}`, { cause: err });
    }
    this.log.debug({ err, metadata: this.where }, `${what}: node registry unreachable, answering from the last known state`);
  }

  // --- the period ---------------------------------------------------------------------

  /**
   * Runs #tick after `ms`, unless a run is already due sooner; asked for at once while a
   * run is in progress, runs again right after it.
   */
  #schedule(ms: number): void {
    if (this.#state === "closed") return;
    if (this.#ticking) {
      if (ms === 0) this.#tickAgain = true;
      return;
    }
    const at = Date.now() + ms;
    if (this.#timer !== undefined && this.#timerAt <= at) return;
    clearTimeout(this.#timer);
    this.#timerAt = at;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#running = this.#tick();
    }, ms);
  }

  /** One period: write this node's record (when registered), read every node (when watched). */
  async #tick(): Promise<void> {
    if (this.#state === "closed" || this.#ticking) return;
    const self = this.#state === "registered" ? this.#self : undefined;
    if (self === undefined && this.#watchers === 0) return; // nothing to do until watched again
    this.#ticking = true;
    let next = this.period;
    let nodes: NodeRecord[] | undefined;
    let read = this.#watchers > 0;
    if (self !== undefined) {
      const record = { ...self, updatedAt: Date.now() };
      try {
        nodes = await this.writeRecord(record, this.#changed || this.#outage);
        if (this.#state === "registered") this.#written(record);
      } catch (err) {
        this.#lost(err);
        next = this.#retryMs;
        this.#retryMs = Math.min(this.#retryMs * 2, this.period);
      }
      if (this.writeReadsAll) read = false;
    }
    if (read) {
      try {
        nodes = await within(this.bound, this.readAll(), this.serverName);
      } catch (err) {
        this.log.debug({ err, metadata: this.where }, "reading the nodes failed: keeping the known nodes");
      }
    }
    this.#feed(undefined, nodes);
    this.#ticking = false;
    if (this.#tickAgain) {
      this.#tickAgain = false;
      next = 0;
    }
    this.#schedule(next);
  }

  /** A refresh landed: the record is on the server as `record`. */
  #written(record: NodeRecord): void {
    // update() may have run during the write: keep its fields, take the new updatedAt.
    const self = this.#self ?? record;
    if (contentOf(self) === contentOf(record)) this.#changed = false;
    this.#self = { ...self, updatedAt: record.updatedAt };
    this.#retryMs = FIRST_RETRY_MS;
    if (this.#outage) {
      this.#outage = false;
      this.log.info({ metadata: this.where, nodeId: record.nodeId }, "node registry reachable again: this node's record is re-written");
    }
    this.#remember(record);
  }

  /** Writing failed or the connection dropped: warn once per outage. */
  #lost(err: unknown): void {
    if (this.#outage || this.#state !== "registered") return;
    this.#outage = true;
    this.log.warn(
      { err, metadata: this.where, ttlMs: this.options.ttlMs },
      "node registry unreachable: this node's record is re-written once it is back",
    );
  }

  // --- the cache ----------------------------------------------------------------------

  /** This node's record as written (if any), then every node as read (if read). */
  #feed(self: NodeRecord | undefined, nodes: readonly NodeRecord[] | undefined): void {
    if (this.closed) return;
    if (self !== undefined) this.#remember(self);
    // A refresh that only moved updatedAt reaches no watcher as an update (NodeCache).
    if (nodes !== undefined) this.#cache.replace(nodes);
  }

  #remember(node: NodeRecord): void {
    this.#cache.set(node);
  }

  // --- for the backends ---------------------------------------------------------------

  /** (Getters, so that TypeScript does not narrow the state across an await.) */
  protected get registered(): boolean {
    return this.#state === "registered";
  }

  protected get closed(): boolean {
    return this.#state === "closed";
  }

  /** Runs a tick now (or right after the one running): after a reconnect, say. */
  protected tickNow(): void {
    this.#schedule(0);
  }

  /** The connection dropped while registered: the outage starts now, not at the next write. */
  protected connectionLost(err: unknown): void {
    this.#lost(err);
  }

  /**
   * The server has `text` under `nodeId`'s key (undefined: nothing). The cache follows;
   * resolves to the record if it is a live one.
   */
  protected heard(nodeId: string, text: string | undefined): NodeRecord | undefined {
    const node = text === undefined ? undefined : this.decode(nodeKey(this.options.prefix, nodeId), text);
    if (node === undefined || !this.isLive(node, Date.now())) {
      this.#cache.delete(nodeId);
      return undefined;
    }
    this.#remember(node);
    return node;
  }

  /** The record under `key`, or undefined (warned once per value) when it does not decode. */
  protected decode(key: string, text: string): NodeRecord | undefined {
    const decoded = decodeNode(text);
    const problem =
      decoded instanceof Error
        ? decoded.message
        : nodeKey(this.options.prefix, decoded.nodeId) !== key
          ? `its nodeId ${JSON.stringify(decoded.nodeId)} does not match the key`
          : undefined;
    if (problem === undefined) {
      this.badValues.clear(key);
      return decoded as NodeRecord;
    }
    this.badValues.warn(key, text, problem);
    return undefined;
  }

  /** What an error says, for a message. */
  protected reason(err: unknown): string {
    return err instanceof Error ? err.message : String(err);
  }

  /**
   * False while the backend knows the server is not answering now (its connection is
   * down, or its last command timed out): lookup() and list() of a registry with a view of
   * its own then answer from the cache without asking. The period's writes and reads are
   * not affected: they are what finds the server back.
   */
  protected get reachable(): boolean {
    return true;
  }

  /** Whether a record read at `now` is still alive (the server does not expire records itself). */
  protected isLive(_node: NodeRecord, _now: number): boolean {
    return true;
  }

  /** The first watcher came (and, after the last one left, came again). */
  protected startWatching(): void {}

  /** Closes connections: after close(), and after a failed register() when nobody watches. */
  protected disconnect(): void {}

  // --- what a backend supplies --------------------------------------------------------

  /** The server in a timeout message: "redis", "the metadata server". */
  protected abstract readonly serverName: string;

  /**
   * Whether writeRecord() reads every node in the same pass and resolves to them, so that
   * no separate read follows a refresh (not even a failed one).
   */
  protected abstract readonly writeReadsAll: boolean;

  /**
   * Writes this node's record (with its updatedAt) so that it lives another TTL. `changed`:
   * its content changed since it was last written, or it may have been lost meanwhile.
   * Resolves to every live node when writeReadsAll, else to undefined.
   */
  protected abstract writeRecord(record: NodeRecord, changed: boolean): Promise<NodeRecord[] | undefined>;

  /** The text under `nodeId`'s key, or undefined when there is none. */
  protected abstract readRecord(nodeId: string): Promise<string | undefined>;

  /** Every live node on the server (decoded through decode()). */
  protected abstract readAll(): Promise<NodeRecord[]>;

  /** Deletes this node's record (close(): bounded by the caller, best effort). */
  protected abstract deleteRecord(nodeId: string): Promise<void>;
}
