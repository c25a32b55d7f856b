// The node registry on an http metadata server (`metadata_server: "http://HOST:PORT/PATH"`),
// speaking Mooncake's simple protocol: GET / PUT / DELETE `<url>?key=K`, 404 for an absent
// key (`kvferry metadata-server` serves it; so does Mooncake's own metadata server).
//
// The protocol has no TTL, no listing and no watch, so the registry builds them:
//  - liveness: each record carries updatedAt, rewritten every ttl/3, and its writer's TTL
//    (ttlMs); a reader treats a record older than that TTL as gone (its own TTL for a
//    record without one), so a proxy or a node with another TTL does not see a live node
//    come and go (the nodes' clocks must roughly agree);
//  - listing: an index key `${prefix}nodes` holds a JSON array of node ids. Every node
//    re-adds itself at each refresh (read-modify-write: an update lost to a concurrent
//    writer heals at that node's next refresh) and prunes the ids whose records are
//    absent or stale, deleting the stale records. So a refresh reads every node anyway,
//    and that read is what the watchers get;
//  - watching: reading the index and its records every ttl/3 (RefreshingRegistry's
//    period), fed whole to the NodeCache, which turns the differences into events.
// A restarted (empty) server is repopulated by the nodes' next refreshes. The
// registration, the period, retries, outage logging and close() are RefreshingRegistry's.
// Each request is bounded with AbortSignal.timeout, and a refresh as a whole by min(ttl, 5 s).
// Reading every record of the index each period costs N requests per node: meant for the
// tens of nodes of a serving cluster, not thousands.
import type { Logger } from "pino";
import { ConfigError } from "../errors.js";
import type { NodeRecord } from "./node.js";
import { RefreshingRegistry, within } from "./refreshing-registry.js";
import { nodeKey, type RegistryOptions } from "./registry.js";

/** Records read at once. */
const READ_CONCURRENCY = 16;
/** A record's own TTL is believed within metadata_ttl_ms's bounds (1 s to a day here). */
const MIN_TTL_MS = 1_000;
const MAX_TTL_MS = 86_400_000;
/** An error body quoted in a message is cut to this. */
const QUOTE_CHARS = 200;

