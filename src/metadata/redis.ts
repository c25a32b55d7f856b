// The node registry on a redis server (`metadata_server: "redis://HOST:PORT[/DB]"`).
//
// Each node keeps one key, `${prefix}nodes/${nodeId}`, written with `SET key value PX ttl
// GET` and rewritten every ttl/3 with its current updatedAt and the fields update()
// changed. The TTL is the liveness: a daemon that dies stops rewriting and its key lapses.
// The refresh is an unconditional SET, so a record lost to a restarted server or a flush
// comes back by itself; after a connection loss the refresh runs as soon as the client
// is ready again. (GET returns the previous value, which tells a refresh that its key was
// gone: SET ... GET needs redis 6.2.) The registration, the period, retries, outage
// logging, the cache and close() are RefreshingRegistry's; this file is how redis stores,
// reads and announces records.
//
// Watching: redis only notifies key expiry to clients when keyspace notifications are
// enabled on the server, which a stock redis does not do. So nodes announce themselves: a
// small message (the node id) on the channel `${prefix}events` when a node registers,
// when its record changes, when it had to be written again and when it leaves. Watchers
// subscribe on a second connection and read that node's key. What no message can tell (a
// TTL lapsing) the read every ttl/3 finds: `SCAN MATCH ${prefix}nodes/*`, then MGET.
//
// The command connection never queues commands while redis is down: they fail at once, so
// register() reports UnavailableError within a bound rather than waiting, and the client
// reconnects by itself with a bounded backoff. Callers that must wait for the connection
// share one promise of it (not a listener each). Once the connection has been up, a
// registry that is registered or watching does not wait at all while it is down again,
// or while its last command timed out (a frozen server): lookups and lists answer from
// the last known state at once (`reachable`), and the period finds redis back.
import { Redis, type RedisOptions } from "ioredis";
import type { Logger } from "pino";
import { ConfigError } from "../errors.js";
import { encodeNode, type NodeRecord } from "./node.js";
import { RefreshingRegistry, within } from "./refreshing-registry.js";
import { nodeKey, nodesPrefix, type RegistryOptions } from "./registry.js";

/** First reconnect delay; doubles up to ttl/3 (and 2 s). */
const FIRST_RECONNECT_MS = 100;
/** Keys per SCAN step and per MGET. */
const BATCH = 256;
/** How ioredis rejects a command that got no reply within commandTimeout. */
const COMMAND_TIMED_OUT = "Command timed out";

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

/** "HOST:PORT[/DB]", brackets around an IPv6 host. */
function display({ host, port, db }: RedisAddress): string {
  return `${host.includes(":") ? `[${host}]` : host}:${port}${db === 0 ? "" : `/${db}`}`;
}

/** A SCAN MATCH pattern for keys starting with `text` (glob characters escaped). */
function startsWithPattern(text: string): string {
  return `${text.replace(/[*?[\]\\]/g, "\\$&")}*`;
}

export class RedisRegistry extends RefreshingRegistry {
  readonly backend = "redis" as const;
  protected readonly serverName = "redis";
  protected readonly writeReadsAll = false;
  readonly #address: RedisAddress;
  readonly #channel: string;
  /** Commands: fail fast while disconnected, reconnect by themselves. */
  #cmd: Redis | undefined;
  /** #cmd has been ready at least once. */
  #wasReady = false;
  /** The last command timed out; cleared by the next answer (or reconnect). */
  #stalled = false;
  /** Settles when #cmd is next ready, or fails to connect: shared by every caller waiting. */
  #connecting: Promise<void> | undefined;
  /** The events subscription, opened by the first watch(). */
  #sub: Redis | undefined;

  constructor(server: string, options: RegistryOptions, log: Logger) {
    const address = parseServer(server);
    super(`redis at ${display(address)}`, options, log);
    this.#address = address;
    this.#channel = `${options.prefix}events`;
  }

  // --- records ------------------------------------------------------------------------

