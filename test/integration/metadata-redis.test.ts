// The redis node registry against a real redis-server on a loopback port: registration,
// lookup and list, watch events (join, update, leave by close and by TTL lapse), recovery
// after redis restarts empty, unreachable servers, prefixes and undecodable records.
// Records live 1.5 s here (refreshed every 500 ms), so every wait below is a few seconds.
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { Redis } from "ioredis";
import { pino, type Logger } from "pino";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { UnavailableError } from "../../src/errors.js";
import { RedisRegistry } from "../../src/metadata/redis.js";
import { nodeKey, type NodeEvent, type NodeRecord } from "../../src/metadata/registry.js";
import { freePort, startRedis, type RedisServer } from "../helpers/redis-server.js";

const TTL_MS = 1_500;
/** Slack on top of a TTL for timers, scheduling and a busy machine. */
const MARGIN_MS = 2_000;
const REPO = fileURLToPath(new URL("../..", import.meta.url));

function node(nodeId: string, extra: Partial<NodeRecord> = {}): NodeRecord {
  return {
    nodeId,
    hostname: "host-" + nodeId,
    clientAddress: "127.0.0.1:50051",
    peerAddress: "127.0.0.1:50052",
    dataAddress: "127.0.0.1:50053",
    transports: [{ name: "tcp", params: { connectionsPerPeer: 4 } }],
    poolBytes: 1 << 30,
    poolUsedBytes: 0,
    version: "0.1.0",
    startedAt: Date.now(),
    updatedAt: 0,
    ...extra,
  };
}

/** A pino logger whose lines land in `lines` (parsed), for asserting on warnings. */
function capturingLogger(): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: "debug" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  return { log, lines };
}

