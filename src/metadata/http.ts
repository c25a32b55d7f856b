// The node registry on an http metadata server (`metadata_server: "http://HOST:PORT/PATH"`),
// speaking Mooncake's simple protocol: GET / PUT / DELETE `<url>?key=K`, 404 for an absent
// key (`kvferry metadata-server` serves it; so does Mooncake's own metadata server).
//
// The protocol has no TTL, no listing and no watch, so the registry builds them:
//  - liveness: each record carries updatedAt, rewritten every ttl/3; a reader treats a
//    record older than the TTL as gone (so the nodes' clocks must roughly agree);
//  - listing: an index key `${prefix}nodes` holds a JSON array of node ids. Every node
//    re-adds itself at each refresh (read-modify-write: an update lost to a concurrent
//    writer heals at that node's next refresh) and prunes the ids whose records are
//    absent or stale, deleting the stale records;
//  - watching: polling the index and its records every ttl/3, fed whole to the NodeCache,
//    which turns the differences into join / update / leave events.
// A restarted (empty) server is repopulated by the nodes' next refreshes; failed refreshes
// are retried with a bounded backoff. Each request is bounded with AbortSignal.timeout.
// Reading every record of the index each period costs N requests per node: meant for the
// tens of nodes of a serving cluster, not thousands.
import type { Logger } from "pino";
import { ConfigError, FailedPreconditionError, UnavailableError } from "../errors.js";
import { NodeCache } from "./node-cache.js";
import { decodeNode, encodeNode, type NodeRecord } from "./node.js";
import { nodeKey, type NodeEvent, type NodeRegistry, type RegistryOptions } from "./registry.js";

/** idle → registering → registered → closed; a failed register() goes back to idle. */
type State = "idle" | "registering" | "registered" | "closed";

/** register() and each request give up after min(ttl, this). */
const REQUEST_BOUND_MS = 5_000;
/** close() deregisters within this, or leaves the record to go stale. */
const CLOSE_BOUND_MS = 2_000;
/** First retry of a failed refresh; doubles up to ttl/3. */
const FIRST_RETRY_MS = 100;
/** Records read at once. */
const READ_CONCURRENCY = 16;
/** An error body quoted in a message is cut to this. */
const QUOTE_CHARS = 200;

function reason(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  if (err.name === "TimeoutError") return "no answer in time";
  // fetch() reports "fetch failed"; what happened is in its cause (ECONNREFUSED, ...).
  const cause = err.cause;
  if (err.message === "fetch failed" && cause instanceof Error) return cause.message || (cause as NodeJS.ErrnoException).code || err.message;
  return err.message;
}

