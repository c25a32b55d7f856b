// The node registry on a redis server (`metadata_server: "redis://HOST:PORT[/DB]"`).
//
// Each node keeps one key, `${prefix}nodes/${nodeId}`, written with `SET key value PX ttl
// GET` and rewritten every ttl/3 with its current updatedAt and the fields update()
// changed. The TTL is the liveness: a daemon that dies stops rewriting and its key lapses.
// The refresh is an unconditional SET, so a record lost to a restarted server or a flush
// comes back by itself; after a connection loss the refresh runs as soon as the client
// is ready again, and failed writes are retried with a bounded backoff. (GET returns the
// previous value, which tells a refresh that its key was gone: SET ... GET needs redis 6.2.)
//
// Watching: redis only notifies key expiry to clients when keyspace notifications are
// enabled on the server, which a stock redis does not do. So nodes announce themselves: a
// small message (the node id) on the channel `${prefix}events` when a node registers,
// when its record changes, when it had to be written again and when it leaves. Watchers
// subscribe on a second connection and read that node's key. What no message can tell (a
// TTL lapsing) a re-scan every ttl/3 finds: `SCAN MATCH ${prefix}nodes/*`, then MGET, fed
// whole to the NodeCache, which turns the differences into events.
//
// The command connection never queues commands while redis is down: they fail at once, so
// register() reports UnavailableError within a bound rather than waiting, and the client
// reconnects by itself with a bounded backoff. While redis is down, a registry that is
// registered or watching answers lookup() and list() from the last known state; one with
// no view of its own (`kvferry status`) gets UnavailableError.
import { Redis, type RedisOptions } from "ioredis";
import type { Logger } from "pino";
import { ConfigError, FailedPreconditionError, UnavailableError } from "../errors.js";
import { NodeCache } from "./node-cache.js";
import { decodeNode, encodeNode, type NodeRecord } from "./node.js";
import { nodeKey, nodesPrefix, type NodeEvent, type NodeRegistry, type RegistryOptions } from "./registry.js";

/** idle → registering → registered → closed; a failed register() goes back to idle. */
type State = "idle" | "registering" | "registered" | "closed";

/** register() gives up after min(ttl, this). */
const REGISTER_BOUND_MS = 5_000;
/** close() deletes the record within this, or leaves it to lapse. */
const CLOSE_BOUND_MS = 2_000;
/** First retry of a failed refresh; doubles up to ttl/3. */
const FIRST_RETRY_MS = 100;
/** Keys per SCAN step and per MGET. */
const BATCH = 256;

interface RedisAddress {
  host: string;
  port: number;
  db: number;
}

/** `redis://HOST:PORT[/DB]` as metadata_server allows it (config/metadata.ts). */
function parseServer(server: string): RedisAddress {
  const expected = "redis://HOST:PORT or redis://HOST:PORT/DB";
  let url: URL;
  try {
    url = new URL(server);
  } catch {
    throw new ConfigError("metadata_server", "metadata_server", server, expected);
  }
  const db = url.pathname === "" || url.pathname === "/" ? 0 : Number(url.pathname.slice(1));
  if (url.protocol !== "redis:" || url.hostname === "" || !Number.isSafeInteger(db) || db < 0) {
    throw new ConfigError("metadata_server", "metadata_server", server, expected);
  }
  return { host: url.hostname.replace(/^\[(.*)\]$/, "$1"), port: url.port === "" ? 6379 : Number(url.port), db };
}

/** A SCAN MATCH pattern for keys starting with `text` (glob characters escaped). */
function startsWithPattern(text: string): string {
  return `${text.replace(/[*?[\]\\]/g, "\\$&")}*`;
}

