// Free room is usable room: daemons whose pools are cut into small holes take a part
// bigger than any hole (it spans several extents), evict only what a put needs, count
// the allocator's rounding in bytes used, and move such parts byte-exact through Get,
// GetStream and BatchTransfer PUSH and PULL between two daemons whose holes differ.
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PutRequest } from "../../src/gen/kvferry/v1/kvferry.js";
import { poolFootprint } from "../../src/engine/pool-memory.js";
import { MiB, expectSameBytes, expectStatus, listAll, rawUnary, startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { digest, expectAllOk, expectExactAccounting, seededBytes, startPeerDaemon, type PeerDaemon } from "../helpers/transfer.js";

const KiB = 1024;
const POOL = 64 * MiB;
const LONG_LEASE = { leaseTtlMs: 600_000 };

let a: PeerDaemon;
let b: PeerDaemon;
/** A 1 MiB pool whose puts wait 200 ms for room. */
let tiny: TestDaemon;

beforeAll(async () => {
  [a, b, tiny] = await Promise.all([
    startPeerDaemon({ bufferSize: "64MiB", args: ["--put-deadline-ms", "500"] }),
    startPeerDaemon({ bufferSize: "64MiB", args: ["--put-deadline-ms", "500"] }),
    startDaemon(["--kv-buffer-size", "1MiB", "--put-deadline-ms", "200"]),
  ]);
});

afterAll(async () => {
  const codes = await Promise.all([a?.stop(), b?.stop(), tiny?.stop()]);
  expect(codes).toEqual([0, 0, 0]);
});

async function empty(d: TestDaemon): Promise<void> {
  for (const e of await listAll(d.client)) await d.client.release(e.transferId).catch(() => undefined);
  expect((await d.client.serverInfo()).bytesUsed).toBe(0);
}

/**
 * Fills the whole pool with open entries of `size` bytes (the last one takes what is left)
 * and releases every other one: holes of `size` bytes between entries that stay, nothing
 * evictable. Returns the bytes left free.
 */
async function fragment(d: TestDaemon, prefix: string, size: number): Promise<number> {
  await empty(d);
  const sizes: number[] = [];
  for (let left = POOL; left > 0; left -= Math.min(size, left)) sizes.push(Math.min(size, left));
  for (const [i, n] of sizes.entries()) await d.client.put(`${prefix}-${i}`, "fill", seededBytes(n, `${prefix}-${i}`), LONG_LEASE);
  expect((await d.client.serverInfo()).bytesUsed).toBe(POOL);
  let free = 0;
  for (let i = 0; i < sizes.length; i += 2) {
    await d.client.release(`${prefix}-${i}`);
    free += sizes[i]!;
  }
  expect((await d.client.serverInfo()).bytesUsed).toBe(POOL - free);
  return free;
}

describe("a fragmented pool", () => {
  it("accepts an 8 MiB put with 32 MiB free in 1 MiB holes, evicting nothing, and serves it byte-exact through Get and GetStream", async () => {
    const free = await fragment(a, "holes", MiB);
    expect(free).toBe(32 * MiB);
    const before = await a.client.serverInfo();
    const big = seededBytes(8 * MiB, "frag-big");
    // Streamed (the PutStream writer crosses extents) and unary (one write across them).
    await a.client.putStream("frag", "layer.0", big, LONG_LEASE);
    const odd = seededBytes(3 * MiB + 5, "frag-odd");
    await a.client.put("frag", "layer.1", odd, { ...LONG_LEASE, seal: true });

    const after = await a.client.serverInfo();
    expect(after.counters!.evictions).toBe(before.counters!.evictions);
    expect(after.bytesUsed - before.bytesUsed).toBe(8 * MiB + poolFootprint(3 * MiB + 5));
    const unary = await a.client.get("frag", { waitMs: 0 });
    expectSameBytes(unary.parts.get("layer.0"), big, "layer.0 through Get");
    expectSameBytes(unary.parts.get("layer.1"), odd, "layer.1 through Get");
    // Chunks of 256 KiB + 3: they straddle the 1 MiB segment boundaries.
    const streamed = await a.client.getStream("frag", { waitMs: 0, chunkSize: 256 * KiB + 3 });
    expectSameBytes(streamed.parts.get("layer.0"), big, "layer.0 through GetStream");
    expectSameBytes(streamed.parts.get("layer.1"), odd, "layer.1 through GetStream");
    await expectExactAccounting(a);
  });

  it("evicts only the least recently used entries a put needs, even when they are not next to each other", async () => {
    await empty(a);
    // 16 sealed entries of 4 MiB fill the pool; reading the odd ones makes the LRU order
    // 0, 2, 4, …, 14, 1, 3, …: no two least recently used entries are neighbours.
    for (let i = 0; i < 16; i++) await a.client.putStream(`lru-${i}`, "kv", seededBytes(4 * MiB, `lru-${i}`), { ...LONG_LEASE, seal: true });
    for (let i = 1; i < 16; i += 2) await a.client.getStream(`lru-${i}`, { waitMs: 0 });
    const before = await a.client.serverInfo();
    expect(before.bytesUsed).toBe(POOL);

    const big = seededBytes(8 * MiB, "lru-big");
    await a.client.putStream("lru-big", "kv", big, { ...LONG_LEASE, seal: true });

    const after = await a.client.serverInfo();
    expect(after.counters!.evictions - before.counters!.evictions, "entries evicted for 8 MiB").toBe(2);
    expect(after.counters!.bytesEvicted - before.counters!.bytesEvicted).toBe(8 * MiB);
    const left = new Set((await listAll(a.client)).map((e) => e.transferId));
    expect(left.has("lru-0") || left.has("lru-2"), "the two least recently used went").toBe(false);
    for (let i = 1; i < 16; i++) if (i !== 2) expect(left.has(`lru-${i}`), `lru-${i} stays`).toBe(true);
    expectSameBytes((await a.client.getStream("lru-big", { waitMs: 0 })).parts.get("kv"), big, "the put that evicted");
    expect(after.bytesUsed).toBe(POOL);
  });
});

describe("bytes used", () => {
  it("counts each part rounded up to the pool's 64-byte unit, and a put refused for room names the rounded need and the true free bytes", async () => {
    await empty(tiny);
    for (let i = 0; i < 100; i++) await tiny.client.put("ones", `p${i}`, Buffer.from([i]));
    const info = await tiny.client.serverInfo();
    expect((await tiny.client.stat("ones")).bytes).toBe(100);
    expect(info.bytesUsed).toBe(100 * 64);
    // The rest of the pool in one part: now it is full.
    await tiny.client.putStream("rest", "kv", Buffer.alloc(MiB - 100 * 64), LONG_LEASE);
    expect((await tiny.client.serverInfo()).bytesUsed).toBe(MiB);
    const refused = await rawUnary((md, opts, cb) =>
      tiny.client.raw.put(PutRequest.create({ transferId: "one-more", part: "kv", data: Buffer.from([1]) }), md, opts, cb),
    );
    expectStatus(refused, status.RESOURCE_EXHAUSTED, new RegExp(`needs 1 bytes \\(64 in the pool\\), 0 free of ${MiB}`));
  });
});

describe("parts spanning several extents between two daemons", () => {
  it("moves them byte-exact by PUSH and PULL when the holes differ on each side, and both sides account rounded bytes", async () => {
    // a: 1 MiB holes; b: 768 KiB holes (segment boundaries that do not line up).
    await fragment(a, "a-holes", MiB);
    await fragment(b, "b-holes", 768 * KiB);
    const parts = [
      { name: "layer.0", data: seededBytes(8 * MiB, "x-0") },
      { name: "layer.1", data: seededBytes(2 * MiB + 777, "x-1") },
      { name: "layer.2", data: seededBytes(100, "x-2") },
    ];
    for (const [i, p] of parts.entries()) {
      await a.client.put("spread", p.name, p.data, { ...LONG_LEASE, seal: i === parts.length - 1 });
    }
    const hashes = new Map(parts.map((p) => [p.name, digest(p.data)]));
    const expectOn = async (d: TestDaemon, where: string) => {
      const streamed = await d.client.getStream("spread", { waitMs: 0, chunkSize: 300 * KiB });
      expect(new Map([...streamed.parts].map(([n, data]) => [n, digest(data)])), `${where}: GetStream`).toEqual(hashes);
      const unary = await d.client.get("spread", { waitMs: 0 });
      expect(new Map([...unary.parts].map(([n, data]) => [n, digest(data)])), `${where}: Get`).toEqual(hashes);
    };

    // PUSH a → b: a's 1 MiB segments written into b's 768 KiB ones.
    expectAllOk((await a.client.batchTransfer(["spread"], b.peerAddress, "push")).results);
    await expectOn(b, "b after the push");
    await expectExactAccounting(b, "b");
    await expectExactAccounting(a, "a");
    expect((await listAll(a.client)).some((e) => e.transferId === "spread"), "the push moved it away").toBe(false);

    // PULL b → a: read from b's segments into a's.
    expectAllOk((await a.client.batchTransfer(["spread"], b.peerAddress, "pull")).results);
    await expectOn(a, "a after the pull");
    await expectExactAccounting(a, "a");
    await expectExactAccounting(b, "b");
    expect((await listAll(b.client)).some((e) => e.transferId === "spread"), "the pull moved it away").toBe(false);
  });
});
