// Two daemons as separate processes on 127.0.0.1, moving entries through BatchTransfer
// (PUSH and PULL) and Get/GetStream with a source: contents by sha256, the parts and sizes
// of the sealed copy, what each side keeps, the counters, the per-id results, the requests
// refused as a whole, 1,000 concurrent transfers, and exact byte accounting afterwards.
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { NotFoundError } from "../../src/errors.js";
import { BatchTransferRequest, TransferMode, type BatchTransferResponse } from "../../src/gen/kvferry/v1/kvferry.js";
import { MiB, expectStatus, rawUnary, rejection } from "../helpers/daemon.js";
import {
  digest,
  entryBytes,
  entrySpec,
  expectAllOk,
  expectExactAccounting,
  expectSealedLike,
  fetchHashes,
  putEntry,
  RDMA,
  seededBytes,
  startPeerDaemon,
  type EntrySpec,
  type PeerDaemon,
} from "../helpers/transfer.js";

const KiB = 1024;

/** The initiator of most transfers. */
let a: PeerDaemon;
/** The other side. */
let b: PeerDaemon;

beforeAll(async () => {
  [a, b] = await Promise.all([
    startPeerDaemon({ bufferSize: "1536MiB" }),
    startPeerDaemon({ bufferSize: "1536MiB" }),
  ]);
});

afterAll(async () => {
  const codes = await Promise.all([a?.stop(), b?.stop()]);
  expect(codes).toEqual([0, 0]);
});

/** Multi-part entries whose largest part is 1 B, 4 KiB + 1, 1 MiB and 64 MiB (plus an empty part). */
function sizeClasses(prefix: string): EntrySpec[] {
  return [
    entrySpec(`${prefix}-1b`, [1, 0]),
    entrySpec(`${prefix}-4k1`, [4 * KiB + 1, 3, 4 * KiB + 1]),
    entrySpec(`${prefix}-64k`, [64 * KiB]),
    entrySpec(`${prefix}-1m`, [MiB, MiB + 7, 1]),
    entrySpec(`${prefix}-64m`, [64 * MiB, MiB, 17]),
  ];
}

async function counters(d: PeerDaemon) {
  return (await d.client.serverInfo()).counters!;
}

/** Releases what a test left on either daemon, so the next one starts from an empty pool. */
function releaseEverywhere(ids: string[]): Promise<void> {
  return releaseOn([a, b], ids);
}

async function releaseOn(daemons: PeerDaemon[], ids: string[]): Promise<void> {
  for (const d of daemons) {
    for (const group of chunks(ids, 50)) await Promise.all(group.map((id) => d.client.release(id).catch(() => {})));
  }
}

/** Releases the ids on both daemons when the test ends, passed or failed. */
function cleanupAfter(ids: string[]): void {
  onTestFinished(() => releaseEverywhere(ids));
}

async function expectGoneAs(d: PeerDaemon, id: string, reason: string): Promise<void> {
  const err = await rejection(d.client.stat(id));
  expect(err, `${id} on ${d.address}: ${err.message}`).toBeInstanceOf(NotFoundError);
  expect((err as unknown as NotFoundError).reason, `${id}: ${err.message}`).toBe(reason);
}

/** Moves the entries and checks the per-id results: in request order, OK, each with its bytes. */
async function transferAll(
  initiator: PeerDaemon,
  other: PeerDaemon,
  specs: EntrySpec[],
  mode: "push" | "pull",
  keepSource = false,
): Promise<BatchTransferResponse> {
  const res = await initiator.client.batchTransfer(specs.map((s) => s.id), other.peerAddress, mode, { keepSource });
  expectAllOk(res.results);
  expect(res.results.map((r) => r.transferId)).toEqual(specs.map((s) => s.id));
  expect(res.results.map((r) => r.bytes)).toEqual(specs.map(entryBytes));
  for (const r of res.results) expect(r.micros, r.transferId).toBeGreaterThan(0);
  return res;
}