function reason(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
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

export class RedisRegistry implements NodeRegistry {
  readonly backend = "redis" as const;
  readonly where: string;
  readonly #address: RedisAddress;
  readonly #options: RegistryOptions;
  readonly #log: Logger;
  readonly #cache: NodeCache;
  readonly #channel: string;
  readonly #period: number;
  #state: State = "idle";
  /** This node's record as last written (or being written); set from register() to close(). */
  #self: NodeRecord | undefined;
  /** The record changed since it was last announced on the channel. */
  #dirty = false;
  /** Writes are failing; warned once, cleared (with an info) by the next good write. */
  #outage = false;
  #retryMs = FIRST_RETRY_MS;
  /** Commands: fail fast while disconnected, reconnect by themselves. */
  #cmd: Redis | undefined;
  /** The events subscription, opened by the first watch(). */
  #sub: Redis | undefined;
  #watchers = 0;
  #registering: Promise<void> | undefined;
  #closing: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #timerAt = 0;
  #ticking = false;
  /** The run in progress, which close() lets finish before it deletes the record. */
  #running: Promise<void> | undefined;
  #tickAgain = false;
  /** Undecodable values already warned about, by key, so a re-scan does not warn again. */
  readonly #badValues = new Map<string, string>();

  constructor(server: string, options: RegistryOptions, log: Logger) {
    this.#address = parseServer(server);
    this.#options = options;
    this.#log = log;
    this.#cache = new NodeCache(log);
    this.#channel = `${options.prefix}events`;
    this.#period = Math.max(1, Math.floor(options.ttlMs / 3));
    const { host, port, db } = this.#address;
    const address = `${host.includes(":") ? `[${host}]` : host}:${port}${db === 0 ? "" : `/${db}`}`;
    this.where = `redis at ${address} (prefix ${JSON.stringify(options.prefix)})`;
  }

  /**
   * Writes this node's record (SET PX ttl), announces it, and keeps it alive until close().
   * @throws UnavailableError naming the server when redis cannot be reached within min(ttl, 5 s).
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
    const bound = Math.min(this.#options.ttlMs, REGISTER_BOUND_MS);
    const record = { ...self, updatedAt: Date.now() };
    // Set before writing, so that a close() racing this write deletes what it wrote.
    this.#self = record;
    try {
      await within(bound, this.#write(this.#commands(), record, true), "redis");
    } catch (err) {
      if (this.#state === "registering") {
        this.#state = "idle";
        this.#self = undefined;
        // Nothing is left running after a failed register() unless watchers need it.
        if (this.#watchers === 0) this.#disconnect();
      }
      throw new UnavailableError(`cannot register with ${this.where}: ${reason(err)}`, { cause: err });
    }
    if (this.#state !== "registering") return; // closed meanwhile: close() deletes the record
    this.#state = "registered";
    this.#remember(record);
    this.#log.info({ metadata: this.where, nodeId: record.nodeId, ttlMs: this.#options.ttlMs }, "registered with the node registry");
    this.#schedule(this.#period);
  }

  /** Changes fields of this node's record; written (and announced) with the next refresh. */
  update(patch: Partial<Omit<NodeRecord, "nodeId">>): void {
    const self = this.#self;
    if (self === undefined || this.#state === "closed") return;
    const next = { ...self, ...patch, nodeId: self.nodeId };
    if (contentOf(next) === contentOf(self)) return;
    this.#self = next;
    this.#dirty = true;
  }

  /**
   * The node's record as redis has it now. When redis cannot be reached, a registry that is
   * registered or watching answers with the last known record.
   * @throws UnavailableError when redis cannot be reached and this registry has no view of its own.
   */
  async lookup(nodeId: string): Promise<NodeRecord | undefined> {
    if (this.#state === "closed") return this.#cache.get(nodeId);
    const key = nodeKey(this.#options.prefix, nodeId);
    let text: string | null;
    try {
      const cmd = this.#commands();
      await this.#ready(cmd, Math.min(this.#options.ttlMs, REGISTER_BOUND_MS));
      text = await cmd.get(key);
    } catch (err) {
      this.#unreachable("lookup", err);
      return this.#cache.get(nodeId);
    }
    const node = text === null ? undefined : this.#decode(key, text);
    if (node === undefined) this.#cache.delete(nodeId);
    else this.#remember(node);
    return node;
  }

  /**
   * Every node redis has now (a scan). When redis cannot be reached, a registry that is
   * registered or watching answers with the last known nodes.
   * @throws UnavailableError when redis cannot be reached and this registry has no view of its own.
   */
  async list(): Promise<NodeRecord[]> {
    if (this.#state === "closed") return this.#cache.list();
    try {
      const cmd = this.#commands();
      await this.#ready(cmd, Math.min(this.#options.ttlMs, REGISTER_BOUND_MS));
      const nodes = await this.#scan(cmd);
      if (!this.#closed) this.#cache.replace(nodes.map((n) => this.#known(n)));
      return nodes.sort((a, b) => (a.nodeId < b.nodeId ? -1 : a.nodeId > b.nodeId ? 1 : 0));
    } catch (err) {
      this.#unreachable("list", err);
      return this.#cache.list();
    }
  }

  /**
   * Joins for the nodes known now, then joins, updates and leaves as they happen: from the
   * events channel at once, and from the re-scan every ttl/3 (lapsed TTLs, missed messages).
   */
  watch(listener: (event: NodeEvent) => void): () => void {
    if (this.#state === "closed") return () => {};
    this.#watchers++;
    if (this.#sub === undefined) this.#subscribe();
    const unsubscribe = this.#cache.watch(listener);
    let watching = true;
    return () => {
      if (!watching) return;
      watching = false;
      this.#watchers--;
      unsubscribe();
    };
  }

  /** A read failed: answer from the cache if it is kept up to date, else throw. */
  #unreachable(what: string, err: unknown): void {
    if (this.#state !== "registered" && this.#watchers === 0) {
      throw new UnavailableError(`cannot read from ${this.where}: ${reason(err)}`, { cause: err });
    }
    this.#log.debug({ err, metadata: this.where }, `${what}: redis unreachable, answering from the last known state`);
  }

  /** Deletes this node's record (best effort, within 2 s), announces it, closes both connections. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#state = "closed";
    clearTimeout(this.#timer);
    const cmd = this.#cmd;
    const deregister = async () => {
      await this.#registering?.catch(() => {});
      await this.#running?.catch(() => {}); // a refresh landing after the delete would bring the record back
      const self = this.#self;
      if (self === undefined || cmd === undefined || cmd.status !== "ready") return;
      await cmd.del(nodeKey(this.#options.prefix, self.nodeId));
      await cmd.publish(this.#channel, self.nodeId);
    };
    try {
      await within(CLOSE_BOUND_MS, deregister(), "deleting the record");
    } catch (err) {
      this.#log.warn({ err, metadata: this.where }, "could not delete this node's record: it lapses after the TTL");
    }
    this.#disconnect();
  }

  /** (A getter, so that TypeScript does not narrow the state across an await.) */
  get #closed(): boolean {
    return this.#state === "closed";
  }

  // --- connections --------------------------------------------------------------------

  #clientOptions(): RedisOptions {
    const { host, port, db } = this.#address;
    const bound = Math.min(this.#options.ttlMs, REGISTER_BOUND_MS);
    return {
      host,
      port,
      db,
      connectTimeout: bound,
      commandTimeout: bound,
      // Reconnect forever, backing off to at most ttl/3 (and 2 s) between attempts.
      retryStrategy: (times) => Math.min(FIRST_RETRY_MS * 2 ** Math.min(times - 1, 16), this.#period, 2_000),
    };
  }

  /** The command connection, created (not yet connected) on first use. */
  #commands(): Redis {
    if (this.#cmd !== undefined) return this.#cmd;
    const cmd = new Redis({
      ...this.#clientOptions(),
      lazyConnect: true,
      // Fail at once while disconnected instead of queueing, and do not resend a command
      // whose connection dropped: the refresh loop retries with fresh values.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
    });
    let readyBefore = false;
    cmd.on("error", (err) => this.#log.debug({ err, metadata: this.where }, "redis connection error"));
    cmd.on("close", () => {
      if (this.#state === "registered") this.#lost(new Error("connection closed"));
    });
    cmd.on("ready", () => {
      // After a reconnect: rewrite the record (the server may have restarted empty) and
      // re-scan (messages may have been missed), without waiting for the next period.
      if (readyBefore) this.#schedule(0);
      readyBefore = true;
    });
    this.#cmd = cmd;
    return cmd;
  }

  /** Resolves once `cmd` is connected; rejects on its first connection error or after `ms`. */
  #ready(cmd: Redis, ms: number): Promise<void> {
    if (cmd.status === "ready") return Promise.resolve();
    if (cmd.status === "wait") cmd.connect().catch(() => {}); // the error event below tells
    return new Promise<void>((resolve, reject) => {
      const done = (err?: Error) => {
        clearTimeout(timer);
        cmd.off("ready", onReady);
        cmd.off("error", onError);
        if (err) reject(err);
        else resolve();
      };
      const onReady = () => done();
      const onError = (err: Error) => done(err);
      const timer = setTimeout(() => done(new Error(`not connected within ${ms} ms`)), ms);
      cmd.on("ready", onReady);
      cmd.on("error", onError);
    });
  }

  /** Opens the subscriber connection, and starts the re-scan loop. */
  #subscribe(): void {
    const sub = new Redis({ ...this.#clientOptions(), commandTimeout: undefined, maxRetriesPerRequest: null });
    sub.on("error", (err) => this.#log.debug({ err, metadata: this.where }, "redis subscriber connection error"));
    let readyBefore = false;
    sub.on("ready", () => {
      if (readyBefore) this.#schedule(0); // resubscribed: catch up on what was missed
      readyBefore = true;
    });
    sub.on("message", (channel: string, nodeId: string) => {
      if (channel === this.#channel) void this.#reread(nodeId);
    });
    sub.subscribe(this.#channel).catch((err) => {
      if (this.#state !== "closed") this.#log.warn({ err, metadata: this.where }, "cannot subscribe to node events: relying on the re-scan");
    });
    this.#sub = sub;
    this.#ready(this.#commands(), this.#period).catch(() => {}); // connect in the background
    this.#schedule(0);
  }

  #disconnect(): void {
    this.#cmd?.disconnect();
    this.#sub?.disconnect();
    this.#cmd = undefined;
    this.#sub = undefined;
  }

  // --- refresh and re-scan --------------------------------------------------------------

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

  /** One period: refresh this node's record, re-scan for the watchers. */
  async #tick(): Promise<void> {
    if (this.#state === "closed" || this.#ticking) return;
    this.#ticking = true;
    let next = this.#period;
    const cmd = this.#commands();
    if (this.#state === "registered" && this.#self !== undefined) {
      try {
        const record = { ...this.#self, updatedAt: Date.now() };
        await this.#write(cmd, record, this.#dirty || this.#outage);
        if (this.#state === "registered") this.#written(record);
      } catch (err) {
        this.#lost(err);
        next = this.#retryMs;
        this.#retryMs = Math.min(this.#retryMs * 2, this.#period);
      }
    }
    if (this.#watchers > 0) {
      try {
        await this.#ready(cmd, Math.min(this.#options.ttlMs, REGISTER_BOUND_MS));
        const nodes = await this.#scan(cmd);
        if (!this.#closed) this.#cache.replace(nodes.map((n) => this.#known(n)));
      } catch (err) {
        this.#log.debug({ err, metadata: this.where }, "re-scan failed: keeping the known nodes");
      }
    }
    this.#ticking = false;
    if (this.#tickAgain) {
      this.#tickAgain = false;
      next = 0;
    }
    this.#schedule(next);
  }

  /**
   * SET with the TTL, then the message watchers act on when `announce` or when the key was
   * not there (it lapsed while this process stood still, or the server lost it).
   */
  async #write(cmd: Redis, record: NodeRecord, announce: boolean): Promise<void> {
    await this.#ready(cmd, Math.min(this.#options.ttlMs, REGISTER_BOUND_MS));
    const key = nodeKey(this.#options.prefix, record.nodeId);
    const previous = await cmd.set(key, encodeNode(record), "PX", this.#options.ttlMs, "GET");
    if (previous === null && this.#state === "registered") {
      this.#log.info({ metadata: this.where, nodeId: record.nodeId }, "this node's record had lapsed or was lost: re-written");
    }
    if (announce || previous === null) await cmd.publish(this.#channel, record.nodeId);
  }

  /** A refresh landed: the record is in redis as `record`. */
  #written(record: NodeRecord): void {
    // update() may have run during the write: keep its fields, take the new updatedAt.
    const self = this.#self ?? record;
    if (contentOf(self) === contentOf(record)) this.#dirty = false;
    this.#self = { ...self, updatedAt: record.updatedAt };
    this.#retryMs = FIRST_RETRY_MS;
    if (this.#outage) {
      this.#outage = false;
      this.#log.info({ metadata: this.where, nodeId: record.nodeId }, "node registry reachable again: this node's record is re-written");
    }
    this.#remember(record);
  }

  /** Writing failed or the connection dropped: warn once per outage. */
  #lost(err: unknown): void {
    if (this.#outage || this.#state !== "registered") return;
    this.#outage = true;
    this.#log.warn(
      { err, metadata: this.where, ttlMs: this.#options.ttlMs },
      "node registry unreachable: this node's record is re-written once it is back",
    );
  }

  /** A node announced a change: read its key (absent: it left). */
  async #reread(nodeId: string): Promise<void> {
    if (this.#state === "closed" || nodeId.length === 0 || nodeId.length > 1024) return;
    const cmd = this.#cmd;
    if (cmd === undefined || cmd.status !== "ready") return; // the re-scan after reconnecting catches up
    const key = nodeKey(this.#options.prefix, nodeId);
    try {
      const text = await cmd.get(key);
      if (this.#closed) return;
      const node = text === null ? undefined : this.#decode(key, text);
      if (node === undefined) this.#cache.delete(nodeId);
      else this.#remember(node);
    } catch (err) {
      this.#log.debug({ err, metadata: this.where, nodeId }, "cannot read an announced node: left to the re-scan");
    }
  }

  /**
   * `node`, or the cached record when only its updatedAt differs: a refresh is a heartbeat,
   * not a change, so it must not reach the watchers as an update.
   */
  #known(node: NodeRecord): NodeRecord {
    const cached = this.#cache.get(node.nodeId);
    return cached !== undefined && contentOf(cached) === contentOf(node) ? cached : node;
  }

  #remember(node: NodeRecord): void {
    this.#cache.set(this.#known(node));
  }

  /** Every decodable record under the nodes prefix. */
  async #scan(cmd: Redis): Promise<NodeRecord[]> {
    const pattern = startsWithPattern(nodesPrefix(this.#options.prefix));
    const keys = new Set<string>(); // SCAN may return a key twice
    let cursor = "0";
    do {
      const [next, batch] = await cmd.scan(cursor, "MATCH", pattern, "COUNT", BATCH);
      for (const key of batch) keys.add(key);
      cursor = next;
    } while (cursor !== "0");
    const all = [...keys];
    const nodes: NodeRecord[] = [];
    for (let i = 0; i < all.length; i += BATCH) {
      const batch = all.slice(i, i + BATCH);
      const values = await cmd.mget(batch);
      batch.forEach((key, j) => {
        const text = values[j];
        const node = text == null ? undefined : this.#decode(key, text);
        if (node !== undefined) nodes.push(node);
      });
    }
    for (const key of this.#badValues.keys()) if (!keys.has(key)) this.#badValues.delete(key);
    return nodes;
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
    if (this.#badValues.get(key) !== text) {
      if (this.#badValues.size >= 1024) this.#badValues.clear();
      this.#badValues.set(key, text);
      this.#log.warn({ key, metadata: this.where, problem }, "skipping a node record that does not decode");
    }
    return undefined;
  }
}