  /**
   * SET with the TTL, then the message watchers act on when `changed` or when the key was
   * not there (it lapsed while this process stood still, or the server lost it).
   */
  protected async writeRecord(record: NodeRecord, changed: boolean): Promise<undefined> {
    const cmd = this.#commands();
    await this.#ready(cmd, this.bound);
    const key = nodeKey(this.options.prefix, record.nodeId);
    const previous = await this.#answer(cmd.set(key, encodeNode(record), "PX", this.options.ttlMs, "GET"));
    if (previous === null && this.registered) {
      this.log.info({ metadata: this.where, nodeId: record.nodeId }, "this node's record had lapsed or was lost: re-written");
    }
    if (changed || previous === null) await cmd.publish(this.#channel, record.nodeId);
    return undefined;
  }

  protected async readRecord(nodeId: string): Promise<string | undefined> {
    const cmd = this.#commands();
    await this.#ready(cmd, this.bound);
    return (await this.#answer(cmd.get(nodeKey(this.options.prefix, nodeId)))) ?? undefined;
  }

  /** Every decodable record under the nodes prefix (a SCAN, then MGETs). */
  protected async readAll(): Promise<NodeRecord[]> {
    const cmd = this.#commands();
    await this.#ready(cmd, this.bound);
    const pattern = startsWithPattern(nodesPrefix(this.options.prefix));
    const keys = new Set<string>(); // SCAN may return a key twice
    let cursor = "0";
    do {
      const [next, batch] = await this.#answer(cmd.scan(cursor, "MATCH", pattern, "COUNT", BATCH));
      for (const key of batch) keys.add(key);
      cursor = next;
    } while (cursor !== "0");
    const all = [...keys];
    const nodes: NodeRecord[] = [];
    for (let i = 0; i < all.length; i += BATCH) {
      const batch = all.slice(i, i + BATCH);
      const values = await this.#answer(cmd.mget(batch));
      batch.forEach((key, j) => {
        const text = values[j];
        const node = text == null ? undefined : this.decode(key, text);
        if (node !== undefined) nodes.push(node);
      });
    }
    this.badValues.keepOnly((key) => keys.has(key));
    return nodes;
  }

  /** DEL, and the message that tells the watchers; skipped while disconnected (the key lapses). */
  protected async deleteRecord(nodeId: string): Promise<void> {
    const cmd = this.#cmd;
    if (cmd === undefined || cmd.status !== "ready") return;
    await cmd.del(nodeKey(this.options.prefix, nodeId));
    await cmd.publish(this.#channel, nodeId);
  }

  /** A node announced a change: read its key (absent: it left). */
  async #reread(nodeId: string): Promise<void> {
    if (this.closed || nodeId.length === 0 || nodeId.length > 1024) return;
    const cmd = this.#cmd;
    if (cmd === undefined || cmd.status !== "ready") return; // the re-scan after reconnecting catches up
    try {
      const text = await cmd.get(nodeKey(this.options.prefix, nodeId));
      if (!this.closed) this.heard(nodeId, text ?? undefined);
    } catch (err) {
      this.log.debug({ err, metadata: this.where, nodeId }, "cannot read an announced node: left to the re-scan");
    }
  }

  // --- connections --------------------------------------------------------------------

  /** False while a connection that was up is down, or stalled: see RefreshingRegistry. */
  protected override get reachable(): boolean {
    const cmd = this.#cmd;
    if (cmd === undefined || !this.#wasReady) return true; // never connected yet: ask, and wait for it
    return cmd.status === "ready" && !this.#stalled;
  }

  /** `command`'s reply, noting whether redis answers: a timeout marks it stalled, any answer clears that. */
  async #answer<T>(command: Promise<T>): Promise<T> {
    try {
      const reply = await command;
      this.#stalled = false;
      return reply;
    } catch (err) {
      this.#stalled = err instanceof Error && err.message === COMMAND_TIMED_OUT;
      throw err;
    }
  }

  #clientOptions(): RedisOptions {
    const { host, port, db } = this.#address;
    return {
      host,
      port,
      db,
      connectTimeout: this.bound,
      commandTimeout: this.bound,
      // Reconnect forever, backing off to at most ttl/3 (and 2 s) between attempts.
      retryStrategy: (times) => Math.min(FIRST_RECONNECT_MS * 2 ** Math.min(times - 1, 16), this.period, 2_000),
    };
  }

  /** The command connection, created (not yet connected) on first use. */
  #commands(): Redis {
    if (this.#cmd !== undefined) return this.#cmd;
    const cmd = new Redis({
      ...this.#clientOptions(),
      lazyConnect: true,
      // Fail at once while disconnected instead of queueing, and do not resend a command
      // whose connection dropped: the refresh retries with fresh values.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
    });
    cmd.on("error", (err) => this.log.debug({ err, metadata: this.where }, "redis connection error"));
    cmd.on("close", () => {
      if (this.registered) this.connectionLost(new Error("connection closed"));
    });
    cmd.on("ready", () => {
      // After a reconnect: rewrite the record (the server may have restarted empty) and
      // read every node (messages may have been missed), without waiting for the period.
      if (this.#wasReady) this.tickNow();
      this.#wasReady = true;
      this.#stalled = false;
    });
    this.#cmd = cmd;
    this.#wasReady = false;
    this.#stalled = false;
    return cmd;
  }

  /** Resolves once `cmd` is connected; rejects on its next connection error or after `ms`. */
  #ready(cmd: Redis, ms: number): Promise<void> {
    if (cmd.status === "ready") return Promise.resolve();
    if (cmd.status === "wait") cmd.connect().catch(() => {}); // the error event below tells
    if (this.#connecting === undefined) {
      const connecting = new Promise<void>((resolve, reject) => {
        const done = (err?: Error) => {
          cmd.off("ready", onReady);
          cmd.off("error", onError);
          cmd.off("end", onEnd);
          if (this.#connecting === connecting) this.#connecting = undefined;
          if (err) reject(err);
          else resolve();
        };
        const onReady = () => done();
        const onError = (err: Error) => done(err);
        const onEnd = () => done(new Error("connection closed"));
        cmd.on("ready", onReady);
        cmd.on("error", onError);
        cmd.on("end", onEnd);
      });
      this.#connecting = connecting;
    }
    return within(ms, this.#connecting, "connecting");
  }

  /** Opens the subscriber connection (once: it stays while the registry is open). */
  protected override startWatching(): void {
    if (this.#sub !== undefined) return;
    const sub = new Redis({ ...this.#clientOptions(), commandTimeout: undefined, maxRetriesPerRequest: null });
    sub.on("error", (err) => this.log.debug({ err, metadata: this.where }, "redis subscriber connection error"));
    let readyBefore = false;
    sub.on("ready", () => {
      if (readyBefore) this.tickNow(); // resubscribed: catch up on what was missed
      readyBefore = true;
    });
    sub.on("message", (channel: string, nodeId: string) => {
      if (channel === this.#channel) void this.#reread(nodeId);
    });
    sub.subscribe(this.#channel).catch((err) => {
      if (!this.closed) this.log.warn({ err, metadata: this.where }, "cannot subscribe to node events: relying on the re-scan");
    });
    this.#sub = sub;
    this.#ready(this.#commands(), this.period).catch(() => {}); // connect in the background
  }

  protected override disconnect(): void {
    this.#cmd?.disconnect(); // rejects #connecting (its "end"), if any
    this.#sub?.disconnect();
    this.#cmd = undefined;
    this.#sub = undefined;
    this.#connecting = undefined;
  }
}