describe("PUSH", () => {
  it("pushes multi-part entries of 1 B, 64 KiB and up to 64 MiB in one batch (one handle, one gather op): the target seals the same parts and contents, the source drops them as transferred", async () => {
    const specs = sizeClasses("push");
    cleanupAfter(specs.map((s) => s.id));
    const hashes = new Map<string, Map<string, string>>();
    for (const s of specs) hashes.set(s.id, await putEntry(a.client, s));
    const total = specs.reduce((sum, s) => sum + entryBytes(s), 0);
    const [aBefore, bBefore] = await Promise.all([counters(a), counters(b)]);

    await transferAll(a, b, specs, "push");

    for (const s of specs) {
      await expectSealedLike(b.client, s);
      expect(await fetchHashes(b.client, s.id), s.id).toEqual(hashes.get(s.id));
      await expectGoneAs(a, s.id, "transferred");
    }
    const [aAfter, bAfter] = await Promise.all([counters(a), counters(b)]);
    expect(aAfter.transferred - aBefore.transferred).toBe(specs.length);
    expect(bAfter.transferred - bBefore.transferred).toBe(0);
    expect(aAfter.bytesSent - aBefore.bytesSent).toBe(total);
    expect(bAfter.bytesReceived - bBefore.bytesReceived).toBe(total);
    expect(await expectExactAccounting(a, "source")).toBe(0);
    expect(await expectExactAccounting(b, "target")).toBe(total);
  });

  it("keeps the source's copy with keepSource, both copies sealed and identical", async () => {
    const specs = sizeClasses("push-keep");
    cleanupAfter(specs.map((s) => s.id));
    const hashes = new Map<string, Map<string, string>>();
    for (const s of specs) hashes.set(s.id, await putEntry(a.client, s));
    const before = await counters(a);

    await transferAll(a, b, specs, "push", true);

    for (const s of specs) {
      await expectSealedLike(a.client, s);
      await expectSealedLike(b.client, s);
      expect(await fetchHashes(a.client, s.id), s.id).toEqual(hashes.get(s.id));
      expect(await fetchHashes(b.client, s.id), s.id).toEqual(hashes.get(s.id));
    }
    expect((await counters(a)).transferred).toBe(before.transferred);
    await expectExactAccounting(a, "source");
    await expectExactAccounting(b, "target");
  });
});

describe("PULL", () => {
  it("pulls multi-part entries of 1 B, 64 KiB and up to 64 MiB in one batch (one handle, one scatter op): this daemon seals the same parts and contents, the target drops them as transferred", async () => {
    const specs = sizeClasses("pull");
    cleanupAfter(specs.map((s) => s.id));
    const hashes = new Map<string, Map<string, string>>();
    for (const s of specs) hashes.set(s.id, await putEntry(b.client, s));
    const total = specs.reduce((sum, s) => sum + entryBytes(s), 0);
    const [aBefore, bBefore] = await Promise.all([counters(a), counters(b)]);

    await transferAll(a, b, specs, "pull");

    for (const s of specs) {
      await expectSealedLike(a.client, s);
      expect(await fetchHashes(a.client, s.id), s.id).toEqual(hashes.get(s.id));
      await expectGoneAs(b, s.id, "transferred");
    }
    const [aAfter, bAfter] = await Promise.all([counters(a), counters(b)]);
    expect(bAfter.transferred - bBefore.transferred).toBe(specs.length);
    expect(aAfter.transferred - aBefore.transferred).toBe(0);
    expect(aAfter.bytesReceived - aBefore.bytesReceived).toBe(total);
    expect(bAfter.bytesSent - bBefore.bytesSent).toBe(total);
    expect(await expectExactAccounting(a, "puller")).toBe(total);
    expect(await expectExactAccounting(b, "source")).toBe(0);
  });

  it("keeps the target's copy with keepSource, both copies sealed and identical", async () => {
    const specs = sizeClasses("pull-keep");
    cleanupAfter(specs.map((s) => s.id));
    const hashes = new Map<string, Map<string, string>>();
    for (const s of specs) hashes.set(s.id, await putEntry(b.client, s));
    const before = await counters(b);

    await transferAll(a, b, specs, "pull", true);

    for (const s of specs) {
      await expectSealedLike(a.client, s);
      await expectSealedLike(b.client, s);
      expect(await fetchHashes(a.client, s.id), s.id).toEqual(hashes.get(s.id));
      expect(await fetchHashes(b.client, s.id), s.id).toEqual(hashes.get(s.id));
    }
    expect((await counters(b)).transferred).toBe(before.transferred);
    await expectExactAccounting(a, "puller");
    await expectExactAccounting(b, "source");
  });
});

