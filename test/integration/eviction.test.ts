// Capacity, eviction, leases and release, against daemons with small buffers.
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { KvferryClient } from "../../src/client/client.js";
import { NotFoundError } from "../../src/errors.js";
import { PutRequest } from "../../src/gen/kvferry/v1/kvferry.js";
import {
  MiB,
  expectSameBytes,
  expectStatus,
  listAll,
  pattern,
  rawPutStream,
  rawUnary,
  rejection,
  sleep,
  startDaemon,
  type TestDaemon,
} from "../helpers/daemon.js";

const CAPACITY = 4 * MiB;
const PUT_DEADLINE_MS = 300;

/** 4 MiB buffer, puts wait 300 ms for room. */
let small: TestDaemon;
/** 2 MiB buffer, puts wait 3 s for room, entries live 400 ms unless a put says otherwise. */
let patient: TestDaemon;

beforeAll(async () => {
  [small, patient] = await Promise.all([
    startDaemon(["--kv-buffer-size", "4MiB", "--put-deadline-ms", String(PUT_DEADLINE_MS), "--get-wait-ms", "2000"]),
    startDaemon(["--kv-buffer-size", "2MiB", "--put-deadline-ms", "3000", "--lease-ttl-ms", "400"]),
  ]);
});

afterAll(async () => {
  const codes = await Promise.all([small?.stop(), patient?.stop()]);
  expect(codes).toEqual([0, 0]);
});

async function empty(c: KvferryClient): Promise<void> {
  for (const e of await listAll(c)) await c.release(e.transferId).catch(() => undefined);
  expect((await c.serverInfo()).bytesUsed).toBe(0);
}

/** NOT_FOUND through the raw client: the message and the kvferry-reason metadata. */
async function rawStatGone(d: TestDaemon, transferId: string) {
  const outcome = await rawUnary((md, opts, cb) => d.client.raw.stat({ transferId }, md, opts, cb));
  const err = expectStatus(outcome, status.NOT_FOUND);
  return { details: err.details, reason: err.metadata.get("kvferry-reason") };
}

