// The http metadata protocol as `kvferry metadata-server` serves it (a real process, built
// from dist/), and the http node registry on top of it: registration, lookup and list,
// watch events (join, update, leave by close and by records going stale), recovery after
// the server restarts empty, unreachable servers, prefixes and undecodable records.
// Records live 1.5 s here (refreshed every 500 ms), so every wait below is a few seconds.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { pino, type Logger } from "pino";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { UnavailableError } from "../../src/errors.js";
import { HttpRegistry } from "../../src/metadata/http.js";
import { nodeKey, type NodeEvent, type NodeRecord } from "../../src/metadata/registry.js";
import { freePort } from "../helpers/redis-server.js";

const TTL_MS = 1_500;
/** Slack on top of a TTL for timers, scheduling and a busy machine. */
const MARGIN_MS = 2_000;
const REPO = fileURLToPath(new URL("../..", import.meta.url));
const BIN = join(REPO, "bin/kvferry.js");

interface MetadataServerProcess {
  readonly proc: ChildProcess;
  readonly port: number;
  readonly url: string;
  readonly logs: Record<string, unknown>[];
  readonly exited: Promise<number | null>;
  /** SIGTERM; resolves to the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL; resolves once gone. */
  kill(): Promise<void>;
}

/** Runs `kvferry metadata-server ...args` and waits for its "serving" line. */
function spawnMetadataServer(args: string[]): Promise<MetadataServerProcess> {
  const proc = spawn(process.execPath, [BIN, "metadata-server", ...args], {
    env: { ...process.env, NO_PRETTY: "1" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs: Record<string, unknown>[] = [];
  let stderr = "";
  proc.stderr!.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => proc.once("exit", (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`metadata-server did not serve within 10 s: ${stderr}`));
    }, 10_000);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`metadata-server exited with ${code} before serving: ${stderr}`));
    });
    createInterface({ input: proc.stdout! }).on("line", (line) => {
      let rec: Record<string, unknown>;
      try {
        rec = JSON.parse(line);
      } catch {
        return;
      }
      logs.push(rec);
      if (rec.msg !== "kvferry metadata-server serving") return;
      clearTimeout(timer);
      const port = Number(String(rec.listen).split(":").pop());
      resolve({
        proc,
        port,
        url: String(rec.url),
        logs,
        exited,
        async stop() {
          if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGTERM");
          return exited;
        },
        async kill() {
          if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
          await exited;
        },
      });
    });
  });
}