describe("512 MiB entries", () => {
  it("PUSHes one 512 MiB entry a→b while PULLing another b→a, each sealed on arrival with the sha256 it left with", async () => {
    // Two contents, each verified where it never was before: a no-op transfer cannot pass
    // for a good one by reusing an extent that still holds the same bytes.
    const pushed: EntrySpec = { id: "big-push-512m", parts: [{ name: "kv", size: 512 * MiB, seed: "big-push" }] };
    const pulled: EntrySpec = { id: "big-pull-512m", parts: [{ name: "kv", size: 512 * MiB, seed: "big-pull" }] };
    cleanupAfter([pushed.id, pulled.id]);
    const want = new Map<string, string>();
    for (const [d, spec] of [[a, pushed], [b, pulled]] as const) {
      const data = seededBytes(512 * MiB, spec.parts[0]!.seed);
      want.set(spec.id, digest(data));
      await d.client.putStream(spec.id, "kv", data, { seal: true, timeoutMs: 60_000 });
    }

    const [push, pull] = await Promise.all([
      a.client.batchTransfer([pushed.id], b.peerAddress, "push"),
      a.client.batchTransfer([pulled.id], b.peerAddress, "pull"),
    ]);

    expectAllOk([...push.results, ...pull.results]);
    expect([push.results[0]!.bytes, pull.results[0]!.bytes]).toEqual([512 * MiB, 512 * MiB]);
    for (const [from, to, spec] of [[a, b, pushed], [b, a, pulled]] as const) {
      await expectGoneAs(from, spec.id, "transferred");
      await expectSealedLike(to.client, spec);
      const got = await to.client.getStream(spec.id, { waitMs: 0, chunkSize: 4 * MiB, timeoutMs: 60_000 });
      expect(digest(got.parts.get("kv")!), `${spec.id}: sha256 on arrival`).toBe(want.get(spec.id));
    }
    expect(await expectExactAccounting(a)).toBe(512 * MiB);
    expect(await expectExactAccounting(b)).toBe(512 * MiB);
  });
});

describe("Get with a source", () => {
  it("pulls an entry that is not here from the source, then serves it (Get)", async () => {
    const spec = entrySpec("get-src", [300 * KiB, 5, 2 * MiB]);
    cleanupAfter([spec.id]);
    const hashes = await putEntry(b.client, spec);
    await expect(a.client.stat(spec.id)).rejects.toBeInstanceOf(NotFoundError);

    const got = await a.client.get(spec.id, { source: b.peerAddress });
    expect(new Map([...got.parts].map(([n, d]) => [n, digest(d)]))).toEqual(hashes);
    await expectSealedLike(a.client, spec);
    await expectGoneAs(b, spec.id, "transferred");
    await expectExactAccounting(a);
    await expectExactAccounting(b);
  });

  it("pulls an entry that is not here from the source, then streams it (GetStream)", async () => {
    const spec = entrySpec("getstream-src", [9 * MiB, MiB + 1]);
    cleanupAfter([spec.id]);
    const hashes = await putEntry(b.client, spec);

    const got = await a.client.getStream(spec.id, { source: b.peerAddress, chunkSize: 256 * KiB });
    expect(new Map([...got.parts].map(([n, d]) => [n, digest(d)]))).toEqual(hashes);
    expect(got.entry.bytes).toBe(entryBytes(spec));
    await expectSealedLike(a.client, spec);
    await expectGoneAs(b, spec.id, "transferred");
  });

  it("serves several concurrent Gets with the same source from one pull, every one of them the data", async () => {
    const spec = entrySpec("get-src-many", [3 * MiB, 77]);
    cleanupAfter([spec.id]);
    const hashes = await putEntry(b.client, spec);
    const gets = await Promise.all(Array.from({ length: 5 }, () => a.client.get(spec.id, { source: b.peerAddress })));
    for (const got of gets) expect(new Map([...got.parts].map(([n, d]) => [n, digest(d)]))).toEqual(hashes);
    expect((await counters(b)).transferred).toBeGreaterThanOrEqual(1);
    await expectGoneAs(b, spec.id, "transferred");
    await expectExactAccounting(a);
  });

  it("serves the local copy of an entry that is here and leaves the source's copy alone", async () => {
    const id = "get-local";
    cleanupAfter([id]);
    const local = seededBytes(64 * KiB, "local");
    const remote = seededBytes(64 * KiB, "remote");
    await a.client.put(id, "p", local, { seal: true });
    await b.client.put(id, "p", remote, { seal: true });

    const got = await a.client.get(id, { source: b.peerAddress });
    expect(digest(got.parts.get("p")!)).toBe(digest(local));
    const still = await b.client.get(id, { waitMs: 0 });
    expect(digest(still.parts.get("p")!)).toBe(digest(remote));
  });
});