describe("eviction", () => {
  let c: KvferryClient;
  beforeEach(async () => {
    c = small.client;
    await empty(c);
  });

  it("evicts the least recently used sealed entry when a put needs room", async () => {
    const before = await c.serverInfo();
    expect(before.poolCapacity).toBe(CAPACITY);
    for (let i = 0; i < 4; i++) await c.put(`lru-${i}`, "kv", pattern(MiB, i), { seal: true });
    expect((await c.serverInfo()).bytesUsed).toBe(CAPACITY);
    // Reading lru-0 makes lru-1 the least recently used.
    await c.get("lru-0", { waitMs: 0 });

    await c.put("lru-4", "kv", pattern(MiB, 4), { seal: true });
    const gone = await rawStatGone(small, "lru-1");
    expect(gone.details).toMatch(/evicted/);
    expect(gone.reason).toEqual(["evicted"]);
    for (const id of ["lru-0", "lru-2", "lru-3", "lru-4"]) expect((await c.stat(id)).bytes, id).toBe(MiB);

    let info = await c.serverInfo();
    expect(info.counters!.evictions - before.counters!.evictions).toBe(1);
    expect(info.counters!.bytesEvicted - before.counters!.bytesEvicted).toBe(MiB);
    expect(info.bytesUsed).toBe(CAPACITY);
    expect(info.entries).toBe(4);

    // The next one to go is lru-2, then lru-3: least recently used first.
    await c.put("lru-5", "kv", pattern(MiB, 5), { seal: true });
    expect((await rawStatGone(small, "lru-2")).reason).toEqual(["evicted"]);
    expect((await c.stat("lru-3")).bytes).toBe(MiB);
    expectSameBytes((await c.get("lru-0", { waitMs: 0 })).parts.get("kv"), pattern(MiB, 0), "lru-0");
    info = await c.serverInfo();
    expect(info.counters!.evictions - before.counters!.evictions).toBe(2);
    expect(info.counters!.bytesEvicted - before.counters!.bytesEvicted).toBe(2 * MiB);
  });

  it("evicts as many least recently used entries as a big put needs, and no more", async () => {
    for (let i = 0; i < 4; i++) await c.put(`many-${i}`, "kv", pattern(MiB, i), { seal: true });
    const before = await c.serverInfo();
    await c.put("many-big", "kv", pattern(2 * MiB + 1, 9), { seal: true });
    for (const id of ["many-0", "many-1", "many-2"]) expect((await rawStatGone(small, id)).reason, id).toEqual(["evicted"]);
    expect((await c.stat("many-3")).bytes).toBe(MiB);
    const after = await c.serverInfo();
    expect(after.counters!.evictions - before.counters!.evictions).toBe(3);
    expect(after.counters!.bytesEvicted - before.counters!.bytesEvicted).toBe(3 * MiB);
    // (the odd byte takes a whole 64-byte unit of the pool)
    expect(after.bytesUsed).toBe(3 * MiB + 64);
  });

  it("evicts nothing when even evicting every sealed entry would not make room", async () => {
    await c.put("half-open", "a", pattern(MiB, 1));
    await c.put("half-open", "b", pattern(MiB, 2));
    await c.put("half-sealed-0", "kv", pattern(MiB, 3), { seal: true });
    await c.put("half-sealed-1", "kv", pattern(MiB, 4), { seal: true });
    const before = await c.serverInfo();
    const outcome = await rawUnary((md, opts, cb) =>
      c.raw.put(PutRequest.create({ transferId: "half-big", part: "kv", data: Buffer.alloc(3 * MiB), seal: true }), md, opts, cb),
    );
    expectStatus(outcome, status.RESOURCE_EXHAUSTED, /needs 3145728 bytes/);
    const after = await c.serverInfo();
    expect(after.counters!.evictions).toBe(before.counters!.evictions);
    for (const id of ["half-sealed-0", "half-sealed-1"]) expect((await c.stat(id)).bytes, id).toBe(MiB);
  });

  it("answers a Get of an evicted entry with NOT_FOUND saying evicted, without waiting", async () => {
    for (let i = 0; i < 5; i++) await c.put(`ev-get-${i}`, "kv", pattern(MiB, i), { seal: true });
    const err = await rejection(c.get("ev-get-0", { waitMs: 1500 }));
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err.message).toMatch(/evicted/);
    expect(err.reason).toBe("evicted");
  });

  it("never evicts an open entry, even the least recently used; evicts a newer sealed one instead", async () => {
    for (let i = 0; i < 3; i++) await c.put("open-old", `layer.${i}`, pattern(MiB, 10 + i));
    await c.put("sealed-new", "kv", pattern(MiB, 20), { seal: true });
    await c.put("open-new", "kv", pattern(MiB, 21));
    expect((await rawStatGone(small, "sealed-new")).reason).toEqual(["evicted"]);
    const kept = await c.stat("open-old");
    expect(kept.parts.map((p) => p.name)).toEqual(["layer.0", "layer.1", "layer.2"]);
    expect(kept.bytes).toBe(3 * MiB);
  });

  it("fails a put with RESOURCE_EXHAUSTED after the put deadline when nothing can be evicted, naming needed and free bytes", async () => {
    for (let i = 0; i < 3; i++) await c.put("open-full", `layer.${i}`, pattern(MiB, i));
    await c.put("open-full", "layer.3", pattern(MiB / 2, 3));
    const before = await c.serverInfo();
    const free = CAPACITY - before.bytesUsed;
    expect(free).toBe(MiB / 2);

    const started = Date.now();
    const outcome = await rawUnary((md, opts, cb) =>
      c.raw.put(PutRequest.create({ transferId: "no-room", part: "kv", data: pattern(MiB, 9), seal: true }), md, opts, cb),
    );
    const elapsed = Date.now() - started;
    const err = expectStatus(outcome, status.RESOURCE_EXHAUSTED);
    expect(err.details).toMatch(new RegExp(`needs ${MiB} bytes`));
    expect(err.details).toMatch(new RegExp(`${free} free`));
    // It waited for room for the whole put deadline before giving up.
    expect(elapsed).toBeGreaterThanOrEqual(PUT_DEADLINE_MS - 20);

    const after = await c.serverInfo();
    expect(after.counters!.putTimeouts - before.counters!.putTimeouts).toBe(1);
    expect(after.counters!.evictions).toBe(before.counters!.evictions);
    expect(after.bytesUsed).toBe(before.bytesUsed);
    expect((await c.stat("open-full")).parts).toHaveLength(4);
    // The failed put left no entry behind.
    expect(await rejection(c.stat("no-room"))).toBeInstanceOf(NotFoundError);
  });

  it("refuses a part bigger than the whole buffer with OUT_OF_RANGE at once, unary or streamed", async () => {
    // A full buffer of open entries: a put that waited for room would end RESOURCE_EXHAUSTED.
    for (let i = 0; i < 4; i++) await c.put("open-block", `layer.${i}`, pattern(MiB, i));
    const before = await c.serverInfo();

    const unary = await rawUnary((md, opts, cb) =>
      c.raw.put(PutRequest.create({ transferId: "too-big", part: "kv", data: Buffer.alloc(CAPACITY + 1), seal: false }), md, opts, cb),
    );
    expectStatus(unary, status.OUT_OF_RANGE, new RegExp(`${CAPACITY + 1} bytes.*${CAPACITY}`));

    const streamed = await rawPutStream(c.raw, [
      { header: { transferId: "too-big", part: "kv", size: 5 * MiB, seal: false } },
    ]);
    expectStatus(streamed, status.OUT_OF_RANGE, /never fit/);

    const after = await c.serverInfo();
    expect(after.counters!.putTimeouts).toBe(before.counters!.putTimeouts);
    expect(after.bytesUsed).toBe(before.bytesUsed);
    expect(await rejection(c.stat("too-big"))).toBeInstanceOf(NotFoundError);
  });
});