function parseServer(server: string): URL {
  let url: URL | undefined;
  try {
    url = new URL(server);
  } catch {
    url = undefined;
  }
  if (url === undefined || (url.protocol !== "http:" && url.protocol !== "https:") || url.hostname === "") {
    throw new ConfigError("metadata_server", "metadata_server", server, "http://HOST[:PORT]/PATH");
  }
  return url;
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

export class HttpRegistry extends RefreshingRegistry {
  readonly backend = "http" as const;
  protected readonly serverName = "the metadata server";
  protected readonly writeReadsAll = true;
  readonly #url: URL;
  readonly #indexKey: string;
  /** The TTL each decoded record carries (its writer's), when it carries a valid one. */
  readonly #ttls = new WeakMap<NodeRecord, number>();

  constructor(server: string, options: RegistryOptions, log: Logger) {
    const url = parseServer(server);
    super(`http at ${server}`, options, log);
    this.#url = url;
    this.#indexKey = `${options.prefix}nodes`;
  }

  // --- records ------------------------------------------------------------------------

  /** This node's record written, the index read, pruned and rewritten (#sync); resolves to the live nodes. */
  protected writeRecord(record: NodeRecord): Promise<NodeRecord[]> {
    // Bounded as a whole, or a server that trickles its answers would stop the period.
    return within(this.bound, this.#sync(record), this.serverName);
  }

  protected readRecord(nodeId: string): Promise<string | undefined> {
    return this.#get(nodeKey(this.options.prefix, nodeId));
  }

  protected readAll(): Promise<NodeRecord[]> {
    return this.#sync(undefined);
  }

  /** Deletes the record and removes the node from the index. */
  protected async deleteRecord(nodeId: string): Promise<void> {
    await this.#delete(nodeKey(this.options.prefix, nodeId));
    const ids = await this.#readIndex();
    if (ids.includes(nodeId)) await this.#put(this.#indexKey, JSON.stringify(ids.filter((id) => id !== nodeId)));
  }

  /** Not older than its writer's TTL (this registry's for a record that names none). */
  protected override isLive(node: NodeRecord, now: number): boolean {
    return now - node.updatedAt <= (this.#ttls.get(node) ?? this.options.ttlMs);
  }

  /** The record, with the TTL its writer refreshes it by remembered for isLive(). */
  protected override decode(key: string, text: string): NodeRecord | undefined {
    const node = super.decode(key, text);
    if (node === undefined) return undefined;
    const ttl = (JSON.parse(text) as { ttlMs?: unknown }).ttlMs; // decoded above: JSON of an object
    if (typeof ttl === "number" && Number.isSafeInteger(ttl) && ttl >= MIN_TTL_MS && ttl <= MAX_TTL_MS) this.#ttls.set(node, ttl);
    return node;
  }

  protected override reason(err: unknown): string {
    if (!(err instanceof Error)) return String(err);
    if (err.name === "TimeoutError") return "no answer in time";
    // fetch() reports "fetch failed"; what happened is in its cause (ECONNREFUSED, ...).
    const cause = err.cause;
    if (err.message === "fetch failed" && cause instanceof Error) return cause.message || (cause as NodeJS.ErrnoException).code || err.message;
    return err.message;
  }

  /**
   * One pass: (given `self`) this node's record written; the index read and every record it
   * lists; (given `self`) the index rewritten with this node in it and without the absent
   * or stale ones, whose records are deleted. Resolves to the live nodes.
   */
  async #sync(self: NodeRecord | undefined): Promise<NodeRecord[]> {
    const now = Date.now();
    const prefix = this.options.prefix;
    // encodeNode's JSON plus the TTL this node refreshes its record by (see isLive()).
    if (self !== undefined) await this.#put(nodeKey(prefix, self.nodeId), JSON.stringify({ ...self, ttlMs: this.options.ttlMs }));
    const ids = await this.#readIndex();
    const others = ids.filter((id) => id !== self?.nodeId);
    const texts = await mapLimit(others, READ_CONCURRENCY, (id) => this.#get(nodeKey(prefix, id)));
    const live: NodeRecord[] = self ? [self] : [];
    const gone: string[] = [];
    const stale: string[] = [];
    others.forEach((id, i) => {
      const text = texts[i];
      if (text === undefined) return void gone.push(id);
      const node = this.decode(nodeKey(prefix, id), text);
      if (node === undefined) return; // skipped, but kept in the index: it may be a newer version's
      if (this.isLive(node, now)) live.push(node);
      else stale.push(id);
    });
    if (self !== undefined) {
      if (!ids.includes(self.nodeId) && this.registered) {
        this.log.info({ metadata: this.where, nodeId: self.nodeId }, "this node was missing from the node index (lost or pruned): added again");
      }
      const drop = new Set([...gone, ...stale]);
      const next = [...ids.filter((id) => !drop.has(id) && id !== self.nodeId), self.nodeId];
      if (drop.size > 0 || !ids.includes(self.nodeId)) await this.#put(this.#indexKey, JSON.stringify(next));
      if (stale.length > 0) {
        this.log.info({ metadata: this.where, nodes: stale }, "pruned nodes whose records went stale");
        await Promise.all(stale.map((id) => this.#delete(nodeKey(prefix, id)).catch(() => {})));
      }
    }
    const listed = new Set(others.map((id) => nodeKey(prefix, id)));
    this.badValues.keepOnly((key) => key === this.#indexKey || listed.has(key));
    return live;
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
      this.badValues.warn(this.#indexKey, text, "not a JSON array", "skipping a node index that does not decode: the next refresh rewrites it");
      return [];
    }
    this.badValues.clear(this.#indexKey);
    return [...new Set(ids.filter((id): id is string => typeof id === "string" && id.length > 0 && id.length <= 1024))];
  }

  // --- the protocol -----------------------------------------------------------------------

  async #request(method: "GET" | "PUT" | "DELETE", key: string, body?: string): Promise<{ status: number; text: string }> {
    const url = new URL(this.#url);
    url.searchParams.set("key", key);
    const res = await fetch(url, {
      method,
      body,
      headers: body === undefined ? undefined : { "content-type": "application/json" },
      signal: AbortSignal.timeout(this.bound),
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
}
