// Round trips through a real daemon: single parts of every size class, multi-part
// entries, waiting reads, consuming reads, List paging and the server's own report.
import { randomBytes } from "node:crypto";
import type { ClientReadableStream } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NotFoundError } from "../../src/errors.js";
import { EntryState, GetStreamRequest, type GetStreamResponse } from "../../src/gen/kvferry/v1/kvferry.js";
import { KvferryClient } from "../../src/client/client.js";
import { poolFootprint } from "../../src/engine/pool-memory.js";
import {
  MiB,
  expectSameBytes,
  listAll,
  pattern,
  rejection,
  sha256,
  sleep,
  startDaemon,
  type TestDaemon,
} from "../helpers/daemon.js";

const BUFFER = 256 * MiB;
const GET_WAIT_MS = 600;

let d: TestDaemon;
let c: KvferryClient;

beforeAll(async () => {
  d = await startDaemon(["--kv-buffer-size", "256MiB", "--get-wait-ms", String(GET_WAIT_MS)]);
  c = d.client;
});

afterAll(async () => {
  expect(await d?.stop()).toBe(0);
});

function settled<T>(results: PromiseSettledResult<T>[]) {
  const got = results.filter((r): r is PromiseFulfilledResult<T> => r.status === "fulfilled").map((r) => r.value);
  const failed = results.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => r.reason);
  return { got, failed };
}

describe("single parts", () => {
  it("round-trips a 1-byte part through unary Put and Get", async () => {
    const data = Buffer.from([0xa5]);
    const put = await c.put("rt-1b", "p", data, { seal: true });
    expect(put.bytes).toBe(1);
    expect(put.state).toBe(EntryState.ENTRY_STATE_SEALED);
    const got = await c.get("rt-1b", { waitMs: 0 });
    expect([...got.parts.keys()]).toEqual(["p"]);
    expectSameBytes(got.parts.get("p"), data);
  });

  it("round-trips a 1 MiB part through unary Put and Get, and through GetStream in 64 KiB chunks", async () => {
    const data = randomBytes(MiB);
    await c.put("rt-1m", "p", data, { seal: true });
    const unary = await c.get("rt-1m", { waitMs: 0 });
    expect(sha256(unary.parts.get("p")!)).toBe(sha256(data));
    const streamed = await c.getStream("rt-1m", { waitMs: 0, chunkSize: 64 * 1024 });
    expect(sha256(streamed.parts.get("p")!)).toBe(sha256(data));
  });

  it("round-trips a 64 MiB part through PutStream and GetStream (sha256 equal)", async () => {
    const data = randomBytes(64 * MiB);
    const digest = sha256(data);
    const put = await c.putStream("rt-64m", "kv", data, { seal: true });
    expect(put.bytes).toBe(64 * MiB);
    expect(put.parts).toEqual([{ name: "kv", size: 64 * MiB, complete: true }]);
    const got = await c.getStream("rt-64m", { waitMs: 0 });
    expect(got.parts.get("kv")!.length).toBe(64 * MiB);
    expect(sha256(got.parts.get("kv")!)).toBe(digest);
    await c.release("rt-64m");
  });

  it("streams each part's chunks in order and contiguous, with the entry on the first message only", async () => {
    const a = pattern(300_000, 1);
    const b = pattern(70_000, 2);
    await c.put("rt-chunks", "a", a);
    await c.put("rt-chunks", "b", b, { seal: true });
    const stream: ClientReadableStream<GetStreamResponse> = c.raw.getStream(
      GetStreamRequest.create({ transferId: "rt-chunks", waitMs: 0, chunkSize: 65_536 }),
    );
    const messages: GetStreamResponse[] = [];
    await new Promise<void>((resolve, reject) => {
      stream.on("data", (m: GetStreamResponse) => messages.push(m));
      stream.on("error", reject);
      stream.on("end", resolve);
    });
    expect(messages[0]!.entry?.transferId).toBe("rt-chunks");
    expect(messages.slice(1).every((m) => m.entry === undefined)).toBe(true);
    for (const [name, data] of [["a", a], ["b", b]] as const) {
      const mine = messages.filter((m) => m.part === name);
      expect(mine.length).toBe(Math.ceil(data.length / 65_536));
      let offset = 0;
      for (const m of mine) {
        expect(m.partSize).toBe(data.length);
        expect(m.offset).toBe(offset);
        expect(m.chunk.length).toBeLessThanOrEqual(65_536);
        offset += m.chunk.length;
      }
      expectSameBytes(Buffer.concat(mine.map((m) => m.chunk)), data, name);
    }
    // Each part's chunks are contiguous: once b starts, no chunk of a follows.
    const firstB = messages.findIndex((m) => m.part === "b");
    expect(messages.slice(firstB).every((m) => m.part === "b")).toBe(true);
  });
});