/** Rejects with `what` if `promise` has not settled within `ms`. */
function within<T>(ms: number, promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The record without its heartbeat, to tell a change from a refresh. */
function contentOf(node: NodeRecord): string {
  return encodeNode({ ...node, updatedAt: 0 });
}

/** `fn` over `items`, at most `limit` at a time, results in order. */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

export class HttpRegistry implements NodeRegistry {
  readonly backend = "http" as const;
  readonly where: string;
  readonly #url: URL;
  readonly #options: RegistryOptions;
  readonly #log: Logger;
  readonly #cache: NodeCache;
  readonly #indexKey: string;
  readonly #period: number;
  readonly #bound: number;
  #state: State = "idle";
  /** This node's record as last written (or being written); set from register() to close(). */
  #self: NodeRecord | undefined;
  /** Refreshes are failing; warned once, cleared (with an info) by the next good one. */
  #outage = false;
  #retryMs = FIRST_RETRY_MS;
  #watchers = 0;
  #registering: Promise<void> | undefined;
  #closing: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #timerAt = 0;
  #ticking = false;
  /** The run in progress, which close() lets finish before it deletes the record. */
  #running: Promise<void> | undefined;
  #tickAgain = false;
  /** Undecodable values already warned about, by key, so a poll does not warn again. */
  readonly #badValues = new Map<string, string>();

  constructor(server: string, options: RegistryOptions, log: Logger) {
    let url: URL | undefined;
    try {
      url = new URL(server);
    } catch {
      url = undefined;
    }
    if (url === undefined || (url.protocol !== "http:" && url.protocol !== "https:") || url.hostname === "") {
      throw new ConfigError("metadata_server", "metadata_server", server, "http://HOST[:PORT]/PATH");
    }
    this.#url = url;
    this.#options = options;
    this.#log = log;
    this.#cache = new NodeCache(log);
    this.#indexKey = `${options.prefix}nodes`;
    this.#period = Math.max(1, Math.floor(options.ttlMs / 3));
    this.#bound = Math.min(options.ttlMs, REQUEST_BOUND_MS);
    this.where = `http at ${server} (prefix ${JSON.stringify(options.prefix)})`;
  }

  /**
   * Writes this node's record, adds it to the index, and keeps both up until close().
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
    // Set before writing, so that a close() racing this write deletes what it wrote.
    this.#self = { ...self };
    let nodes: NodeRecord[];
    try {
      nodes = await within(this.#bound, this.#sync(true), "the metadata server");
    } catch (err) {
      if (this.#state === "registering") {
        this.#state = "idle";
        this.#self = undefined;
      }
      throw new UnavailableError(`cannot register with ${this.where}: ${reason(err)}`, { cause: err });
    }
    if (this.#closed) return; // closed meanwhile: close() deregisters
    this.#state = "registered";
    this.#cache.replace(nodes.map((n) => this.#known(n)));
    this.#log.info({ metadata: this.where, nodeId: self.nodeId, ttlMs: this.#options.ttlMs }, "registered with the node registry");
    this.#schedule(this.#period);
  }

  /** Changes fields of this node's record; written with the next refresh. */
  update(patch: Partial<Omit<NodeRecord, "nodeId">>): void {
    const self = this.#self;
    if (self === undefined || this.#state === "closed") return;
    this.#self = { ...self, ...patch, nodeId: self.nodeId };
  }

  /**
   * The node's record as the server has it now (undefined when absent or stale). When the
   * server cannot be reached, a registry that is registered or watching answers with the
   * last known record.
   * @throws UnavailableError when the server cannot be reached and this registry has no view of its own.
   */
  async lookup(nodeId: string): Promise<NodeRecord | undefined> {
    if (this.#state === "closed") return this.#cache.get(nodeId);
    const key = nodeKey(this.#options.prefix, nodeId);
    let text: string | undefined;
    try {
      text = await this.#get(key);
    } catch (err) {
      this.#unreachable("lookup", err);
      return this.#cache.get(nodeId);
    }
    const node = text === undefined ? undefined : this.#decode(key, text);
    if (node === undefined || this.#stale(node, Date.now())) {
      this.#cache.delete(nodeId);
      return undefined;
    }
    this.#cache.set(this.#known(node));
    return node;
  }

  /**
   * Every live node the index lists, as the server has them now. When the server cannot be
   * reached, a registry that is registered or watching answers with the last known nodes.
   * @throws UnavailableError when the server cannot be reached and this registry has no view of its own.
   */
  async list(): Promise<NodeRecord[]> {
    if (this.#state === "closed") return this.#cache.list();
    try {
      const nodes = await this.#sync(false);
      if (!this.#closed) this.#cache.replace(nodes.map((n) => this.#known(n)));
      return nodes.sort((a, b) => (a.nodeId < b.nodeId ? -1 : a.nodeId > b.nodeId ? 1 : 0));
    } catch (err) {
      this.#unreachable("list", err);
      return this.#cache.list();
    }
  }

  /** Joins for the nodes known now, then joins, updates and leaves as the polls (every ttl/3) find them. */
  watch(listener: (event: NodeEvent) => void): () => void {
    if (this.#state === "closed") return () => {};
    this.#watchers++;
    if (this.#watchers === 1 && this.#state !== "registered") this.#schedule(0);
    const unsubscribe = this.#cache.watch(listener);
    let watching = true;
    return () => {
      if (!watching) return;
      watching = false;
      this.#watchers--;
      unsubscribe();
    };
  }

  /** Deletes this node's record and removes it from the index (best effort, within 2 s). */
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
      if (self === undefined) return;
      await this.#delete(nodeKey(this.#options.prefix, self.nodeId));
      const ids = await this.#readIndex();
      if (ids.includes(self.nodeId)) await this.#put(this.#indexKey, JSON.stringify(ids.filter((id) => id !== self.nodeId)));
    };
    try {
      await within(CLOSE_BOUND_MS, deregister(), "deregistering");
    } catch (err) {
      this.#log.warn({ err, metadata: this.where }, "could not delete this node's record: it goes stale after the TTL");
    }
  }

  /** (A getter, so that TypeScript does not narrow the state across an await.) */
  get #closed(): boolean {
    return this.#state === "closed";
  }

  /** A read failed: answer from the cache if it is kept up to date, else throw. */
  #unreachable(what: string, err: unknown): void {
    if (this.#state !== "registered" && this.#watchers === 0) {
      throw new UnavailableError(`cannot read from ${this.where}: ${reason(err)}`, { cause: err });
    }
    this.#log.debug({ err, metadata: this.where }, `${what}: metadata server unreachable, answering from the last known state`);
  }

  // --- the protocol -----------------------------------------------------------------------

  async #request(method: "GET" | "PUT" | "DELETE", key: string, body?: string): Promise<{ status: number; text: string }> {
    const url = new URL(this.#url);
    url.searchParams.set("key", key);
    const res = await fetch(url, {
      method,
      body,
      headers: body === undefined ? undefined : { "content-type": "application/json" },
      signal: AbortSignal.timeout(this.#bound),
    });
    const text = await res.text();
    if (res.status !== 200 && res.status !== 404) {
      throw new Error(`${method} ${JSON.stringify(key)}: HTTP ${res.status} ${text.trim().slice(0, QUOTE_CHARS)}`);
    }
    return { status: res.status, text };
  }

  /** The value, or undefined when the key is absent (404). */
  async #get(key: string): Promise<string | undefined> {
    const { status, text } = await this.#request("GET", key);
    return status === 404 ? undefined : text;
  }

  async #put(key: string, value: string): Promise<void> {
    const { status, text } = await this.#request("PUT", key, value);
    if (status !== 200) throw new Error(`PUT ${JSON.stringify(key)}: HTTP ${status} ${text.trim().slice(0, QUOTE_CHARS)}`);
  }

  /** Deletes the key; an absent key (404) is no error. */
  async #delete(key: string): Promise<void> {
    await this.#request("DELETE", key);
  }

  /** The index's node ids; an absent index is empty, an unreadable one is warned about and empty. */
  async #readIndex(): Promise<string[]> {
    const text = await this.#get(this.#indexKey);
    if (text === undefined) return [];
    let ids: unknown;
    try {
      ids = JSON.parse(text);
    } catch {
      ids = undefined;
    }
    if (!Array.isArray(ids)) {
      this.#warnBad(this.#indexKey, text, "not a JSON array", "skipping a node index that does not decode: the next refresh rewrites it");
      return [];
    }
    this.#badValues.delete(this.#indexKey);
    return [...new Set(ids.filter((id): id is string => typeof id === "string" && id.length > 0 && id.length <= 1024))];
  }

  // --- refresh and poll -------------------------------------------------------------------

  /**
   * One pass: (when `write`) this node's record written; the index read and every record it
   * lists; (when `write`) the index rewritten with this node in it and without the absent or
   * stale ones, whose records are deleted. Resolves to the live nodes.
   */
  async #sync(write: boolean): Promise<NodeRecord[]> {
    const now = Date.now();
    const prefix = this.#options.prefix;
    let self: NodeRecord | undefined;
    if (write && this.#self !== undefined) {
      self = { ...this.#self, updatedAt: now };
      await this.#put(nodeKey(prefix, self.nodeId), encodeNode(self));
    }
    const ids = await this.#readIndex();
    const others = ids.filter((id) => id !== self?.nodeId);
    const texts = await mapLimit(others, READ_CONCURRENCY, (id) => this.#get(nodeKey(prefix, id)));
    const live: NodeRecord[] = self ? [self] : [];
    const gone: string[] = [];
    const stale: string[] = [];
    others.forEach((id, i) => {
      const text = texts[i];
      if (text === undefined) return void gone.push(id);
      const node = this.#decode(nodeKey(prefix, id), text);
      if (node === undefined) return; // skipped, but kept in the index: it may be a newer version's
      if (this.#stale(node, now)) stale.push(id);
      else live.push(node);
    });
    if (self !== undefined) {
      if (!ids.includes(self.nodeId) && this.#state === "registered") {
        this.#log.info({ metadata: this.where, nodeId: self.nodeId }, "this node was missing from the node index (lost or pruned): added again");
      }
      const drop = new Set([...gone, ...stale]);
      const next = [...ids.filter((id) => !drop.has(id) && id !== self.nodeId), self.nodeId];
      if (drop.size > 0 || !ids.includes(self.nodeId)) await this.#put(this.#indexKey, JSON.stringify(next));
      if (stale.length > 0) {
        this.#log.info({ metadata: this.where, nodes: stale }, "pruned nodes whose records went stale");
        await Promise.all(stale.map((id) => this.#delete(nodeKey(prefix, id)).catch(() => {})));
      }
    }
    for (const key of this.#badValues.keys()) {
      if (key !== this.#indexKey && !others.some((id) => nodeKey(prefix, id) === key)) this.#badValues.delete(key);
    }
    return live;
  }

  #stale(node: NodeRecord, now: number): boolean {
    return now - node.updatedAt > this.#options.ttlMs;
  }

  /** Runs #tick after `ms`, unless a run is already due sooner. */
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

  /** One period: refresh (when registered) and poll (when registered or watching). */
  async #tick(): Promise<void> {
    if (this.#closed || this.#ticking) return;
    const registered = this.#state === "registered";
    if (!registered && this.#watchers === 0) return; // nothing to do until watched again
    this.#ticking = true;
    let next = this.#period;
    try {
      const nodes = await within(this.#bound, this.#sync(registered), "the metadata server");
      if (!this.#closed) this.#cache.replace(nodes.map((n) => this.#known(n)));
      if (registered) this.#refreshed();
    } catch (err) {
      if (registered) {
        this.#lost(err);
        next = this.#retryMs;
        this.#retryMs = Math.min(this.#retryMs * 2, this.#period);
      } else {
        this.#log.debug({ err, metadata: this.where }, "poll failed: keeping the known nodes");
      }
    }
    this.#ticking = false;
    if (this.#tickAgain) {
      this.#tickAgain = false;
      next = 0;
    }
    this.#schedule(next);
  }

  #refreshed(): void {
    this.#retryMs = FIRST_RETRY_MS;
    if (this.#outage && !this.#closed) {
      this.#outage = false;
      this.#log.info({ metadata: this.where, nodeId: this.#self?.nodeId }, "node registry reachable again: this node's record is re-written");
    }
  }

  /** A refresh failed: warn once per outage. */
  #lost(err: unknown): void {
    if (this.#outage || this.#closed) return;
    this.#outage = true;
    this.#log.warn(
      { err, metadata: this.where, ttlMs: this.#options.ttlMs },
      "node registry unreachable: this node's record is re-written once it is back",
    );
  }

  /**
   * `node`, or the cached record when only its updatedAt differs: a refresh is a heartbeat,
   * not a change, so it must not reach the watchers as an update.
   */
  #known(node: NodeRecord): NodeRecord {
    const cached = this.#cache.get(node.nodeId);
    return cached !== undefined && contentOf(cached) === contentOf(node) ? cached : node;
  }

  /** The record under `key`, or undefined (warned once per value) when it does not decode. */
  #decode(key: string, text: string): NodeRecord | undefined {
    const decoded = decodeNode(text);
    const problem =
      decoded instanceof Error
        ? decoded.message
        : nodeKey(this.#options.prefix, decoded.nodeId) !== key
          ? `its nodeId ${JSON.stringify(decoded.nodeId)} does not match the key`
          : undefined;
    if (problem === undefined) {
      this.#badValues.delete(key);
      return decoded as NodeRecord;
    }
    this.#warnBad(key, text, problem);
    return undefined;
  }

  #warnBad(key: string, text: string, problem: string, msg = "skipping a node record that does not decode"): void {
    if (this.#badValues.get(key) === text) return;
    if (this.#badValues.size >= 1024) this.#badValues.clear();
    this.#badValues.set(key, text);
    this.#log.warn({ key, metadata: this.where, problem }, msg);
  }
}