describe("waiting for room", () => {
  let c: KvferryClient;
  beforeEach(async () => {
    c = patient.client;
    await empty(c);
  });

  it("serves a put waiting for room as soon as a release frees enough", async () => {
    await c.put("hog", "kv", pattern(2 * MiB, 1), { leaseTtlMs: 60_000 });
    let settled = false;
    const waiting = patient.newClient().put("waiter", "kv", pattern(MiB, 2), { leaseTtlMs: 60_000, seal: true });
    void waiting.finally(() => (settled = true)).catch(() => undefined);
    await sleep(200);
    expect(settled, "the put waits while the buffer is full").toBe(false);
    expect(await c.release("hog")).toBe(2 * MiB);
    const info = await waiting;
    expect(info.bytes).toBe(MiB);
    expectSameBytes((await c.get("waiter", { waitMs: 0 })).parts.get("kv"), pattern(MiB, 2));
  });

  it("serves a put waiting for room once sealing makes an entry evictable", async () => {
    await c.put("to-seal", "kv", pattern(2 * MiB, 1), { leaseTtlMs: 60_000 });
    const before = await c.serverInfo();
    let settled = false;
    const waiting = patient.newClient().put("waiter2", "kv", pattern(MiB, 2), { leaseTtlMs: 60_000 });
    void waiting.finally(() => (settled = true)).catch(() => undefined);
    await sleep(200);
    expect(settled, "the put waits while the only entry is open").toBe(false);
    await c.seal("to-seal");
    expect((await waiting).bytes).toBe(MiB);
    expect((await rawStatGone(patient, "to-seal")).reason).toEqual(["evicted"]);
    const after = await c.serverInfo();
    expect(after.counters!.evictions - before.counters!.evictions).toBe(1);
    expect(after.counters!.bytesEvicted - before.counters!.bytesEvicted).toBe(2 * MiB);
  });
});