describe("multi-part entries", () => {
  const layers = Array.from({ length: 8 }, (_, i) => [`layer.${i}`, pattern(32 * 1024 + i * 1000, 100 + i)] as const);

  beforeAll(async () => {
    for (const [name, data] of layers) await c.put("rt-layers", name, data);
    const sealed = await c.seal("rt-layers");
    expect(sealed.state).toBe(EntryState.ENTRY_STATE_SEALED);
  });

  it("reports every layer, its size and completeness once sealed", async () => {
    const info = await c.stat("rt-layers");
    expect(info.state).toBe(EntryState.ENTRY_STATE_SEALED);
    expect(info.parts).toEqual(layers.map(([name, data]) => ({ name, size: data.length, complete: true })));
    expect(info.bytes).toBe(layers.reduce((s, [, data]) => s + data.length, 0));
  });

  it("reads back only the named parts", async () => {
    const got = await c.get("rt-layers", { parts: ["layer.5", "layer.2"], waitMs: 0 });
    expect([...got.parts.keys()].sort()).toEqual(["layer.2", "layer.5"]);
    expectSameBytes(got.parts.get("layer.5"), layers[5]![1]);
    expectSameBytes(got.parts.get("layer.2"), layers[2]![1]);
  });

  it("reads back every part with its name when no part is named, unary and streamed", async () => {
    for (const got of [await c.get("rt-layers", { waitMs: 0 }), await c.getStream("rt-layers", { waitMs: 0 })]) {
      expect([...got.parts.keys()].sort()).toEqual(layers.map(([n]) => n).sort());
      for (const [name, data] of layers) expectSameBytes(got.parts.get(name), data, name);
    }
  });
});

describe("waiting reads", () => {
  it("returns a part that another connection puts while the Get waits", async () => {
    const other = d.newClient();
    await c.put("rt-wait", "layer.0", pattern(1000, 7));
    const data = pattern(4096, 8);
    const started = Date.now();
    const waiting = c.get("rt-wait", { parts: ["layer.1"], waitMs: 5000 });
    await sleep(200);
    await other.put("rt-wait", "layer.1", data);
    const got = await waiting;
    expectSameBytes(got.parts.get("layer.1"), data);
    // It waited for the put rather than failing at once.
    expect(Date.now() - started).toBeGreaterThanOrEqual(150);
  });

  it("returns every part once another connection seals the entry", async () => {
    const other = d.newClient();
    await c.put("rt-wait-seal", "a", pattern(10, 1));
    const waiting = c.get("rt-wait-seal", { waitMs: 5000 });
    await sleep(100);
    await other.put("rt-wait-seal", "b", pattern(20, 2));
    await other.seal("rt-wait-seal");
    const got = await waiting;
    expect(got.entry.state).toBe(EntryState.ENTRY_STATE_SEALED);
    expect([...got.parts.keys()].sort()).toEqual(["a", "b"]);
  });

  it("returns an entry that does not exist yet when another connection puts it while the Get waits", async () => {
    const other = d.newClient();
    const waiting = c.get("rt-not-yet", { parts: ["layer.0"], waitMs: 5000 });
    await sleep(150);
    await other.put("rt-not-yet", "layer.0", pattern(512, 5));
    expectSameBytes((await waiting).parts.get("layer.0"), pattern(512, 5));
  });

  it("does not wait with wait_ms 0: NOT_FOUND naming the missing part at once", async () => {
    await c.put("rt-nowait", "a", pattern(10, 1));
    const err = await rejection(c.get("rt-nowait", { parts: ["a", "b"], waitMs: 0 }));
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err.message).toMatch(/\bb\b/);
  });

  it("waits --get-wait-ms when the Get names no wait", async () => {
    await c.put("rt-default-wait", "a", pattern(10, 1));
    const started = Date.now();
    const err = await rejection(c.get("rt-default-wait", { parts: ["b"] }));
    expect(err.name).toBe("DeadlineExceededError");
    expect(err.message).toMatch(new RegExp(`${GET_WAIT_MS} ms`));
    expect(Date.now() - started).toBeGreaterThanOrEqual(GET_WAIT_MS - 20);
  });

  it("gives up with DEADLINE_EXCEEDED when the part does not come within wait_ms", async () => {
    await c.put("rt-never", "a", pattern(10, 1));
    const err = await rejection(c.get("rt-never", { parts: ["b"], waitMs: 200 }));
    expect(err.name).toBe("DeadlineExceededError");
  });
});