describe("a peer that restarts on the same peer address", () => {
  it("is greeted afresh after a failure, so transfers reach its new data port", async () => {
    const first = await startPeerDaemon({ bufferSize: "64MiB" });
    const peerPort = first.peerAddress.split(":").pop()!;
    const spec = entrySpec("restart-1", [MiB]);
    cleanupAfter([spec.id, "restart-2"]);
    await putEntry(a.client, spec);
    expectAllOk((await a.client.batchTransfer([spec.id], first.peerAddress, "push")).results);
    expect(await first.stop()).toBe(0);

    const second = await startPeerDaemon({ bufferSize: "64MiB", args: ["--peer-listen", `127.0.0.1:${peerPort}`] });
    onTestFinished(async () => void (await second.stop()));
    if (!RDMA) expect(second.dataAddress).not.toBe(first.dataAddress); // over rdma both are 127.0.0.1:0
    const next = entrySpec("restart-2", [MiB]);
    const hashes = await putEntry(a.client, next);
    // The first attempt may still aim at the old data port and fail UNAVAILABLE; the retry must not.
    const attempt = await a.client.batchTransfer([next.id], second.peerAddress, "push");
    if (attempt.results[0]!.code !== 0) {
      expect(attempt.results[0]!.code).toBe(status.UNAVAILABLE);
      expectAllOk((await a.client.batchTransfer([next.id], second.peerAddress, "push")).results);
    }
    const got = await second.client.get(next.id, { waitMs: 0 });
    expect(digest(got.parts.get(next.parts[0]!.name)!)).toBe(hashes.get(next.parts[0]!.name));
  });
});

describe("a full batch", () => {
  it("moves a batch of exactly 4096 entries in one PUSH, one result per id in request order", async () => {
    const ids = Array.from({ length: 4096 }, (_, i) => `full-${String(i).padStart(4, "0")}`);
    const content = (id: string) => seededBytes(1 * KiB + (id.charCodeAt(id.length - 1) % 7), id);
    cleanupAfter(ids);
    for (const group of chunks(ids, 64)) {
      await Promise.all(group.map((id) => a.client.put(id, "p", content(id), { seal: true })));
    }
    // Reversed, so the results' order is the request's and not the store's.
    const order = [...ids].reverse();
    const res = await a.client.batchTransfer(order, b.peerAddress, "push", { timeoutMs: 30_000 });
    expectAllOk(res.results);
    expect(res.results.map((r) => r.transferId)).toEqual(order);
    expect(res.results.map((r) => r.bytes)).toEqual(order.map((id) => content(id).length));
    for (const id of [ids[0]!, ids[1234]!, ids[4095]!]) {
      const got = await b.client.get(id, { waitMs: 0 });
      expect(digest(got.parts.get("p")!), id).toBe(digest(content(id)));
    }
    expect(await expectExactAccounting(a)).toBe(0);
    expect(await expectExactAccounting(b)).toBe(ids.reduce((sum, id) => sum + content(id).length, 0));
  });
});