/** Runs `kvferry metadata-server ...args` to its exit; for the flag errors. */
function runMetadataServer(args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, [BIN, "metadata-server", ...args], { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    proc.stderr!.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => proc.kill("SIGKILL"), 10_000);
    proc.once("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
}

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

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function collect(registry: HttpRegistry): NodeEvent[] {
  const events: NodeEvent[] = [];
  registry.watch((e) => events.push(e));
  return events;
}

const joined = (events: NodeEvent[], id: string, from = 0) =>
  events.slice(from).find((e) => e.type === "join" && e.node.nodeId === id);
const left = (events: NodeEvent[], id: string, from = 0) =>
  events.slice(from).find((e) => e.type === "leave" && e.nodeId === id);

/** Raw protocol calls. */
const keyUrl = (url: string, key: string) => `${url}?key=${encodeURIComponent(key)}`;
async function rawGet(url: string, key: string): Promise<string | undefined> {
  const res = await fetch(keyUrl(url, key), { signal: AbortSignal.timeout(2_000) });
  const text = await res.text();
  if (res.status === 404) return undefined;
  expect(res.status).toBe(200);
  return text;
}
async function rawPut(url: string, key: string, value: string): Promise<void> {
  const res = await fetch(keyUrl(url, key), { method: "PUT", body: value, signal: AbortSignal.timeout(2_000) });
  await res.text();
  expect(res.status).toBe(200);
}
const indexOf = async (url: string, prefix: string) => JSON.parse((await rawGet(url, `${prefix}nodes`)) ?? "[]") as string[];

let server: MetadataServerProcess;
const open: HttpRegistry[] = [];
let prefixCount = 0;
/** A fresh prefix per test, so tests do not see each other's records. */
let prefix = "";

function registry(options: { prefix?: string; log?: Logger; server?: string } = {}): HttpRegistry {
  const r = new HttpRegistry(options.server ?? server.url, { prefix: options.prefix ?? prefix, ttlMs: TTL_MS }, options.log ?? pino({ level: "silent" }));
  open.push(r);
  return r;
}

beforeAll(async () => {
  // bin/kvferry.js runs dist/: build what is stale (nothing, usually).
  try {
    execFileSync(process.execPath, [join(REPO, "scripts/setup.mjs"), "--quiet"], { cwd: REPO, stdio: "pipe" });
  } catch (err) {
    // Someone else's half-written source may not compile; a dist/ with the server will do.
    if (!existsSync(join(REPO, "dist/cli/metadata-server.js"))) throw err;
  }
  server = await spawnMetadataServer(["--listen", "127.0.0.1:0"]);
}, 300_000);

afterAll(async () => {
  await server?.kill();
});

beforeEach(() => {
  prefix = `it${++prefixCount}-${process.pid}/`;
});

afterEach(async () => {
  await Promise.all(open.splice(0).map((r) => r.close()));
});

describe("kvferry metadata-server", () => {
  it("logs the URL it serves once listening, on the port it picked", () => {
    expect(server.port).toBeGreaterThan(0);
    expect(server.url).toBe(`http://127.0.0.1:${server.port}/metadata`);
  });

  it("answers GET / PUT / DELETE with ?key=, 404 for an absent key", async () => {
    const key = "a key/with ?&=+ and é";
    const value = JSON.stringify({ text: "värde ✓", n: 1 });
    const get = () => fetch(keyUrl(server.url, key));
    expect((await get()).status).toBe(404);
    const put = await fetch(keyUrl(server.url, key), { method: "PUT", body: value });
    expect(put.status).toBe(200);
    const got = await get();
    expect(got.status).toBe(200);
    expect(await got.text()).toBe(value);
    // Overwritten in place.
    expect((await fetch(keyUrl(server.url, key), { method: "PUT", body: "second" })).status).toBe(200);
    expect(await (await get()).text()).toBe("second");
    // An empty value is a value.
    expect((await fetch(keyUrl(server.url, "empty"), { method: "PUT", body: "" })).status).toBe(200);
    const empty = await fetch(keyUrl(server.url, "empty"));
    expect([empty.status, await empty.text()]).toEqual([200, ""]);
    expect((await fetch(keyUrl(server.url, key), { method: "DELETE" })).status).toBe(200);
    expect((await fetch(keyUrl(server.url, key), { method: "DELETE" })).status).toBe(404);
    expect((await get()).status).toBe(404);
  });

  it("refuses a missing or empty key (400), other methods (405 with Allow) and other paths (404)", async () => {
    for (const url of [server.url, `${server.url}?key=`, `${server.url}?other=1`]) {
      const res = await fetch(url);
      expect(res.status).toBe(400);
      expect(await res.text()).toMatch(/key/);
    }
    const post = await fetch(keyUrl(server.url, "k"), { method: "POST", body: "x" });
    expect(post.status).toBe(405);
    expect(post.headers.get("allow")).toBe("GET, PUT, DELETE");
    await post.text();
    const elsewhere = await fetch(`http://127.0.0.1:${server.port}/other?key=k`);
    expect(elsewhere.status).toBe(404);
    expect(await elsewhere.text()).toMatch(/\/metadata/);
  });

  it("accepts a 1 MiB value and refuses a larger one with 413, declared or streamed", async () => {
    const MiB = 1 << 20;
    expect((await fetch(keyUrl(server.url, "max"), { method: "PUT", body: "x".repeat(MiB) })).status).toBe(200);
    expect((await rawGet(server.url, "max"))?.length).toBe(MiB);
    const declared = await fetch(keyUrl(server.url, "big"), { method: "PUT", body: "x".repeat(MiB + 1) });
    expect(declared.status).toBe(413);
    expect(await declared.text()).toMatch(/1048576 bytes/);
    // Without a content-length: refused once the limit is passed.
    const chunk = new Uint8Array(256 * 1024).fill(120);
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent >= 2 * MiB) return controller.close();
        sent += chunk.length;
        controller.enqueue(chunk);
      },
    });
    const streamed = await fetch(keyUrl(server.url, "big"), { method: "PUT", body, duplex: "half" } as RequestInit).then(
      (res) => res.status,
      () => 413, // the server may close the connection before the client has sent everything
    );
    expect(streamed).toBe(413);
    expect(await rawGet(server.url, "big")).toBeUndefined();
  });

  it("refuses an oversized value announced with Expect: 100-continue before the body is sent", async () => {
    const { request } = await import("node:http");
    const outcome = await new Promise<{ status: number; continued: boolean }>((resolve, reject) => {
      let continued = false;
      const req = request(keyUrl(server.url, "big"), {
        method: "PUT",
        headers: { expect: "100-continue", "content-length": String(2 << 20) },
        timeout: 5_000,
      });
      req.on("continue", () => {
        continued = true;
        req.end(Buffer.alloc(2 << 20));
      });
      req.on("response", (res) => {
        res.resume();
        resolve({ status: res.statusCode ?? 0, continued });
        req.destroy();
      });
      req.on("timeout", () => req.destroy(new Error("no answer")));
      req.on("error", reject);
      req.flushHeaders();
    });
    expect(outcome).toEqual({ status: 413, continued: false });
  });

  it("bounds the keys and bytes it holds (507 with a message), and frees them on DELETE", async () => {
    const { startMetadataServer } = await import("../../src/metadata/http-server.js");
    const small = await startMetadataServer({ host: "127.0.0.1", port: 0, maxKeys: 2, maxTotalBytes: 10 }, pino({ level: "silent" }));
    try {
      const put = (key: string, value: string) => fetch(keyUrl(small.url, key), { method: "PUT", body: value });
      expect((await put("a", "12345")).status).toBe(200);
      expect((await put("b", "12345")).status).toBe(200);
      const third = await put("c", "1");
      expect(third.status).toBe(507);
      expect(await third.text()).toMatch(/maximum of 2 keys/);
      expect((await put("a", "123456")).status).toBe(507); // 11 bytes in all
      expect((await put("a", "1234")).status).toBe(200); // replacing frees the old value
      expect((await fetch(keyUrl(small.url, "b"), { method: "DELETE" })).status).toBe(200);
      expect((await put("c", "123456")).status).toBe(200);
    } finally {
      await small.close();
    }
  });

  it("exits 2 on a bad flag, naming the flag, the value and what was expected", async () => {
    const listen = await runMetadataServer(["--listen", "nowhere"]);
    expect(listen.code).toBe(2);
    expect(listen.stderr).toMatch(/--listen.*"nowhere".*expected HOST:PORT/);
    const path = await runMetadataServer(["--path", "metadata"]);
    expect(path.code).toBe(2);
    expect(path.stderr).toMatch(/--path.*"metadata".*expected a URL path starting with "\/"/);
    const unknown = await runMetadataServer(["--port", "1"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/--port/);
  });

  it("serves another path when asked, and exits 0 on SIGTERM", async () => {
    const other = await spawnMetadataServer(["--listen", "127.0.0.1:0", "--path", "/kv/meta"]);
    try {
      expect(other.url).toBe(`http://127.0.0.1:${other.port}/kv/meta`);
      await rawPut(other.url, "k", "v");
      expect(await rawGet(other.url, "k")).toBe("v");
      expect((await fetch(`http://127.0.0.1:${other.port}/metadata?key=k`)).status).toBe(404);
    } finally {
      expect(await other.stop()).toBe(0);
    }
  });
});

