// What every node registry that refreshes its record (redis, http) must do, as one suite
// run against each backend (zeromq.js loops its socket tests over its transports the same
// way): registration, lookup and list, watch events (join, update, leave by close, by a
// frozen or killed process), recovery after the server restarts empty, unreachable and
// silent servers, answers from the last known state, prefixes, undecodable records, and a
// bounded close(). A backend file calls registryContract() with a RegistryBackend (how to
// start, kill and restart its server, and how to open a registry on it) and keeps the
// tests of its own layout (redis's TTLs, http's index) next to it, with these helpers.
// Records live 1.5 s here (refreshed every 500 ms), so every wait below is a few seconds.
import { spawn, type ChildProcess } from "node:child_process";
import { createServer, type AddressInfo, type Socket } from "node:net";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { pino, type Logger } from "pino";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { UnavailableError } from "../../src/errors.js";
import { nodeKey, type NodeEvent, type NodeRecord, type NodeRegistry, type RegistryOptions } from "../../src/metadata/registry.js";
import { freePort } from "./ports.js";

export const TTL_MS = 1_500;
/** Slack on top of a TTL for timers, scheduling and a busy machine. */
export const MARGIN_MS = 2_000;
/**
 * For the tests of a registry's bound, min(ttl, 5 s) (register() as a whole, a read, a close):
 * a TTL that makes the bound 5 s, so that the bound plus MARGIN_MS of slack still tells
 * "within the bound" from "waited twice as long" on a busy machine.
 */
const BOUNDED_TTL_MS = 15_000;
const BOUND_MS = 5_000;
/** close() gives up deleting the record after this (whatever the TTL). */
const CLOSE_BOUND_MS = 2_000;
const REPO = fileURLToPath(new URL("../..", import.meta.url));

export interface ServerAddress {
  /** The metadata_server value. */
  readonly address: string;
  /** How a registry names the server in `where` and in its errors: "redis at 127.0.0.1:PORT". */
  readonly named: string;
}

/** A server of the backend, as a real process on a loopback port. */
export interface ContractServer extends ServerAddress {
  /** The value under `key` as the server has it, undefined when absent. */
  get(key: string): Promise<string | undefined>;
  /** SIGKILL, as in a crash; resolves once gone. */
  kill(): Promise<void>;
  /** Starts again on the same address, empty (after stop() or kill()). */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export interface RegistryBackend {
  /** "redis", "http". */
  readonly name: string;
  /** The registry's module (from the repository root) and class, for a registry in a process of its own. */
  readonly module: { readonly path: string; readonly className: string };
  /** How long a watcher may take to hear of a node that registers or closes: a message, or the next read. */
  readonly noticeMs: number;
  /** A server of the test's own, on a port it can be restarted on. */
  start(): Promise<ContractServer>;
  /** The server on a loopback `port` where no server of this backend runs. */
  at(port: number): ServerAddress;
  open(address: string, options: RegistryOptions, log: Logger): NodeRegistry;
  /** Stores `text` as `nodeId`'s record where readers look for it (and in the index, for a backend with one). */
  plant(server: ContractServer, prefix: string, nodeId: string, text: string): Promise<void>;
  /** The node ids in the backend's index of nodes, for a backend that keeps one. */
  index?(server: ContractServer, prefix: string): Promise<string[]>;
}

// --- helpers, for the backend files too ----------------------------------------------

export function node(nodeId: string, extra: Partial<NodeRecord> = {}): NodeRecord {
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
    engines: [],
    ...extra,
  };
}

/** A pino logger whose lines land in `lines` (parsed), for asserting on warnings. */
export function capturingLogger(): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: "debug" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  return { log, lines };
}

/** The warnings logged about `key`. */
export const warnedAbout = (lines: Record<string, unknown>[], key: string) => lines.filter((l) => l.level === 40 && l.key === key);