describe("requests refused as a whole", () => {
  const call = (req: Partial<BatchTransferRequest>) =>
    rawUnary<BatchTransferResponse>((md, o, cb) =>
      a.client.raw.batchTransfer(
        BatchTransferRequest.create({ transferIds: ["x"], target: b.peerAddress, mode: TransferMode.TRANSFER_MODE_PUSH, ...req }),
        md,
        o,
        cb,
      ),
    );

  const cases: [string, () => Partial<BatchTransferRequest>, RegExp][] = [
    ["no ids", () => ({ transferIds: [] }), /^transfer_ids: /],
    ["4097 ids", () => ({ transferIds: Array.from({ length: 4097 }, (_, i) => `many-${i}`) }), /^transfer_ids: .*4096/],
    ["an id named twice", () => ({ transferIds: ["dup-a", "dup-b", "dup-a"] }), /^transfer_ids\[2\]: .*dup-a/],
    ["an empty id", () => ({ transferIds: ["ok", ""] }), /^transfer_ids\[1\]: /],
    ["an id with a space", () => ({ transferIds: ["has space"] }), /^transfer_ids\[0\]: /],
    ["an empty target", () => ({ target: "" }), /^target: /],
    ["a target with a space", () => ({ target: "no such node" }), /^target: /],
    ["a target with a port above 65535", () => ({ target: "127.0.0.1:70000" }), /^target: /],
    ["a URL as target", () => ({ target: `http://${b.peerAddress}` }), /^target: /],
    ["mode unspecified", () => ({ mode: TransferMode.TRANSFER_MODE_UNSPECIFIED }), /^mode: /],
    ["a negative deadline", () => ({ deadlineMs: -5 }), /^deadline_ms: /],
    ["a zero lease", () => ({ leaseTtlMs: 0 }), /^lease_ttl_ms: /],
  ];

  it.each(cases)("refuses %s with INVALID_ARGUMENT naming the field", async (_name, req, details) => {
    const before = await Promise.all([a.client.serverInfo(), b.client.serverInfo()]);
    expectStatus(await call(req()), status.INVALID_ARGUMENT, details);
    const after = await Promise.all([a.client.serverInfo(), b.client.serverInfo()]);
    expect(after.map((i) => i.bytesUsed)).toEqual(before.map((i) => i.bytesUsed));
  });
});

describe("1,000 concurrent transfers", () => {
  it("moves 1,000 entries of 1 KiB to 2 MiB in 10 batches in flight at once, half PUSH half PULL, contents intact, accounting exact", async () => {
    const N = 1000;
    const BATCH = 100;
    // Log-uniform sizes from 1 KiB to 2 MiB, two parts each (k and v), seeded.
    let x = 0x9e3779b9;
    const rand = () => {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      return (x >>> 0) / 2 ** 32;
    };
    const specs: EntrySpec[] = [];
    cleanupAfter(Array.from({ length: N }, (_, i) => `many-${i}`));
    for (let i = 0; i < N; i++) {
      const size = Math.round(KiB * 2 ** (11 * rand()));
      const k = Math.max(1, Math.floor(size * rand()));
      specs.push({
        id: `many-${i}`,
        parts: [
          { name: "k", size: k, seed: `many-${i}/k` },
          { name: "v", size: Math.max(1, size - k), seed: `many-${i}/v` },
        ],
      });
    }
    // Batches 0-4 are initiated by a, 5-9 by b; even ones push, odd ones pull: both daemons
    // initiate and serve both ways at once.
    const batches = Array.from({ length: N / BATCH }, (_, i) => specs.slice(i * BATCH, (i + 1) * BATCH));
    const plan = batches.map((batch, i) => {
      const initiator = i < 5 ? a : b;
      const other = initiator === a ? b : a;
      const mode: "push" | "pull" = i % 2 === 0 ? "push" : "pull";
      const source = mode === "push" ? initiator : other;
      const dest = mode === "push" ? other : initiator;
      return { batch, initiator, other, mode, source, dest };
    });
    const hashes = new Map<string, Map<string, string>>();
    const puts = plan.flatMap((p) => p.batch.map((s) => ({ s, source: p.source })));
    for (let i = 0; i < puts.length; i += 16) {
      await Promise.all(puts.slice(i, i + 16).map(async ({ s, source }) => hashes.set(s.id, await putEntry(source.client, s))));
    }
    const [aBefore, bBefore] = await Promise.all([expectExactAccounting(a), expectExactAccounting(b)]);

    const responses = await Promise.all(
      plan.map((p) => p.initiator.client.batchTransfer(p.batch.map((s) => s.id), p.other.peerAddress, p.mode, { timeoutMs: 60_000 })),
    );

    const all = responses.flatMap((r) => r.results);
    expect(all).toHaveLength(N);
    expectAllOk(all);
    responses.forEach((r, i) => expect(r.results.map((res) => res.transferId)).toEqual(plan[i]!.batch.map((s) => s.id)));
    for (const p of plan) {
      for (const group of chunks(p.batch, 20)) {
        await Promise.all(
          group.map(async (s) => {
            const got = await p.dest.client.get(s.id, { waitMs: 0 });
            const seen = new Map([...got.parts].map(([n, d]) => [n, digest(d)]));
            expect(seen, s.id).toEqual(hashes.get(s.id));
            await expect(p.source.client.stat(s.id), s.id).rejects.toBeInstanceOf(NotFoundError);
          }),
        );
      }
    }
    // Bytes moved between the daemons, not created or lost: the totals are unchanged.
    const [aAfter, bAfter] = await Promise.all([expectExactAccounting(a), expectExactAccounting(b)]);
    expect(aAfter + bAfter).toBe(aBefore + bBefore);
    const movedToA = plan.filter((p) => p.dest === a).flatMap((p) => p.batch).reduce((sum, s) => sum + entryBytes(s), 0);
    const movedToB = plan.filter((p) => p.dest === b).flatMap((p) => p.batch).reduce((sum, s) => sum + entryBytes(s), 0);
    expect(aAfter).toBe(aBefore - movedToB + movedToA);
    await releaseEverywhere(specs.map((s) => s.id));
    expect(await expectExactAccounting(a)).toBe(0);
    expect(await expectExactAccounting(b)).toBe(0);
  });
});