describe("http node registry", () => {
  it("names the server and prefix in `where`", () => {
    expect(registry().where).toBe(`http at ${server.url} (prefix "${prefix}")`);
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
    // In the server: the records under nodeKey, and both ids in the index.
    expect(JSON.parse((await rawGet(server.url, nodeKey(prefix, "a")))!).nodeId).toBe("a");
    expect((await indexOf(server.url, prefix)).sort()).toEqual(["a", "b"]);
  });

  it("keeps its record fresh past the TTL by refreshing it", async () => {
    const a = registry();
    await a.register(node("a"));
    const first = JSON.parse((await rawGet(server.url, nodeKey(prefix, "a")))!).updatedAt as number;
    await sleep(TTL_MS * 2);
    expect((await registry().lookup("a"))?.nodeId).toBe("a");
    expect(JSON.parse((await rawGet(server.url, nodeKey(prefix, "a")))!).updatedAt).toBeGreaterThan(first);
  });

  it("a watcher sees a join, an update after update(), and a leave when the node closes", async () => {
    const watcher = registry();
    const events = collect(watcher);
    const a = registry();
    await a.register(node("a"));
    await waitFor("join of a", () => joined(events, "a"), TTL_MS + MARGIN_MS);

    a.update({ poolUsedBytes: 4096 });
    await waitFor("update of a", () => events.find((e) => e.type === "update" && e.node.poolUsedBytes === 4096), TTL_MS + MARGIN_MS);
    // Refreshes alone are heartbeats, not updates.
    await sleep(TTL_MS);
    expect(events.filter((e) => e.type === "update")).toHaveLength(1);

    await a.close();
    expect(await rawGet(server.url, nodeKey(prefix, "a"))).toBeUndefined();
    expect(await indexOf(server.url, prefix)).toEqual([]);
    await waitFor("leave of a", () => left(events, "a"), TTL_MS / 3 + MARGIN_MS);
    expect(await watcher.lookup("a")).toBeUndefined();
  });

  it("a node that stops refreshing (its process frozen) leaves once its record is stale, and joins again when it resumes", async () => {
    const events = collect(registry());
    const child = spawnRegistry(server.url, prefix, "frozen");
    try {
      await child.registered;
      await waitFor("join of frozen", () => joined(events, "frozen"), TTL_MS + MARGIN_MS);
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

  it("a node whose process is killed leaves once stale, and a registered node prunes it from the index", async () => {
    const a = registry();
    await a.register(node("a"));
    const events = collect(a);
    const child = spawnRegistry(server.url, prefix, "crashed");
    try {
      await child.registered;
      await waitFor("join of crashed", () => joined(events, "crashed"), TTL_MS + MARGIN_MS);
      child.proc.kill("SIGKILL");
      await waitFor("leave of crashed", () => left(events, "crashed"), TTL_MS + MARGIN_MS);
      await waitFor("crashed pruned from the index", async () => !(await indexOf(server.url, prefix)).includes("crashed"), MARGIN_MS);
      expect(await rawGet(server.url, nodeKey(prefix, "crashed"))).toBeUndefined();
      expect(await indexOf(server.url, prefix)).toEqual(["a"]);
    } finally {
      child.proc.kill("SIGKILL");
    }
  });

  it("a node lost from the index by a concurrent write adds itself back at its next refresh", async () => {
    const a = registry();
    const b = registry();
    await a.register(node("a"));
    await b.register(node("b"));
    await rawPut(server.url, `${prefix}nodes`, JSON.stringify(["b"])); // a's entry overwritten
    await waitFor("a back in the index", async () => (await indexOf(server.url, prefix)).includes("a"), TTL_MS / 3 + MARGIN_MS);
    expect((await indexOf(server.url, prefix)).sort()).toEqual(["a", "b"]);
  });

  it("re-writes its record after the metadata server restarts empty, and another node's watchers see it again", async () => {
    const own = await spawnMetadataServer(["--listen", `127.0.0.1:${await freePort()}`]);
    let restarted: MetadataServerProcess | undefined;
    try {
      const { log, lines } = capturingLogger();
      const a = registry({ server: own.url, log });
      const b = registry({ server: own.url });
      await a.register(node("a"));
      await b.register(node("b"));
      const events = collect(b);
      await waitFor("join of a", () => joined(events, "a"), TTL_MS + MARGIN_MS);

      await own.kill();
      await sleep((2 * TTL_MS) / 3); // down long enough for a refresh to fail
      restarted = await spawnMetadataServer(["--listen", `127.0.0.1:${own.port}`]);
      const restartedAt = Date.now();
      expect(restarted.url).toBe(own.url);
      await waitFor("a's record back", () => rawGet(own.url, nodeKey(prefix, "a")), TTL_MS + MARGIN_MS);
      await waitFor("both in the index", async () => (await indexOf(own.url, prefix)).length === 2, TTL_MS + MARGIN_MS);
      expect(Date.now() - restartedAt).toBeLessThan(TTL_MS + MARGIN_MS);

      // Two poll periods later b's watchers know a: either they never saw it go, or they
      // saw it leave (a poll of the empty server) and join again.
      await sleep((2 * TTL_MS) / 3 + 100);
      const aboutA = events.filter((e) => (e.type === "leave" ? e.nodeId : e.node.nodeId) === "a");
      expect(aboutA.at(-1)?.type).not.toBe("leave");
      expect((await b.list()).map((n) => n.nodeId)).toEqual(["a", "b"]);

      await waitFor("the all-clear", () => lines.find((l) => String(l.msg).startsWith("node registry reachable again")), MARGIN_MS);
      expect(lines.filter((l) => l.level === 40 && String(l.msg).startsWith("node registry unreachable"))).toHaveLength(1);
    } finally {
      await own.kill();
      await restarted?.kill();
    }
  });

  it("register() rejects with UnavailableError naming the address within the bound when the server cannot be reached", async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}/metadata`;
    const r = registry({ server: url });
    const started = Date.now();
    const err = await r.register(node("a")).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toContain(`http at ${url}`);
    expect((err as Error).message).toMatch(/ECONNREFUSED/);
    expect(Date.now() - started).toBeLessThan(Math.min(TTL_MS, 5_000) + 500);
    // Reads by a registry with no view of its own (as `kvferry status` makes) fail too.
    await expect(r.list()).rejects.toBeInstanceOf(UnavailableError);
    await expect(r.lookup("a")).rejects.toThrow(`cannot read from http at ${url}`);
  });

  it("register() gives up within the bound on a server that accepts but never answers", async () => {
    const { createServer } = await import("node:net");
    const sockets: import("node:net").Socket[] = [];
    const silent = createServer((s) => sockets.push(s));
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const port = (silent.address() as import("node:net").AddressInfo).port;
    try {
      const r = registry({ server: `http://127.0.0.1:${port}/metadata` });
      const started = Date.now();
      await expect(r.register(node("a"))).rejects.toBeInstanceOf(UnavailableError);
      const took = Date.now() - started;
      expect(took).toBeGreaterThanOrEqual(TTL_MS - 100);
      expect(took).toBeLessThan(TTL_MS + 1_000);
    } finally {
      for (const s of sockets) s.destroy();
      silent.close();
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
    await sleep((2 * TTL_MS) / 3 + 100); // two polls for a wrong event to show up
    expect((await red.list()).map((n) => n.nodeId)).toEqual(["r1"]);
    expect((await blue.list()).map((n) => n.nodeId)).toEqual(["b1"]);
    expect(await red.lookup("b1")).toBeUndefined();
    expect(redEvents.every((e) => e.type === "join" && e.node.nodeId === "r1")).toBe(true);
    expect(blueEvents.every((e) => e.type === "join" && e.node.nodeId === "b1")).toBe(true);
  });

  it("skips a record that does not decode, warning once with its key, and rewrites an index that does not", async () => {
    const { log, lines } = capturingLogger();
    const a = registry({ log });
    await a.register(node("a"));
    await rawPut(server.url, nodeKey(prefix, "garbage"), "{not json");
    await rawPut(server.url, nodeKey(prefix, "liar"), JSON.stringify({ ...node("someone-else"), updatedAt: Date.now() + 60_000 }));
    await rawPut(server.url, `${prefix}nodes`, JSON.stringify(["a", "garbage", "liar"]));
    const events = collect(a);
    await sleep(TTL_MS); // a few polls
    expect((await a.list()).map((n) => n.nodeId)).toEqual(["a"]);
    expect(await a.lookup("garbage")).toBeUndefined();
    expect(events.map((e) => e.type === "join" && e.node.nodeId)).toEqual(["a"]);
    const warned = (key: string) => lines.filter((l) => l.level === 40 && l.key === key);
    expect(warned(nodeKey(prefix, "garbage"))).toHaveLength(1);
    expect(warned(nodeKey(prefix, "liar"))).toHaveLength(1);

    await rawPut(server.url, `${prefix}nodes`, "not an index");
    await waitFor("the index rewritten", async () => (await indexOf(server.url, prefix).catch(() => [])).includes("a"), TTL_MS / 3 + MARGIN_MS);
    expect(warned(`${prefix}nodes`)).toHaveLength(1);
  });

  it("close() is idempotent and bounded when the server is gone", async () => {
    const own = await spawnMetadataServer(["--listen", "127.0.0.1:0"]);
    const a = registry({ server: own.url });
    await a.register(node("a"));
    await own.kill();
    const started = Date.now();
    await Promise.all([a.close(), a.close()]);
    await a.close();
    expect(Date.now() - started).toBeLessThan(3_000);
    await expect(a.register(node("a"))).rejects.toThrow(/closed/);
  });
});

/**
 * A registry in a process of its own (so that it can be frozen or killed): registers
 * `nodeId` under `prefix` and prints "registered".
 */
function spawnRegistry(url: string, prefix: string, nodeId: string): { proc: ChildProcess; registered: Promise<void> } {
  const code = `
    import { pino } from "pino";
    import { HttpRegistry } from "./src/metadata/http.ts";
    const r = new HttpRegistry(${JSON.stringify(url)}, { prefix: ${JSON.stringify(prefix)}, ttlMs: ${TTL_MS} }, pino({ level: "silent" }));
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