export async function waitFor<T>(what: string, probe: () => T | undefined | Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export function collect(registry: NodeRegistry): NodeEvent[] {
  const events: NodeEvent[] = [];
  registry.watch((e) => events.push(e));
  return events;
}

export const joined = (events: NodeEvent[], id: string, from = 0) =>
  events.slice(from).find((e) => e.type === "join" && e.node.nodeId === id);
export const left = (events: NodeEvent[], id: string, from = 0) =>
  events.slice(from).find((e) => e.type === "leave" && e.nodeId === id);

const ids = (nodes: NodeRecord[]) => nodes.map((n) => n.nodeId);
const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

export interface Registries<R extends NodeRegistry> {
  /** A fresh prefix per test, so that tests do not see each other's records. */
  readonly prefix: string;
  /** A registry closed after the test; on `server` (the default one), the test's prefix and TTL_MS unless told. */
  open(options?: { prefix?: string; log?: Logger; server?: string; ttlMs?: number }): R;
}

let prefixCount = 0;

/** Registries for the tests of the enclosing describe: a prefix per test, all closed after it. */
export function useRegistries<R extends NodeRegistry>(
  open: (address: string, options: RegistryOptions, log: Logger) => R,
  server: () => string,
): Registries<R> {
  const opened: R[] = [];
  let prefix = "";
  beforeEach(() => {
    prefix = `it${++prefixCount}-${process.pid}/`;
  });
  afterEach(async () => {
    await Promise.all(opened.splice(0).map((r) => r.close()));
  });
  return {
    get prefix() {
      return prefix;
    },
    open(options = {}) {
      const r = open(options.server ?? server(), { prefix: options.prefix ?? prefix, ttlMs: options.ttlMs ?? TTL_MS }, options.log ?? pino({ level: "silent" }));
      opened.push(r);
      return r;
    },
  };
}

/**
 * A registry in a process of its own (so that it can be frozen or killed): registers
 * `nodeId` under `prefix` and prints "registered".
 */
export function spawnRegistry(
  module: RegistryBackend["module"],
  server: string,
  prefix: string,
  nodeId: string,
): { proc: ChildProcess; registered: Promise<void> } {
  const code = `
    import { pino } from "pino";
    import { ${module.className} } from "./${module.path}";
    const r = new ${module.className}(${JSON.stringify(server)}, { prefix: ${JSON.stringify(prefix)}, ttlMs: ${TTL_MS} }, pino({ level: "silent" }));
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
    // A bound on a hang: node compiling the registry's modules with tsx takes 10 s and more on a busy machine.
    const timer = setTimeout(() => reject(new Error(`child registry did not register within 90 s: ${stderr}`)), 90_000);
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

// --- the contract ----------------------------------------------------------------------

export function registryContract(backend: RegistryBackend): void {
  describe(`${backend.name} node registry: what every refreshing backend does`, () => {
    let server: ContractServer;
    const registries = useRegistries((address, options, log) => backend.open(address, options, log), () => server.address);
    const registry = registries.open;
    const notice = backend.noticeMs;
    /** The record under `nodeId`'s key on `on`, undefined when absent. */
    const stored = (nodeId: string, on = server) => on.get(nodeKey(registries.prefix, nodeId));

    beforeAll(async () => {
      server = await backend.start();
    });

    afterAll(async () => {
      await server?.stop();
    });

    it("names the server and prefix in `where`", () => {
      expect(registry().where).toBe(`${server.named} (prefix "${registries.prefix}")`);
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
      expect(ids(await a.list())).toEqual(["a", "b"]);
      expect(ids(await b.list())).toEqual(["a", "b"]);
      // In the server: the records under nodeKey (and both ids in the index, if any).
      expect(JSON.parse((await stored("a"))!).nodeId).toBe("a");
      if (backend.index) expect((await backend.index(server, registries.prefix)).sort()).toEqual(["a", "b"]);
    });

    it("keeps a record alive past its TTL by refreshing it", async () => {
      const a = registry();
      await a.register(node("a"));
      const first = JSON.parse((await stored("a"))!).updatedAt as number;
      await sleep(TTL_MS * 2);
      expect((await registry().lookup("a"))?.nodeId).toBe("a");
      const later = await stored("a");
      expect(later).toBeDefined();
      expect(JSON.parse(later!).updatedAt).toBeGreaterThan(first);
    });

    it("a watcher sees a join, an update after update(), no update for refreshes, and a leave when the node closes", async () => {
      const watcher = registry();
      const events = collect(watcher);
      const a = registry();
      await a.register(node("a"));
      await waitFor("join of a", () => joined(events, "a"), notice);

      a.update({ poolUsedBytes: 4096 });
      const update = await waitFor(
        "update of a",
        () => events.find((e) => e.type === "update" && e.node.poolUsedBytes === 4096),
        TTL_MS + MARGIN_MS,
      );
      expect(update.type === "update" && update.node.nodeId).toBe("a");
      // Refreshes alone are heartbeats, not updates.
      await sleep(TTL_MS);
      expect(events.filter((e) => e.type === "update")).toHaveLength(1);

      const closedAt = Date.now();
      await a.close();
      // Deleted, not left to lapse.
      expect(await stored("a")).toBeUndefined();
      if (backend.index) expect(await backend.index(server, registries.prefix)).toEqual([]);
      await waitFor("leave of a", () => left(events, "a"), notice);
      expect(Date.now() - closedAt).toBeLessThan(TTL_MS);
      expect(await watcher.lookup("a")).toBeUndefined();
    });

    it("a watcher started after the nodes registered gets a join for each of them", async () => {
      const a = registry();
      const b = registry();
      await a.register(node("a"));
      await b.register(node("b"));
      const events = collect(registry());
      await waitFor("joins of a and b", () => joined(events, "a") && joined(events, "b"), notice);
    });

    it("a node that stops refreshing (its process frozen) leaves after the TTL, and joins again when it resumes", async () => {
      const events = collect(registry());
      const child = spawnRegistry(backend.module, server.address, registries.prefix, "frozen");
      try {
        await child.registered;
        await waitFor("join of frozen", () => joined(events, "frozen"), notice);
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

    it("a node whose process is killed leaves after the TTL, and its record is gone from the server", async () => {
      const a = registry();
      await a.register(node("a"));
      const events = collect(a);
      const child = spawnRegistry(backend.module, server.address, registries.prefix, "crashed");
      try {
        await child.registered;
        await waitFor("join of crashed", () => joined(events, "crashed"), notice);
        child.proc.kill("SIGKILL");
        await waitFor("leave of crashed", () => left(events, "crashed"), TTL_MS + MARGIN_MS);
        await waitFor("crashed's record gone", async () => (await stored("crashed")) === undefined, MARGIN_MS);
        if (backend.index) {
          const index = backend.index;
          await waitFor("crashed pruned from the index", async () => !(await index(server, registries.prefix)).includes("crashed"), MARGIN_MS);
          expect(await index(server, registries.prefix)).toEqual(["a"]);
        }
      } finally {
        child.proc.kill("SIGKILL");
      }
    });

    it("re-writes its record after the server restarts empty, and another node's watchers see it again", async () => {
      const own = await backend.start();
      try {
        const { log, lines } = capturingLogger();
        const a = registry({ server: own.address, log });
        const b = registry({ server: own.address });
        await a.register(node("a"));
        await b.register(node("b"));
        const events = collect(b);
        await waitFor("join of a", () => joined(events, "a"), notice);

        await own.kill();
        await sleep((2 * TTL_MS) / 3); // down long enough for a refresh to fail
        await own.restart();
        const restartedAt = Date.now();
        const mark = events.length;
        // Empty after the restart until the nodes re-write their records.
        await waitFor("a's record back", () => stored("a", own), TTL_MS + MARGIN_MS);
        await waitFor("b's record back", () => stored("b", own), TTL_MS + MARGIN_MS);
        if (backend.index) {
          const index = backend.index;
          await waitFor("both in the index", async () => (await index(own, registries.prefix)).length === 2, TTL_MS + MARGIN_MS);
        }
        expect(Date.now() - restartedAt).toBeLessThan(TTL_MS + MARGIN_MS);
        // Two periods after both records are back, b's watchers must know a: either they
        // never saw it go, or they saw it leave (a read of the empty server) and join again.
        await sleep((2 * TTL_MS) / 3 + 100);
        const aboutA = events.filter((e) => (e.type === "leave" ? e.nodeId : e.node.nodeId) === "a");
        expect(aboutA.at(-1)?.type).not.toBe("leave");
        expect(events.slice(mark).filter((e) => e.type === "leave").length).toBeLessThanOrEqual(2);
        expect((await b.lookup("a"))?.nodeId).toBe("a");
        expect(ids(await b.list())).toEqual(["a", "b"]);

        // One warning for the outage, one info when it is over.
        await waitFor("the all-clear", () => lines.find((l) => String(l.msg).startsWith("node registry reachable again")), MARGIN_MS);
        expect(lines.filter((l) => l.level === 40 && String(l.msg).startsWith("node registry unreachable"))).toHaveLength(1);
      } finally {
        await own.stop();
      }
    });

    it("register() rejects with UnavailableError naming the address within the bound when the server cannot be reached", async () => {
      const { address, named } = backend.at(await freePort());
      const r = registry({ server: address, ttlMs: BOUNDED_TTL_MS });
      const started = Date.now();
      const err = await r.register(node("a")).then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(UnavailableError);
      expect((err as Error).message).toContain(named);
      expect((err as Error).message).toMatch(/ECONNREFUSED/);
      expect(Date.now() - started).toBeLessThan(BOUND_MS + MARGIN_MS);
      // Reads by a registry with no view of its own (as `kvferry status` makes) fail too.
      const cannotRead = new RegExp(`^cannot read from ${escape(named)}`);
      await expect(r.list()).rejects.toBeInstanceOf(UnavailableError);
      await expect(r.list()).rejects.toThrow(cannotRead);
      await expect(r.lookup("a")).rejects.toBeInstanceOf(UnavailableError);
      await expect(r.lookup("a")).rejects.toThrow(cannotRead);
    });

    it("register() gives up within the bound on a server that accepts but never answers", async () => {
      const sockets: Socket[] = [];
      const silent = createServer((s) => sockets.push(s));
      await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
      const port = (silent.address() as AddressInfo).port;
      try {
        const r = registry({ server: backend.at(port).address, ttlMs: BOUNDED_TTL_MS });
        const started = Date.now();
        await expect(r.register(node("a"))).rejects.toBeInstanceOf(UnavailableError);
        const took = Date.now() - started;
        expect(took).toBeGreaterThanOrEqual(BOUND_MS - 100);
        expect(took).toBeLessThan(BOUND_MS + MARGIN_MS);
      } finally {
        for (const s of sockets) s.destroy();
        silent.close();
      }
    });

    it("a failed register() can be retried once the server is there", async () => {
      const late = await backend.start();
      await late.stop();
      const r = registry({ server: late.address });
      await expect(r.register(node("a"))).rejects.toBeInstanceOf(UnavailableError);
      await late.restart();
      try {
        await r.register(node("a"));
        expect((await r.lookup("a"))?.nodeId).toBe("a");
        await r.close();
        expect(await stored("a", late)).toBeUndefined();
      } finally {
        await late.stop();
      }
    });

    it("prefixes keep clusters apart", async () => {
      const red = registry({ prefix: `${registries.prefix}red/` });
      const blue = registry({ prefix: `${registries.prefix}blue/` });
      const redEvents = collect(red);
      const blueEvents = collect(blue);
      await red.register(node("r1"));
      await blue.register(node("b1"));
      await waitFor("red sees r1", () => joined(redEvents, "r1"), MARGIN_MS);
      await waitFor("blue sees b1", () => joined(blueEvents, "b1"), MARGIN_MS);
      await sleep((2 * TTL_MS) / 3 + 100); // two periods for a wrong event to show up
      expect(ids(await red.list())).toEqual(["r1"]);
      expect(ids(await blue.list())).toEqual(["b1"]);
      expect(await red.lookup("b1")).toBeUndefined();
      expect(redEvents.every((e) => e.type === "join" && e.node.nodeId === "r1")).toBe(true);
      expect(blueEvents.every((e) => e.type === "join" && e.node.nodeId === "b1")).toBe(true);
    });

    it("skips a record that does not decode, warning once with its key", async () => {
      const { log, lines } = capturingLogger();
      const a = registry({ log });
      await a.register(node("a"));
      const { prefix } = registries;
      await backend.plant(server, prefix, "garbage", "{not json");
      await backend.plant(server, prefix, "noaddr", JSON.stringify({ nodeId: "noaddr" }));
      await backend.plant(server, prefix, "liar", JSON.stringify({ ...node("someone-else"), updatedAt: Date.now() + 60_000 }));
      const events = collect(a);
      await sleep(TTL_MS); // a few periods
      expect(ids(await a.list())).toEqual(["a"]);
      expect(await a.list()).toHaveLength(1);
      expect(await a.lookup("garbage")).toBeUndefined();
      expect(events.map((e) => e.type === "join" && e.node.nodeId)).toEqual(["a"]);
      for (const id of ["garbage", "noaddr", "liar"]) expect(warnedAbout(lines, nodeKey(prefix, id))).toHaveLength(1);
    });

    it("while the server is down, a registered node answers lookups and lists from the last known state", async () => {
      const own = await backend.start();
      try {
        const a = registry({ server: own.address, ttlMs: BOUNDED_TTL_MS });
        const b = registry({ server: own.address, ttlMs: BOUNDED_TTL_MS });
        await a.register(node("a"));
        await b.register(node("b"));
        expect(ids(await a.list())).toEqual(["a", "b"]);
        await own.kill();
        const started = Date.now();
        expect(ids(await a.list())).toEqual(["a", "b"]);
        expect((await a.lookup("b"))?.nodeId).toBe("b");
        expect(Date.now() - started).toBeLessThan(BOUND_MS + MARGIN_MS);
      } finally {
        await own.stop();
      }
    });

    it("close() is idempotent and bounded when the server is gone, and leaves the record to lapse", async () => {
      const own = await backend.start();
      try {
        const a = registry({ server: own.address });
        await a.register(node("a"));
        await own.kill();
        const started = Date.now();
        await Promise.all([a.close(), a.close()]);
        await a.close();
        expect(Date.now() - started).toBeLessThan(CLOSE_BOUND_MS + MARGIN_MS);
        await expect(a.register(node("a"))).rejects.toThrow(/closed/);
      } finally {
        await own.stop();
      }
    });
  });
}
