// The etcd node registry against real etcd processes: registration, lookups, the watch,
// leases that lapse or are revoked, etcd crashing and coming back (with or without its
// data), endpoint lists with a dead or a silent member, records that are not rewritten
// while unchanged, what an unreachable etcd does to start-up (and what its errors say),
// and what close() logs. Each test keeps to a key prefix of its own; tests that crash
// etcd start their own.
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { Etcd3 } from "etcd3";
import { pino, type Logger } from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { UnavailableError } from "../../src/errors.js";
import { EtcdRegistry } from "../../src/metadata/etcd.js";
import type { NodeRecord } from "../../src/metadata/node.js";
import type { NodeEvent } from "../../src/metadata/registry.js";
import { freePort } from "../helpers/ports.js";
import { startEtcd, startSilentServer, type EtcdServer, type SilentServer } from "../helpers/etcd-server.js";

let etcd: EtcdServer;
const servers: EtcdServer[] = [];
/**
 * For the tests of a bound: a TTL that makes calls' bound, min(ttl, 5 s), 5 s, and the slack on
 * top of a bound (close() gives up after 2 s, whatever the TTL). The slack is seconds, for a busy
 * machine; the bound is long enough that "within it" still differs from "waited twice as long".
 */
const BOUNDED_TTL_MS = 15_000;
const BOUND_MS = 5_000;
const CLOSE_BOUND_MS = 2_000;
const SLACK_MS = 2_000;
const registries: EtcdRegistry[] = [];
let prefixes = 0;

beforeAll(async () => {
  etcd = await startEtcd();
  servers.push(etcd);
});

afterEach(async () => {
  await Promise.all(registries.splice(0).map((r) => r.close()));
});

afterAll(async () => {
  await Promise.all(servers.map((s) => s.stop()));
});

/** A key prefix no other test uses. */
function newPrefix(): string {
  return `t${process.pid}-${++prefixes}/kvferry/v1/`;
}

/** A registry closed after the test. */
function open(server: string, prefix: string, ttlMs = 3000, log: Logger = pino({ level: "silent" })): EtcdRegistry {
  const registry = new EtcdRegistry(server, { prefix, ttlMs }, log);
  registries.push(registry);
  return registry;
}

function node(nodeId: string, extra: Partial<NodeRecord> = {}): NodeRecord {
  return {
    nodeId,
    hostname: `host-${nodeId}`,
    clientAddress: `127.0.0.1:${1000 + nodeId.length}`,
    peerAddress: `10.0.0.1:${2000 + nodeId.length}`,
    dataAddress: `10.0.0.1:${3000 + nodeId.length}`,
    transports: [{ name: "tcp", params: { connectionsPerPeer: 4 } }],
    poolBytes: 1 << 30,
    poolUsedBytes: 0,
    version: "0.1.0-test",
    startedAt: Date.now(),
    updatedAt: 0,
    engines: [],
    ...extra,
  };
}