describe("consuming reads", () => {
  it("gives the data to exactly one of two concurrent consuming Gets; the other waits for the outcome and gets NOT_FOUND", async () => {
    const data = pattern(256 * 1024, 3);
    await c.put("rt-consume", "kv", data, { seal: true });
    const before = await c.serverInfo();
    const [c1, c2] = [d.newClient(), d.newClient()];
    const { got, failed } = settled(
      await Promise.allSettled([
        c1.get("rt-consume", { consume: true, waitMs: 5000 }),
        c2.get("rt-consume", { consume: true, waitMs: 5000 }),
      ]),
    );
    expect(got).toHaveLength(1);
    expectSameBytes(got[0]!.parts.get("kv"), data);
    expect(failed).toHaveLength(1);
    expect(failed[0]).toBeInstanceOf(NotFoundError);
    expect((failed[0] as NotFoundError).reason).toBe("consumed");

    const gone = await rejection(c.stat("rt-consume"));
    expect(gone).toBeInstanceOf(NotFoundError);
    expect(gone.message).toMatch(/consumed/);
    const after = await c.serverInfo();
    expect(after.counters!.consumed - before.counters!.consumed).toBe(1);
    expect(before.bytesUsed - after.bytesUsed).toBe(poolFootprint(data.length));
  });

  it("gives the data to exactly one of two consuming Gets parked until the seal", async () => {
    const data = pattern(64 * 1024, 4);
    await c.put("rt-consume-wait", "kv", data);
    const [c1, c2] = [d.newClient(), d.newClient()];
    const both = Promise.allSettled([
      c1.get("rt-consume-wait", { consume: true, waitMs: 5000 }),
      c2.get("rt-consume-wait", { consume: true, waitMs: 5000 }),
    ]);
    await sleep(150);
    await c.seal("rt-consume-wait");
    const { got, failed } = settled(await both);
    expect(got).toHaveLength(1);
    expectSameBytes(got[0]!.parts.get("kv"), data);
    expect(failed).toHaveLength(1);
    expect(failed[0]).toBeInstanceOf(NotFoundError);
    expect(await rejection(c.stat("rt-consume-wait"))).toBeInstanceOf(NotFoundError);
  });

  it("gives a streamed consuming read's data to one reader and frees the entry", async () => {
    const data = randomBytes(3 * MiB);
    await c.put("rt-consume-stream", "kv", data, { seal: true });
    const { got, failed } = settled(
      await Promise.allSettled([
        d.newClient().getStream("rt-consume-stream", { consume: true, waitMs: 5000 }),
        d.newClient().getStream("rt-consume-stream", { consume: true, waitMs: 5000 }),
      ]),
    );
    expect(got).toHaveLength(1);
    expect(sha256(got[0]!.parts.get("kv")!)).toBe(sha256(data));
    expect(failed).toHaveLength(1);
    expect(failed[0]).toBeInstanceOf(NotFoundError);
    const err = await rejection(c.stat("rt-consume-stream"));
    expect(err.reason).toBe("consumed");
  });

  it("frees the entry of every consuming GetStream that ran to its end, whatever its parts (grpc-js reports 'cancelled' after 'finish')", async () => {
    const shapes: [number, number][] = [[1, 3072], [2, 131072], [8, 3072], [33, 131072], [8, 131072], [2, 3072]];
    const stuck: string[] = [];
    for (const [round, [parts, size]] of [...shapes, ...shapes].entries()) {
      const id = `rt-consume-parts-${round}`;
      for (let p = 0; p < parts; p++) await c.put(id, `layer.${p}`, pattern(size, p), { seal: p === parts - 1 });
      const got = await c.getStream(id, { consume: true, waitMs: 0 });
      expect(got.parts.size).toBe(parts);
      const stat = await c.stat(id).then((e) => `${id} (${parts} × ${size} B) still there, readers ${e.readers}`, () => undefined);
      if (stat !== undefined) stuck.push(stat);
    }
    expect(stuck).toEqual([]);
  });
});