async function waitFor<T>(what: string, probe: () => T | undefined | Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

function collect(registry: RedisRegistry): NodeEvent[] {
  const events: NodeEvent[] = [];
  registry.watch((e) => events.push(e));
  return events;
}

const joined = (events: NodeEvent[], id: string, from = 0) =>
  events.slice(from).find((e) => e.type === "join" && e.node.nodeId === id);
const left = (events: NodeEvent[], id: string, from = 0) =>
  events.slice(from).find((e) => e.type === "leave" && e.nodeId === id);

let redis: RedisServer;
let raw: Redis;
const open: RedisRegistry[] = [];
let prefixCount = 0;
/** A fresh prefix per test, so tests do not see each other's records. */
let prefix = "";

function registry(options: { prefix?: string; log?: Logger; server?: string } = {}): RedisRegistry {
  const r = new RedisRegistry(
    options.server ?? redis.url,
    { prefix: options.prefix ?? prefix, ttlMs: TTL_MS },
    options.log ?? pino({ level: "silent" }),
  );
  open.push(r);
  return r;
}

beforeAll(async () => {
  redis = await startRedis();
  raw = new Redis({ host: "127.0.0.1", port: redis.port, maxRetriesPerRequest: 1, lazyConnect: true });
  raw.on("error", () => {});
});

afterAll(async () => {
  raw?.disconnect();
  await redis?.stop();
});

beforeEach(() => {
  prefix = `it${++prefixCount}-${process.pid}/`;
});

afterEach(async () => {
  await Promise.all(open.splice(0).map((r) => r.close()));
});

describe("redis node registry", () => {
  it("names the server and prefix in `where`", () => {
    expect(registry().where).toBe(`redis at ${redis.address} (prefix "${prefix}")`);
    expect(registry({ server: `${redis.url}/3` }).where).toBe(`redis at ${redis.address}/3 (prefix "${prefix}")`);
  });

  it("two registered nodes find each other by lookup and list, with every field of their records", async () => {
    const a = registry();
    const b = registry();
    const recA = node("a", { poolUsedBytes: 123, transports: [{ name: "tcp", params: { connectionsPerPeer: 2, nodelay: true } }] });
    await a.register(recA);
    await b.register(node("b"));

    const seen = await b.lookup("a");
    expect(seen).toEqual({ ...recA, updatedAt: expect.any(Number) });
    expect(seen!.updatedAt).toBeGreaterThan(0);
    expect((await a.lookup("b"))?.hostname).toBe("host-b");
    expect(await a.lookup("nobody")).toBeUndefined();
    expect((await a.list()).map((n) => n.nodeId)).toEqual(["a", "b"]);
    expect((await b.list()).map((n) => n.nodeId)).toEqual(["a", "b"]);

    // The record really is in redis under nodeKey, with a TTL of at most ttlMs.
    expect(JSON.parse((await raw.get(nodeKey(prefix, "a")))!).nodeId).toBe("a");
    const pttl = await raw.pttl(nodeKey(prefix, "a"));
    expect(pttl).toBeGreaterThan(0);
    expect(pttl).toBeLessThanOrEqual(TTL_MS);
  });

  it("keeps a record alive past its TTL by refreshing it", async () => {
    const a = registry();
    await a.register(node("a"));
    const first = JSON.parse((await raw.get(nodeKey(prefix, "a")))!).updatedAt as number;
    await new Promise((resolve) => setTimeout(resolve, TTL_MS * 2));
    const later = await raw.get(nodeKey(prefix, "a"));
    expect(later).not.toBeNull();
    expect(JSON.parse(later!).updatedAt).toBeGreaterThan(first);
  });

  it("a watcher sees a join, an update after update(), and a leave when the node closes", async () => {
    const watcher = registry();
    const events = collect(watcher);
    const a = registry();
    await a.register(node("a"));
    await waitFor("join of a", () => joined(events, "a"), MARGIN_MS);

    a.update({ poolUsedBytes: 4096 });
    const update = await waitFor(
      "update of a",
      () => events.find((e) => e.type === "update" && e.node.poolUsedBytes === 4096),
      TTL_MS + MARGIN_MS,
    );
    expect(update.type === "update" && update.node.nodeId).toBe("a");

    const closedAt = Date.now();
    await a.close();
    await waitFor("leave of a", () => left(events, "a"), MARGIN_MS);
    // Deleted, not left to lapse: well under the TTL.
    expect(Date.now() - closedAt).toBeLessThan(TTL_MS);
    expect(await raw.get(nodeKey(prefix, "a"))).toBeNull();
    expect(await watcher.lookup("a")).toBeUndefined();
  });

  it("a watcher started after the nodes registered gets a join for each of them", async () => {
    const a = registry();
    const b = registry();
    await a.register(node("a"));
    await b.register(node("b"));
    const events = collect(registry());
    await waitFor("joins of a and b", () => joined(events, "a") && joined(events, "b"), MARGIN_MS);
  });

  it("a node that stops refreshing (its process frozen) leaves after the TTL, and joins again when it resumes", async () => {
    const events = collect(registry());
    const child = spawnRegistry(redis.url, prefix, "frozen");
    try {
      await child.registered;
      await waitFor("join of frozen", () => joined(events, "frozen"), MARGIN_MS);
      const stoppedAt = Date.now();
      child.proc.kill("SIGSTOP");
      await waitFor("leave of frozen", () => left(events, "frozen"), TTL_MS + MARGIN_MS);
      // Not before the TTL ran out since its last refresh (at most ttl/3 before the stop).
      expect(Date.now() - stoppedAt).toBeGreaterThanOrEqual(TTL_MS - TTL_MS / 3 - 100);
      const mark = events.length;
      child.proc.kill("SIGCONT");
      await waitFor("join of frozen again", () => joined(events, "frozen", mark), TTL_MS + MARGIN_MS);
    } finally {
      child.proc.kill("SIGKILL");
    }
  });

  it("a node whose process is killed leaves after the TTL", async () => {
    const events = collect(registry());
    const child = spawnRegistry(redis.url, prefix, "crashed");
    try {
      await child.registered;
      await waitFor("join of crashed", () => joined(events, "crashed"), MARGIN_MS);
      child.proc.kill("SIGKILL");
      await waitFor("leave of crashed", () => left(events, "crashed"), TTL_MS + MARGIN_MS);
      expect(await raw.get(nodeKey(prefix, "crashed"))).toBeNull();
    } finally {
      child.proc.kill("SIGKILL");
    }
  });

  it("re-writes its record after redis restarts empty, and another node's watchers see it again", async () => {
    const { log, lines } = capturingLogger();
    const a = registry({ log });
    const b = registry();
    await a.register(node("a"));
    await b.register(node("b"));
    const events = collect(b);
    await waitFor("join of a", () => joined(events, "a"), MARGIN_MS);

    await redis.kill();
    await new Promise((resolve) => setTimeout(resolve, 300));
    await redis.restart();
    const restartedAt = Date.now();
    const mark = events.length;
    // Empty after the restart until the nodes re-write their records.
    await waitFor("a's record back", async () => (await raw.get(nodeKey(prefix, "a"))) ?? undefined, TTL_MS + MARGIN_MS);
    await waitFor("b's record back", async () => (await raw.get(nodeKey(prefix, "b"))) ?? undefined, TTL_MS + MARGIN_MS);
    expect(Date.now() - restartedAt).toBeLessThan(TTL_MS + MARGIN_MS);
    // Two re-scan periods after both records are back, b's watchers must know a: either
    // they never saw it go, or they saw it leave (a re-scan before a re-wrote) and join again.
    await new Promise((resolve) => setTimeout(resolve, (2 * TTL_MS) / 3 + 100));
    const aboutA = events.filter((e) => (e.type === "leave" ? e.nodeId : e.node.nodeId) === "a");
    expect(aboutA.at(-1)?.type).not.toBe("leave");
    expect(events.slice(mark).filter((e) => e.type === "leave").length).toBeLessThanOrEqual(2);
    expect((await b.lookup("a"))?.nodeId).toBe("a");
    expect((await b.list()).map((n) => n.nodeId)).toEqual(["a", "b"]);

    // One warning for the outage, one info when it is over.
    await waitFor("the all-clear", () => lines.find((l) => String(l.msg).startsWith("node registry reachable again")), MARGIN_MS);
    expect(lines.filter((l) => l.level === 40 && String(l.msg).startsWith("node registry unreachable"))).toHaveLength(1);
  });

  it("register() rejects with UnavailableError naming the address within the bound when redis cannot be reached", async () => {
    const port = await freePort();
    const r = registry({ server: `redis://127.0.0.1:${port}` });
    const started = Date.now();
    const err = await r.register(node("a")).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toContain(`redis at 127.0.0.1:${port}`);
    expect(Date.now() - started).toBeLessThan(Math.min(TTL_MS, 5_000) + 500);
    // Reads by a registry with no view of its own (as `kvferry status` makes) fail too.
    await expect(r.list()).rejects.toThrow(new RegExp(`^cannot read from redis at 127\\.0\\.0\\.1:${port}`));
    await expect(r.lookup("a")).rejects.toBeInstanceOf(UnavailableError);
  });

  it("a failed register() can be retried once redis is there", async () => {
    const late = await startRedis();
    const port = late.port;
    await late.stop();
    const r = registry({ server: late.url });
    await expect(r.register(node("a"))).rejects.toBeInstanceOf(UnavailableError);
    await late.restart();
    try {
      await r.register(node("a"));
      expect((await r.lookup("a"))?.nodeId).toBe("a");
      await r.close();
      const check = new Redis({ host: "127.0.0.1", port, lazyConnect: true });
      await check.connect();
      expect(await check.get(nodeKey(prefix, "a"))).toBeNull();
      check.disconnect();
    } finally {
      await late.stop();
    }
  });

  it("prefixes keep clusters apart", async () => {
    const red = registry({ prefix: `${prefix}red/` });
    const blue = registry({ prefix: `${prefix}blue/` });
    const redEvents = collect(red);
    const blueEvents = collect(blue);
    await red.register(node("r1"));
    await blue.register(node("b1"));
    await waitFor("red sees r1", () => joined(redEvents, "r1"), MARGIN_MS);
    await waitFor("blue sees b1", () => joined(blueEvents, "b1"), MARGIN_MS);
    // Two re-scan periods for a wrong event to show up.
    await new Promise((resolve) => setTimeout(resolve, (2 * TTL_MS) / 3 + 100));
    expect((await red.list()).map((n) => n.nodeId)).toEqual(["r1"]);
    expect((await blue.list()).map((n) => n.nodeId)).toEqual(["b1"]);
    expect(await red.lookup("b1")).toBeUndefined();
    expect(redEvents.every((e) => e.type === "join" && e.node.nodeId === "r1")).toBe(true);
    expect(blueEvents.every((e) => e.type === "join" && e.node.nodeId === "b1")).toBe(true);
  });

  it("skips a value under the prefix that does not decode, warning once with its key", async () => {
    const { log, lines } = capturingLogger();
    const a = registry({ log });
    await a.register(node("a"));
    await raw.set(nodeKey(prefix, "garbage"), "{not json");
    await raw.set(nodeKey(prefix, "noaddr"), JSON.stringify({ nodeId: "noaddr" }));
    await raw.set(nodeKey(prefix, "liar"), JSON.stringify(node("someone-else")));
    const events = collect(a);
    await new Promise((resolve) => setTimeout(resolve, TTL_MS)); // a few re-scans
    expect((await a.list()).map((n) => n.nodeId)).toEqual(["a"]);
    expect(await a.list()).toHaveLength(1);
    expect(await a.lookup("garbage")).toBeUndefined();
    expect(events.map((e) => e.type === "join" && e.node.nodeId)).toEqual(["a"]);
    const warned = (key: string) => lines.filter((l) => l.level === 40 && l.key === key);
    for (const id of ["garbage", "noaddr", "liar"]) expect(warned(nodeKey(prefix, id))).toHaveLength(1);
  });

  it("while redis is down, a registered node answers lookups and lists from the last known state", async () => {
    const own = await startRedis();
    try {
      const a = registry({ server: own.url });
      const b = registry({ server: own.url });
      await a.register(node("a"));
      await b.register(node("b"));
      expect((await a.list()).map((n) => n.nodeId)).toEqual(["a", "b"]);
      await own.kill();
      const started = Date.now();
      expect((await a.list()).map((n) => n.nodeId)).toEqual(["a", "b"]);
      expect((await a.lookup("b"))?.nodeId).toBe("b");
      expect(Date.now() - started).toBeLessThan(Math.min(TTL_MS, 5_000) + 500);
    } finally {
      await own.stop();
    }
  });

  it("close() is idempotent and bounded when redis is gone, and leaves the record to lapse", async () => {
    const own = await startRedis();
    try {
      const a = registry({ server: own.url });
      await a.register(node("a"));
      await own.kill();
      const started = Date.now();
      await Promise.all([a.close(), a.close()]);
      await a.close();
      expect(Date.now() - started).toBeLessThan(3_000);
      await expect(a.register(node("a"))).rejects.toThrow(/closed/);
    } finally {
      await own.stop();
    }
  });
});

/**
 * A registry in a process of its own (so that it can be frozen or killed): registers
 * `nodeId` under `prefix` and prints "registered".
 */
function spawnRegistry(server: string, prefix: string, nodeId: string): { proc: ChildProcess; registered: Promise<void> } {
  const code = `
    import { pino } from "pino";
    import { RedisRegistry } from "./src/metadata/redis.ts";
    const r = new RedisRegistry(${JSON.stringify(server)}, { prefix: ${JSON.stringify(prefix)}, ttlMs: ${TTL_MS} }, pino({ level: "silent" }));
    await r.register(${JSON.stringify(node(nodeId))});
    console.log("registered");
  `;
  const proc = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", code], {
    cwd: REPO,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  proc.stderr!.on("data", (d) => (stderr += d));
  const registered = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`child registry did not register within 10 s: ${stderr}`)), 10_000);
    proc.once("exit", (code) => reject(new Error(`child registry exited with ${code}: ${stderr}`)));
    createInterface({ input: proc.stdout! }).on("line", (line) => {
      if (line === "registered") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  return { proc, registered };
}