/** A pino logger whose lines are kept as objects. */
function capture(): { log: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const log = pino({ level: "debug" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  return { log, lines };
}

/** Everything a watcher is told, with the time it arrived. */
function record(registry: EtcdRegistry): { events: Array<{ at: number; event: NodeEvent }>; stop: () => void } {
  const events: Array<{ at: number; event: NodeEvent }> = [];
  const stop = registry.watch((event) => events.push({ at: Date.now(), event }));
  return { events, stop };
}

const idOf = (e: NodeEvent) => (e.type === "leave" ? e.nodeId : e.node.nodeId);
const joined = (events: Array<{ event: NodeEvent }>, id: string) => events.find((e) => e.event.type === "join" && idOf(e.event) === id);
const left = (events: Array<{ event: NodeEvent }>, id: string) => events.find((e) => e.event.type === "leave" && idOf(e.event) === id);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` until it returns something other than undefined/false; fails after `timeoutMs`. */
async function until<T>(what: string, timeoutMs: number, probe: () => T | undefined | false | Promise<T | undefined | false>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await sleep(20);
  }
}

async function ids(registry: EtcdRegistry): Promise<string[]> {
  return (await registry.list()).map((n) => n.nodeId);
}

/** The record as etcd holds it (and the revision of its last write), read with a client of the test's own. */
async function stored(server: EtcdServer, key: string): Promise<{ value: string; lease: string; modRevision: bigint } | undefined> {
  const client = new Etcd3({ hosts: `http://${server.endpoint}` });
  try {
    const kv = (await client.get(key).exec()).kvs[0];
    return kv === undefined ? undefined : { value: kv.value.toString(), lease: kv.lease, modRevision: BigInt(kv.mod_revision) };
  } finally {
    client.close();
  }
}

describe("etcd registry", () => {
  it("lets two registries on one prefix look up and list each other", async () => {
    const prefix = newPrefix();
    const a = open(etcd.endpoint, prefix);
    const b = open(etcd.endpoint, prefix);
    const nodeA = node("node-a", { poolBytes: 4096, poolUsedBytes: 1024 });
    const nodeB = node("node-b", { transports: [{ name: "tcp", params: {} }, { name: "rdma", params: { port: 1 } }] });
    await a.register(nodeA);
    await b.register(nodeB);

    // B read A when it registered; A hears of B through its watch.
    expect(await b.lookup("node-a")).toMatchObject({ ...nodeA, updatedAt: expect.any(Number) });
    const seenByA = await until("A learns B", 3000, () => a.lookup("node-b"));
    expect(seenByA).toMatchObject({ ...nodeB, updatedAt: expect.any(Number) });
    expect(seenByA.updatedAt).toBeGreaterThanOrEqual(nodeB.startedAt);
    expect(await ids(a)).toEqual(["node-a", "node-b"]);
    expect(await ids(b)).toEqual(["node-a", "node-b"]);
    expect(await a.lookup("node-c")).toBeUndefined();
    expect(a.backend).toBe("etcd");
    expect(a.where).toBe(`etcd at ${etcd.endpoint} (prefix "${prefix}")`);
  });

  it("tells a watcher of a join, an update after update() and a refresh, and a prompt leave on close()", async () => {
    const prefix = newPrefix();
    const a = open(etcd.endpoint, prefix);
    await a.register(node("node-a"));
    const { events, stop } = record(a);
    expect(events.map((e) => e.event)).toEqual([{ type: "join", node: expect.objectContaining({ nodeId: "node-a" }) }]);

    // TTL 6 s: a refresh every 2 s, and a lapse (were close() not to revoke) no sooner than 4 s.
    const b = open(etcd.endpoint, prefix, 6000);
    await b.register(node("node-b"));
    await until("join of node-b", 3000, () => events.find((e) => e.event.type === "join" && idOf(e.event) === "node-b"));

    const updatedAt = Date.now();
    b.update({ poolUsedBytes: 12345 });
    const update = await until("update of node-b", 2000 + 1500, () =>
      events.find((e) => e.event.type === "update" && e.event.node.nodeId === "node-b" && e.event.node.poolUsedBytes === 12345),
    );
    expect(update.at - updatedAt).toBeLessThan(2000 + 1500);
    expect(update.event.type === "update" && update.event.node.poolBytes).toBe(1 << 30);

    await b.close();
    const closedAt = Date.now();
    const leave = await until("leave of node-b", 4000, () => events.find((e) => e.event.type === "leave" && idOf(e.event) === "node-b"));
    // Revoked, not lapsed: a lapse comes no sooner than 4 s after close() (the last refresh was at most 2 s before).
    expect(leave.at - closedAt).toBeLessThan(4000);
    expect(await a.lookup("node-b")).toBeUndefined();
    await b.close(); // idempotent

    // Unsubscribed: no more events.
    stop();
    const count = events.length;
    const c = open(etcd.endpoint, prefix);
    await c.register(node("node-c"));
    await until("A learns node-c", 3000, () => a.lookup("node-c"));
    expect(events.length).toBe(count);
  });

  it("does not rewrite a record nothing changed in: its mod_revision stays put for three TTLs while the lease keeps it", async () => {
    const prefix = newPrefix();
    const key = `${prefix}nodes/node-a`;
    const a = open(etcd.endpoint, prefix, 2000);
    await a.register(node("node-a"));
    const first = await stored(etcd, key);
    expect(first).toBeDefined();
    await sleep(3 * 2000);
    const later = await stored(etcd, key);
    expect(later?.lease).toBe(first!.lease);
    expect(later!.modRevision - first!.modRevision).toBeLessThanOrEqual(1n);
    // A change is written with the next refresh (ttl/3), as before.
    a.update({ poolUsedBytes: 777 });
    await until("the change is in etcd", 2000 / 3 + 1000, async () => JSON.parse((await stored(etcd, key))?.value ?? "{}").poolUsedBytes === 777);
  }, 20_000);

  it("drops a node whose process died without deregistering once its lease lapses", async () => {
    const prefix = newPrefix();
    const a = open(etcd.endpoint, prefix);
    await a.register(node("node-a"));
    const { events } = record(a);

    // Another process registers with a 2 s TTL and is SIGKILLed: no revoke, no keepalive.
    const module = new URL("../../src/metadata/etcd.ts", import.meta.url).href;
    const script = `
      import { pino } from "pino";
      import { EtcdRegistry } from ${JSON.stringify(module)};
      const registry = new EtcdRegistry(process.env.SERVER, { prefix: process.env.PREFIX, ttlMs: 2000 }, pino({ level: "silent" }));
      await registry.register(JSON.parse(process.env.NODE_RECORD));
      process.stdout.write("registered\\n");
      setInterval(() => {}, 60000);
    `;
    const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      cwd: fileURLToPath(new URL("../..", import.meta.url)),
      env: { ...process.env, SERVER: etcd.endpoint, PREFIX: prefix, NODE_RECORD: JSON.stringify(node("node-doomed")) },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const exited = new Promise((r) => child.once("exit", r));
    try {
      let out = "";
      child.stdout.on("data", (d) => (out += d));
      let err = "";
      child.stderr.on("data", (d) => (err += d));
      await until("the child registers", 10_000, () => out.includes("registered") || (child.exitCode !== null && Promise.reject(new Error(err))));
      await until("join of node-doomed", 3000, () => events.find((e) => e.event.type === "join" && idOf(e.event) === "node-doomed"));
    } finally {
      child.kill("SIGKILL");
      await exited;
    }
    const killedAt = Date.now();
    const leave = await until("leave of node-doomed", 2000 + 2000, () =>
      events.find((e) => e.event.type === "leave" && idOf(e.event) === "node-doomed"),
    );
    // Not before the lease could lapse: the last keepalive was at most ttl/3 before the kill.
    expect(leave.at - killedAt).toBeGreaterThan(1000);
    expect(await ids(a)).toEqual(["node-a"]);
  }, 30_000);

  it("registers again by itself when its lease is revoked behind its back", async () => {
    const prefix = newPrefix();
    const watcher = open(etcd.endpoint, prefix);
    await watcher.register(node("node-w"));
    const { events } = record(watcher);
    const { log, lines } = capture();
    const a = open(etcd.endpoint, prefix, 2000, log);
    await a.register(node("node-a"));
    await until("join of node-a", 3000, () => events.find((e) => e.event.type === "join" && idOf(e.event) === "node-a"));

    const key = `${prefix}nodes/node-a`;
    const before = await stored(etcd, key);
    expect(before).toBeDefined();
    await etcd.ctl("lease", "revoke", BigInt(before!.lease).toString(16));
    const revokedAt = Date.now();

    await until("leave of node-a", 3000, () => events.find((e) => e.event.type === "leave" && idOf(e.event) === "node-a"));
    const back = await until("node-a joins again", 2000 + 1000, () =>
      events.find((e) => e.event.type === "join" && idOf(e.event) === "node-a" && e.at >= revokedAt),
    );
    expect(back.at - revokedAt).toBeLessThan(3000);
    const after = await stored(etcd, key);
    expect(after?.lease).toBeDefined();
    expect(after!.lease).not.toBe(before!.lease);
    expect(await a.lookup("node-a")).toMatchObject({ nodeId: "node-a" });
    // One warning for the outage, one note when it is over.
    expect(lines.filter((l) => l.level === 40 && /lost the etcd lease/.test(String(l.msg)))).toHaveLength(1);
    await until("the 'registered again' note", 1000, () => lines.find((l) => l.level === 30 && /registered with etcd again/.test(String(l.msg))));
  }, 20_000);

  it("keeps its record through an etcd crash and restart, and other registries watch it again", async () => {
    const own = await startEtcd();
    servers.push(own);
    const prefix = newPrefix();
    const a = open(own.endpoint, prefix, 2000);
    const b = open(own.endpoint, prefix, 2000);
    await a.register(node("node-a"));
    await b.register(node("node-b"));
    const { events } = record(b);
    await until("B knows A", 3000, () => events.find((e) => idOf(e.event) === "node-a"));

    await own.kill();
    await sleep(1000);
    await own.restart();
    const restartedAt = Date.now();

    // A's lease survived (the data was kept) and a change of A's reaches etcd again;
    // B's re-established watch brings it into its cache.
    const lease = (await stored(own, `${prefix}nodes/node-a`))?.lease;
    a.update({ poolUsedBytes: 777 });
    await until("B hears of A's change after the restart", 2000 + 1500, () =>
      events.find((e) => e.event.type === "update" && e.event.node.nodeId === "node-a" && e.event.node.poolUsedBytes === 777),
    );
    expect(Date.now() - restartedAt).toBeLessThan(2000 + 1500);
    expect(events.filter((e) => e.event.type === "leave"), "B never saw A leave").toEqual([]);
    expect(await ids(b)).toEqual(["node-a", "node-b"]);
    const after = await stored(own, `${prefix}nodes/node-a`);
    expect(JSON.parse(after?.value ?? "{}")).toMatchObject({ poolUsedBytes: 777 });
    expect(after?.lease).toBe(lease);
  }, 20_000);

  it("registers again when etcd comes back without its data", async () => {
    const own = await startEtcd();
    servers.push(own);
    const prefix = newPrefix();
    const { log, lines } = capture();
    const a = open(own.endpoint, prefix, 2000, log);
    const b = open(own.endpoint, prefix, 2000);
    await a.register(node("node-a"));
    await b.register(node("node-b"));
    const { events } = record(b);

    await own.kill();
    await own.restart({ freshData: true });
    const restartedAt = Date.now();
    expect(await stored(own, `${prefix}nodes/node-a`)).toBeUndefined();

    // Both notice their lease is unknown and write their records under new leases.
    await until("node-a is back in etcd", 2000 + 1500, () => stored(own, `${prefix}nodes/node-a`));
    await until("node-b is back in etcd", 2000 + 1500, () => stored(own, `${prefix}nodes/node-b`));
    await until("B lists both again", 2000, async () => (await ids(b)).join() === "node-a,node-b");
    await until("B's watcher hears of A", 2000, () => events.find((e) => e.event.type !== "leave" && idOf(e.event) === "node-a" && e.at >= restartedAt));
    expect(lines.filter((l) => l.level === 40 && /lost the etcd lease/.test(String(l.msg)))).toHaveLength(1);
  }, 20_000);

  it("registers and lists through an endpoint list whose first member is down", async () => {
    const prefix = newPrefix();
    const dead = await freePort();
    const server = `etcd://127.0.0.1:${dead},${etcd.endpoint}`;
    // Several clients: each picks its first endpoint at random, so the dead one comes first for most.
    const all = ["n1", "n2", "n3", "n4"].map(() => open(server, prefix));
    for (const [i, r] of all.entries()) await r.register(node(`n${i + 1}`));
    for (const r of all) {
      await until("every registry lists all four", 3000, async () => (await ids(r)).join() === "n1,n2,n3,n4");
    }
    expect(all[0]!.where).toBe(`etcd at 127.0.0.1:${dead},${etcd.endpoint} (prefix "${prefix}")`);
  }, 20_000);

  describe("an endpoint list with a member that accepts connections and never answers", () => {
    let silent: SilentServer;
    const ttl = 2000;

    beforeAll(async () => {
      silent = await startSilentServer();
    });

    afterAll(async () => {
      await silent.close();
    });

    for (const position of ["first", "last"] as const) {
      it(`registers, lists and watches every time, each within the TTL, with that member ${position}`, async () => {
        const members = position === "first" ? [silent.endpoint, etcd.endpoint] : [etcd.endpoint, silent.endpoint];
        const server = `etcd://${members.join(",")}`;
        // New registries each round: new clients, each picking its endpoints afresh.
        for (let round = 1; round <= 5; round++) {
          const prefix = newPrefix();
          const [a, b, reader] = [open(server, prefix, ttl), open(server, prefix, ttl), open(server, prefix, ttl)];
          let started = Date.now();
          await a.register(node("node-a"));
          expect(Date.now() - started, `round ${round}: A registers`).toBeLessThan(ttl + 500);
          const { events } = record(a);
          started = Date.now();
          await b.register(node("node-b"));
          expect(Date.now() - started, `round ${round}: B registers`).toBeLessThan(ttl + 500);
          await until(`round ${round}: A's watch hears B join`, ttl, () => joined(events, "node-b"));
          started = Date.now();
          expect(await ids(reader), `round ${round}: a third registry lists both`).toEqual(["node-a", "node-b"]);
          expect(Date.now() - started, `round ${round}: the list`).toBeLessThan(ttl + 500);
          b.update({ poolUsedBytes: round });
          await until(`round ${round}: A's watch hears B's update`, ttl, () =>
            events.find((e) => e.event.type === "update" && e.event.node.poolUsedBytes === round),
          );
          await b.close();
          await until(`round ${round}: A's watch hears B leave`, ttl, () => left(events, "node-b"));
          await Promise.all([a.close(), reader.close()]);
        }
      }, 120_000);
    }
  });

  it("understands HOST:PORT, etcd://HOST:PORT and etcd://H1:P1,H2:P2", async () => {
    const prefix = newPrefix();
    const spellings = [etcd.endpoint, `etcd://${etcd.endpoint}`, `etcd://${etcd.endpoint},localhost:${etcd.clientPort}`];
    const all = spellings.map((s) => open(s, prefix));
    for (const [i, r] of all.entries()) await r.register(node(`s${i}`));
    for (const r of all) await until("lists all three", 3000, async () => (await ids(r)).join() === "s0,s1,s2");
    expect(all.map((r) => r.where)).toEqual([
      `etcd at ${etcd.endpoint} (prefix "${prefix}")`,
      `etcd at ${etcd.endpoint} (prefix "${prefix}")`,
      `etcd at ${etcd.endpoint},localhost:${etcd.clientPort} (prefix "${prefix}")`,
    ]);
  });

  it("keeps two clusters apart by prefix", async () => {
    const one = `one-${newPrefix()}`;
    const two = `two-${newPrefix()}`;
    const a1 = open(etcd.endpoint, one);
    const a2 = open(etcd.endpoint, two);
    await a1.register(node("a1"));
    await a2.register(node("a2"));
    const { events } = record(a1);
    const b1 = open(etcd.endpoint, one);
    const b2 = open(etcd.endpoint, two);
    await b2.register(node("b2"));
    await b1.register(node("b1"));
    await until("a1 learns b1", 3000, () => a1.lookup("b1"));
    await until("a2 learns b2", 3000, () => a2.lookup("b2"));
    expect(await ids(a1)).toEqual(["a1", "b1"]);
    expect(await ids(b2)).toEqual(["a2", "b2"]);
    expect(events.map((e) => idOf(e.event))).not.toContain("b2");
    expect(await a1.lookup("a2")).toBeUndefined();
  });

  describe("an unreachable etcd", () => {
    let silent: SilentServer;
    let silentPort: number;

    beforeAll(async () => {
      // Accepts connections and never says a word: calls hang until their deadline.
      silent = await startSilentServer();
      silentPort = silent.port;
    });

    afterAll(async () => {
      await silent.close();
    });

    it("makes register() fail with UnavailableError naming the endpoint within the TTL when nothing listens", async () => {
      const port = await freePort();
      const r = open(`127.0.0.1:${port}`, newPrefix(), BOUNDED_TTL_MS);
      const started = Date.now();
      const err = await r.register(node("lonely")).then(() => undefined, (e: unknown) => e);
      const took = Date.now() - started;
      expect(err).toBeInstanceOf(UnavailableError);
      expect((err as Error).message).toMatch(new RegExp(`^etcd at 127\\.0\\.0\\.1:${port}: `));
      expect(took).toBeLessThan(BOUND_MS + SLACK_MS);
      const closing = Date.now();
      await r.close();
      expect(Date.now() - closing).toBeLessThan(CLOSE_BOUND_MS + SLACK_MS);
    });

    it("names the cause (ECONNREFUSED), not a circuit breaker, in every failed register(), however often it is tried", async () => {
      const [one, two] = [await freePort(), await freePort()];
      for (const endpoints of [`127.0.0.1:${one}`, `127.0.0.1:${one},127.0.0.1:${two}`]) {
        const r = open(`etcd://${endpoints}`, newPrefix(), 2000);
        for (let attempt = 1; attempt <= 3; attempt++) {
          const err = await r.register(node("lonely")).then(() => undefined, (e: unknown) => e);
          expect(err).toBeInstanceOf(UnavailableError);
          const message = (err as Error).message;
          expect(message.startsWith(`etcd at ${endpoints}: cannot register node lonely: `), message).toBe(true);
          expect(message, `attempt ${attempt} on ${endpoints}`).toMatch(/ECONNREFUSED 127\.0\.0\.1:\d+|no answer within/);
          expect(message).not.toMatch(/circuit breaker/);
          // No part of the message twice (as "a: b: a: b").
          const parts = message.split(/: |\. /).filter((p) => p.length >= 12);
          expect(parts.filter((p, i) => parts.indexOf(p) !== i), message).toEqual([]);
        }
      }
    });

    it("makes register() and list() fail with UnavailableError within the TTL when etcd accepts but never answers", async () => {
      const server = `etcd://127.0.0.1:${silentPort}`;
      const r = open(server, newPrefix(), BOUNDED_TTL_MS);
      let started = Date.now();
      const err = await r.register(node("lonely")).then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(UnavailableError);
      expect((err as Error).message).toMatch(new RegExp(`^etcd at 127\\.0\\.0\\.1:${silentPort}: `));
      expect(Date.now() - started).toBeLessThan(BOUND_MS + SLACK_MS);

      const reader = open(server, newPrefix(), BOUNDED_TTL_MS);
      started = Date.now();
      await expect(reader.list()).rejects.toBeInstanceOf(UnavailableError);
      expect(Date.now() - started).toBeLessThan(BOUND_MS + SLACK_MS);
      await expect(reader.lookup("anyone")).rejects.toThrow(`etcd at 127.0.0.1:${silentPort}: `);

      const closing = Date.now();
      await Promise.all([r.close(), reader.close()]);
      expect(Date.now() - closing).toBeLessThan(CLOSE_BOUND_MS + SLACK_MS);
    }, 60_000);
  });

  it("logs the deregistration when the revoke succeeded, and warns instead when etcd is gone (closing within its bound)", async () => {
    const deregistered = (lines: Array<Record<string, unknown>>) => lines.filter((l) => /deregistered from etcd/.test(String(l.msg)));
    const fine = capture();
    const b = open(etcd.endpoint, newPrefix(), 3000, fine.log);
    await b.register(node("node-b"));
    await b.close();
    expect(deregistered(fine.lines).map((l) => l.level)).toEqual([30]);

    const own = await startEtcd();
    servers.push(own);
    const { log, lines } = capture();
    const a = open(own.endpoint, newPrefix(), 3000, log);
    await a.register(node("node-a"));
    await own.kill();
    const closing = Date.now();
    await a.close();
    expect(Date.now() - closing).toBeLessThan(CLOSE_BOUND_MS + SLACK_MS);
    expect(deregistered(lines)).toEqual([]);
    expect(lines.filter((l) => l.level === 40 && /revoke/.test(String(l.msg)))).toHaveLength(1);
  });

  it("skips a record that does not decode, logs its key, and lists the others", async () => {
    const prefix = newPrefix();
    const a = open(etcd.endpoint, prefix);
    await a.register(node("node-a"));
    await etcd.ctl("put", `${prefix}nodes/garbage`, "{not json");
    await etcd.ctl("put", `${prefix}nodes/impostor`, JSON.stringify(node("someone-else")));

    const { log, lines } = capture();
    const reader = open(etcd.endpoint, prefix, 3000, log);
    expect(await ids(reader)).toEqual(["node-a"]);
    const warned = lines.filter((l) => l.level === 40).map((l) => l.key);
    expect(warned).toEqual(expect.arrayContaining([`${prefix}nodes/garbage`, `${prefix}nodes/impostor`]));

    // Through the watch too: a valid record overwritten with garbage is gone, a new valid one arrives.
    const { events } = record(reader);
    await etcd.ctl("put", `${prefix}nodes/node-x`, JSON.stringify(node("node-x")));
    await until("node-x joins", 3000, () => events.find((e) => e.event.type === "join" && idOf(e.event) === "node-x"));
    await etcd.ctl("put", `${prefix}nodes/node-x`, "[]");
    await until("node-x leaves", 3000, () => events.find((e) => e.event.type === "leave" && idOf(e.event) === "node-x"));
    await until("the warning names node-x's key", 1000, () => lines.find((l) => l.level === 40 && l.key === `${prefix}nodes/node-x`));
    const b = open(etcd.endpoint, prefix);
    await b.register(node("node-b"));
    await until("node-b is listed", 3000, async () => (await ids(reader)).join() === "node-a,node-b");

    // Warned once per value: the same garbage written again is not news; other garbage is.
    const warnings = (key: string) => lines.filter((l) => l.level === 40 && l.key === `${prefix}nodes/${key}`);
    await etcd.ctl("put", `${prefix}nodes/garbage`, "{not json");
    await etcd.ctl("put", `${prefix}nodes/node-x`, "[]");
    await etcd.ctl("put", `${prefix}nodes/node-y`, JSON.stringify(node("node-y")));
    await until("node-y joins (the puts before it were seen)", 3000, () => events.find((e) => e.event.type === "join" && idOf(e.event) === "node-y"));
    expect(warnings("garbage")).toHaveLength(1);
    expect(warnings("node-x")).toHaveLength(1);
    await etcd.ctl("put", `${prefix}nodes/garbage`, "{still not json");
    await until("the new garbage is warned about", 3000, () => warnings("garbage").length === 2);
  });
});