describe("List", () => {
  const ids = Array.from({ length: 7 }, (_, i) => `rt-list-${String(i).padStart(2, "0")}`);

  beforeAll(async () => {
    // Put them out of order; List pages in id order.
    for (const id of [...ids].reverse()) await c.put(id, "p", pattern(100, 9), { seal: id < "rt-list-04" });
  });

  it("pages through every entry in id order, each page at most page_size, the last with no token", async () => {
    const seen: string[] = [];
    let pageToken = "";
    let pages = 0;
    do {
      const page = await c.list({ pageSize: 3, pageToken });
      expect(page.entries.length).toBeLessThanOrEqual(3);
      expect(page.entries.length).toBeGreaterThan(0);
      seen.push(...page.entries.map((e) => e.transferId));
      pageToken = page.nextPageToken;
      pages++;
      expect(pages).toBeLessThan(100);
    } while (pageToken !== "");
    expect(seen).toEqual([...seen].sort());
    expect(new Set(seen).size).toBe(seen.length);
    expect(seen.filter((id) => id.startsWith("rt-list-"))).toEqual(ids);
    const info = await c.serverInfo();
    expect(seen.length).toBe(info.entries);
  });

  it("filters by state", async () => {
    const open = (await c.list({ pageSize: 1000, state: EntryState.ENTRY_STATE_OPEN })).entries;
    const sealed = (await c.list({ pageSize: 1000, state: EntryState.ENTRY_STATE_SEALED })).entries;
    expect(open.every((e) => e.state === EntryState.ENTRY_STATE_OPEN)).toBe(true);
    expect(sealed.every((e) => e.state === EntryState.ENTRY_STATE_SEALED)).toBe(true);
    expect(open.map((e) => e.transferId).filter((id) => id.startsWith("rt-list-"))).toEqual(ids.slice(4));
    expect(sealed.map((e) => e.transferId).filter((id) => id.startsWith("rt-list-"))).toEqual(ids.slice(0, 4));
  });

  it("pages a state-filtered listing without an empty last page", async () => {
    const page1 = await c.list({ pageSize: 2, state: EntryState.ENTRY_STATE_OPEN });
    const all = (await c.list({ pageSize: 1000, state: EntryState.ENTRY_STATE_OPEN })).entries;
    let seen = page1.entries.length;
    let token = page1.nextPageToken;
    while (token !== "") {
      const page = await c.list({ pageSize: 2, pageToken: token, state: EntryState.ENTRY_STATE_OPEN });
      expect(page.entries.length).toBeGreaterThan(0);
      seen += page.entries.length;
      token = page.nextPageToken;
    }
    expect(seen).toBe(all.length);
  });
});

describe("GetServerInfo", () => {
  it("reports version, node id, pool capacity as --kv-buffer-size, bytes used and entries", async () => {
    const info = await c.serverInfo();
    expect(info.version).toMatch(/^\d+\.\d+\.\d+/);
    expect(info.nodeId).toMatch(new RegExp(`:${d.port}$`));
    expect(info.uptimeMs).toBeGreaterThan(0);
    expect(info.poolCapacity).toBe(BUFFER);
    const entries = await listAll(c);
    expect(info.entries).toBe(entries.length);
    // Parts take whole units of the pool's allocator: bytes used counts them rounded.
    expect(info.bytesUsed).toBe(entries.reduce((s, e) => s + e.parts.reduce((t, p) => t + poolFootprint(p.size), 0), 0));
  });

  it("counts puts and gets, and bytes used follows puts and releases", async () => {
    const before = await c.serverInfo();
    await c.put("rt-count", "a", pattern(1000, 1));
    await c.put("rt-count", "b", pattern(2000, 2), { seal: true });
    await c.get("rt-count", { waitMs: 0 });
    const mid = await c.serverInfo();
    expect(mid.counters!.puts - before.counters!.puts).toBe(2);
    expect(mid.counters!.gets - before.counters!.gets).toBe(1);
    expect(mid.bytesUsed - before.bytesUsed).toBe(poolFootprint(1000) + poolFootprint(2000));
    expect(mid.entries - before.entries).toBe(1);
    expect(await c.release("rt-count")).toBe(3000);
    const after = await c.serverInfo();
    expect(after.counters!.releases - mid.counters!.releases).toBe(1);
    expect(after.bytesUsed).toBe(before.bytesUsed);
    expect(after.entries).toBe(before.entries);
    expect(after.counters!.evictions).toBe(0);
  });
});