// Ids the source does not hold, on a pair of their own with a 3 s transfer deadline: a
// daemon that waits for such an id instead of answering NOT_FOUND holds calls (and, for a
// pull, the source's leases) until that deadline, which must not leak into the tests above.
describe("ids the source does not hold", () => {
  let x: PeerDaemon;
  let y: PeerDaemon;

  beforeAll(async () => {
    [x, y] = await Promise.all([
      startPeerDaemon({ bufferSize: "64MiB", transferDeadlineMs: 3_000 }),
      startPeerDaemon({ bufferSize: "64MiB", transferDeadlineMs: 3_000 }),
    ]);
  });

  afterAll(async () => {
    // No exit-code check here: a daemon still holding a reservation for a peer is the case
    // of transfer-faults.test.ts's "shutdown while holding reservations" tests.
    await Promise.all([x?.stop(), y?.stop()]);
  });

  it("a Get with a source that lacks the entry and wait_ms 0 fails NOT_FOUND at once, leaving nothing here", async () => {
    const before = (await x.client.serverInfo()).bytesUsed;
    const t0 = Date.now();
    const err = await rejection(x.client.get("get-nowhere", { source: y.peerAddress, waitMs: 0, timeoutMs: 5_000 }));
    expect(err, `${err.name} after ${Date.now() - t0} ms: ${err.message}`).toBeInstanceOf(NotFoundError);
    await expect(x.client.stat("get-nowhere")).rejects.toBeInstanceOf(NotFoundError);
    expect((await x.client.serverInfo()).bytesUsed).toBe(before);
  });

  it.each(["push", "pull"] as const)(
    "a %s batch naming an id the source lacks fails that id NOT_FOUND and moves the others",
    async (mode) => {
      const source = mode === "push" ? x : y;
      const dest = mode === "push" ? y : x;
      const specs = [entrySpec(`${mode}-present-1`, [10 * KiB]), entrySpec(`${mode}-present-2`, [20 * KiB, 1])];
      onTestFinished(() => releaseOn([x, y], specs.map((s) => s.id)));
      for (const s of specs) await putEntry(source.client, s);
      const ids = [specs[0]!.id, `${mode}-absent`, specs[1]!.id];

      const t0 = Date.now();
      const res = await x.client.batchTransfer(ids, y.peerAddress, mode, { deadlineMs: 2_000, timeoutMs: 15_000 });

      expect(res.results.map((r) => r.transferId)).toEqual(ids);
      expect(
        res.results.map((r) => status[r.code]),
        `after ${Date.now() - t0} ms: ${JSON.stringify(res.results)}`,
      ).toEqual(["OK", "NOT_FOUND", "OK"]);
      expect(res.results[1]!.message).toMatch(new RegExp(`${mode}-absent`));
      expect(res.results[1]!.bytes).toBe(0);
      for (const s of specs) await expectSealedLike(dest.client, s);
      await expect(dest.client.stat(`${mode}-absent`)).rejects.toBeInstanceOf(NotFoundError);
      await expectExactAccounting(x);
      await expectExactAccounting(y);
    },
  );
});

function chunks<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}