describe("leases", () => {
  it("expires an entry when the lease a put named ends: NOT_FOUND saying expired, counted", async () => {
    const c = small.client;
    await empty(c);
    const before = await c.serverInfo();
    const put = await c.put("short-lease", "kv", pattern(1000, 1), { leaseTtlMs: 150, seal: true });
    expect(put.leaseRemainingMs).toBeGreaterThan(0);
    expect(put.leaseRemainingMs).toBeLessThanOrEqual(150);
    await sleep(450);
    const gone = await rawStatGone(small, "short-lease");
    expect(gone.details).toMatch(/expired/);
    expect(gone.reason).toEqual(["expired"]);
    const after = await c.serverInfo();
    expect(after.counters!.expiries - before.counters!.expiries).toBe(1);
    expect(after.bytesUsed).toBe(before.bytesUsed);
    expect(after.entries).toBe(before.entries);
  });

  it("expires an entry after --lease-ttl-ms when its puts name no lease", async () => {
    const c = patient.client;
    const put = await c.put("default-lease", "kv", pattern(1000, 1));
    expect(put.leaseRemainingMs).toBeGreaterThan(0);
    expect(put.leaseRemainingMs).toBeLessThanOrEqual(400);
    await sleep(750);
    const err = await rejection(c.stat("default-lease"));
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err.reason).toBe("expired");
    expect((await c.serverInfo()).counters!.expiries).toBeGreaterThanOrEqual(1);
  });

  it("renews the lease when a later put names one", async () => {
    const c = small.client;
    await c.put("renewed", "a", pattern(10, 1), { leaseTtlMs: 800 });
    const renewed = await c.put("renewed", "b", pattern(10, 2), { leaseTtlMs: 10_000 });
    expect(renewed.leaseRemainingMs).toBeGreaterThan(5000);
    await sleep(1100); // past the first lease
    expect((await c.stat("renewed")).parts.map((p) => p.name)).toEqual(["a", "b"]);
    await c.release("renewed");
  });

  it("ends a Get waiting on an entry whose lease ends with NOT_FOUND saying expired", async () => {
    const c = small.client;
    await c.put("expiring", "a", pattern(10, 1), { leaseTtlMs: 200 });
    const err = await rejection(c.get("expiring", { parts: ["b"], waitMs: 1500 }));
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err.message).toMatch(/expired/);
    expect(err.reason).toBe("expired");
  });
});

describe("release", () => {
  it("drops the entry: a later Get is NOT_FOUND saying released, bytes return, counted", async () => {
    const c = small.client;
    await empty(c);
    const before = await c.serverInfo();
    await c.put("rel", "a", pattern(3000, 1));
    await c.put("rel", "b", pattern(5000, 2), { seal: true });
    expect(await c.release("rel")).toBe(8000);
    const err = await rejection(c.get("rel", { waitMs: 1000 }));
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err.message).toMatch(/released/);
    expect(err.reason).toBe("released");
    const after = await c.serverInfo();
    expect(after.counters!.releases - before.counters!.releases).toBe(1);
    expect(after.bytesUsed).toBe(before.bytesUsed);
    // Releasing again: the entry is gone, and the answer still says why.
    const again = await rawUnary((md, o, cb) => c.raw.release({ transferId: "rel" }, md, o, cb));
    expectStatus(again, status.NOT_FOUND, /released/);
  });

  it("ends a Get waiting for a part of an entry that gets released with NOT_FOUND saying released", async () => {
    const c = small.client;
    await c.put("rel-wait", "a", pattern(10, 1));
    const started = Date.now();
    const waitMs = 30_000;
    const waiting = rejection(small.newClient().get("rel-wait", { parts: ["b"], waitMs }));
    await sleep(150);
    await c.release("rel-wait");
    const err = await waiting;
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err.message).toMatch(/released/);
    expect(err.reason).toBe("released");
    // It ended with the release, not with its own wait.
    expect(Date.now() - started).toBeLessThan(waitMs / 2);
  });

  it("ends a Get waiting for the seal of an entry that gets released with NOT_FOUND saying released", async () => {
    const c = small.client;
    await c.put("rel-wait-seal", "a", pattern(10, 1));
    const waiting = rejection(small.newClient().getStream("rel-wait-seal", { waitMs: 5000 }));
    await sleep(150);
    await c.release("rel-wait-seal");
    const err = await waiting;
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err.reason).toBe("released");
  });
});
