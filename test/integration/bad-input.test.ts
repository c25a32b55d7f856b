// Requests a daemon must refuse, sent through the raw grpc-js client so that nothing in
// the typed client gets in the way, and the daemon's state after all of them.
import { randomBytes } from "node:crypto";
import { Metadata, status, type ClientReadableStream, type ServiceError } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { poolFootprint } from "../../src/engine/pool-memory.js";
import {
  EntryState,
  GetRequest,
  GetStreamRequest,
  ListRequest,
  PutRequest,
  type GetStreamResponse,
  type KvFerryClient,
} from "../../src/gen/kvferry/v1/kvferry.js";
import {
  MiB,
  expectSameBytes,
  expectStatus,
  listAll,
  pattern,
  rawPutStream,
  rawUnary,
  sha256,
  startDaemon,
  type Outcome,
  type TestDaemon,
} from "../helpers/daemon.js";

/** Defaults, but a 32 MiB buffer and a 1 s default wait. */
let d: TestDaemon;
/** max_message_bytes 1 MiB (from a config file). */
let tight: TestDaemon;
let raw: KvFerryClient;

beforeAll(async () => {
  [d, tight] = await Promise.all([
    startDaemon(["--kv-buffer-size", "32MiB", "--get-wait-ms", "1000"]),
    startDaemon(["--kv-buffer-size", "16MiB", "--get-wait-ms", "1000"], { config: { max_message_bytes: 1048576 } }),
  ]);
  raw = d.client.raw;
});

afterAll(async () => {
  const codes = await Promise.all([d?.stop(), tight?.stop()]);
  expect(codes).toEqual([0, 0]);
});

const put = (r: KvFerryClient, transferId: string, part: string, data: Buffer, extra: { seal?: boolean; leaseTtlMs?: number } = {}) =>
  rawUnary<unknown>((md, o, cb) => r.put(PutRequest.create({ transferId, part, data, seal: extra.seal ?? false, leaseTtlMs: extra.leaseTtlMs }), md, o, cb));
const get = (r: KvFerryClient, transferId: string, extra: { parts?: string[]; waitMs?: number; consume?: boolean } = {}) =>
  rawUnary<{ parts: { name: string; data: Buffer }[] }>((md, o, cb) =>
    r.get(GetRequest.create({ transferId, parts: extra.parts ?? [], consume: extra.consume ?? false, waitMs: extra.waitMs ?? 0 }), md, o, cb),
  );

/** Runs a GetStream to its end; the outcome carries every message. */
function getStream(r: KvFerryClient, req: Partial<GetStreamRequest> & { transferId: string }): Promise<Outcome<GetStreamResponse[]>> {
  return new Promise((resolve) => {
    const stream: ClientReadableStream<GetStreamResponse> = r.getStream(
      GetStreamRequest.create({ waitMs: 0, ...req }),
      new Metadata(),
      { deadline: Date.now() + 10_000 },
    );
    const messages: GetStreamResponse[] = [];
    stream.on("data", (m: GetStreamResponse) => messages.push(m));
    stream.on("error", (error: ServiceError) => resolve({ ok: false, error }));
    stream.on("end", () => resolve({ ok: true, value: messages }));
  });
}

async function bytesUsed(t: TestDaemon = d): Promise<number> {
  return (await t.client.serverInfo()).bytesUsed;
}

const BAD_IDS: [string, string][] = [
  ["empty", ""],
  ["300 characters", "x".repeat(300)],
  ["a space", "req 1"],
  ["a newline", "req\n1"],
  ["a tab", "req\t1"],
  ["non-ASCII", "requête-1"],
  ["CJK", "請求"],
];

describe("transfer_id", () => {
  for (const [what, id] of BAD_IDS) {
    it(`refuses a transfer_id with ${what} in every call, naming transfer_id`, async () => {
      const outcomes: [string, Outcome<unknown>][] = [
        ["Put", await put(raw, id, "p", Buffer.from("x"))],
        ["PutStream", await rawPutStream(raw, [{ header: { transferId: id, part: "p", size: 1, seal: false } }, { chunk: Buffer.from("x") }])],
        ["Seal", await rawUnary((md, o, cb) => raw.seal({ transferId: id }, md, o, cb))],
        ["Release", await rawUnary((md, o, cb) => raw.release({ transferId: id }, md, o, cb))],
        ["Stat", await rawUnary((md, o, cb) => raw.stat({ transferId: id }, md, o, cb))],
        ["Get", await get(raw, id, { waitMs: 500 })],
        ["GetStream", await getStream(raw, { transferId: id, waitMs: 500 })],
      ];
      for (const [method, outcome] of outcomes) {
        const err = expectStatus(outcome, status.INVALID_ARGUMENT);
        expect(err.details, method).toMatch(/transfer_id/);
      }
    });
  }

  it("accepts a 256-character transfer_id and refuses 257", async () => {
    expect((await put(raw, "i".repeat(256), "p", Buffer.from("x"), { seal: true })).ok).toBe(true);
    expectStatus(await put(raw, "i".repeat(257), "p", Buffer.from("x")), status.INVALID_ARGUMENT, /transfer_id.*257/);
    await d.client.release("i".repeat(256));
  });
});

describe("part names", () => {
  const BAD_PARTS: [string, string][] = [
    ["empty", ""],
    ["a space", "layer 1"],
    ["a newline", "layer\n1"],
    ["129 characters", "p".repeat(129)],
    ["non-ASCII", "schicht-ü"],
  ];

  for (const [what, part] of BAD_PARTS) {
    it(`refuses a part name with ${what} in Put, PutStream, Get and GetStream, naming part`, async () => {
      await d.client.put("bad-parts", "ok", Buffer.from("x"), { seal: true }).catch(() => undefined);
      const outcomes: [string, Outcome<unknown>][] = [
        ["Put", await put(raw, "bad-parts-new", part, Buffer.from("x"))],
        ["PutStream", await rawPutStream(raw, [{ header: { transferId: "bad-parts-new", part, size: 1, seal: false } }, { chunk: Buffer.from("x") }])],
        ["Get", await get(raw, "bad-parts", { parts: [part] })],
        ["GetStream", await getStream(raw, { transferId: "bad-parts", parts: [part] })],
      ];
      for (const [method, outcome] of outcomes) {
        const err = expectStatus(outcome, status.INVALID_ARGUMENT);
        expect(err.details, method).toMatch(/part/);
      }
      expectStatus(await rawUnary((md, o, cb) => raw.stat({ transferId: "bad-parts-new" }, md, o, cb)), status.NOT_FOUND);
    });
  }

  it("refuses a Get naming one part twice", async () => {
    expectStatus(await get(raw, "bad-parts", { parts: ["ok", "ok"] }), status.INVALID_ARGUMENT, /parts\[1\]/);
  });

  it("answers a Get for a part a sealed entry lacks with NOT_FOUND at once, not after wait_ms", async () => {
    await d.client.put("sealed-lacks", "a", Buffer.from("x"), { seal: true });
    expectStatus(await get(raw, "sealed-lacks", { parts: ["a", "b"], waitMs: 5000 }), status.NOT_FOUND, /b/);
    expectStatus(await getStream(raw, { transferId: "sealed-lacks", parts: ["zz"], waitMs: 5000 }), status.NOT_FOUND, /zz/);
  });
});

describe("leases and waits", () => {
  for (const ttl of [0, -5, 7 * 24 * 3600 * 1000 + 1]) {
    it(`refuses lease_ttl_ms ${ttl} in Put and PutStream, naming lease_ttl_ms`, async () => {
      expectStatus(await put(raw, "ttl", "p", Buffer.from("x"), { leaseTtlMs: ttl }), status.INVALID_ARGUMENT, /lease_ttl_ms/);
      expectStatus(
        await rawPutStream(raw, [{ header: { transferId: "ttl", part: "p", size: 1, seal: false, leaseTtlMs: ttl } }, { chunk: Buffer.from("x") }]),
        status.INVALID_ARGUMENT,
        /lease_ttl_ms/,
      );
      expectStatus(await rawUnary((md, o, cb) => raw.stat({ transferId: "ttl" }, md, o, cb)), status.NOT_FOUND);
    });
  }

  it("refuses wait_ms -1 in Get and GetStream, naming wait_ms", async () => {
    await d.client.put("waits", "a", Buffer.from("x"), { seal: true });
    expectStatus(await get(raw, "waits", { waitMs: -1 }), status.INVALID_ARGUMENT, /wait_ms/);
    expectStatus(await getStream(raw, { transferId: "waits", waitMs: -1 }), status.INVALID_ARGUMENT, /wait_ms/);
  });
});

describe("entry state", () => {
  it("refuses a Put or PutStream to a sealed entry with FAILED_PRECONDITION", async () => {
    await d.client.put("sealed-entry", "a", Buffer.from("first"), { seal: true });
    expectStatus(await put(raw, "sealed-entry", "b", Buffer.from("x")), status.FAILED_PRECONDITION, /sealed/);
    expectStatus(
      await rawPutStream(raw, [{ header: { transferId: "sealed-entry", part: "b", size: 1, seal: false } }, { chunk: Buffer.from("x") }]),
      status.FAILED_PRECONDITION,
    );
    expect((await d.client.stat("sealed-entry")).parts.map((p) => p.name)).toEqual(["a"]);
  });

  it("refuses a second part of the same name with ALREADY_EXISTS and keeps the first one's bytes", async () => {
    await d.client.put("dup", "a", Buffer.from("first"));
    expectStatus(await put(raw, "dup", "a", Buffer.from("second!")), status.ALREADY_EXISTS, /a/);
    expectStatus(
      await rawPutStream(raw, [{ header: { transferId: "dup", part: "a", size: 1, seal: false } }, { chunk: Buffer.from("x") }]),
      status.ALREADY_EXISTS,
    );
    const got = await get(raw, "dup", { parts: ["a"] });
    expect(got.ok && got.value.parts[0]!.data.toString()).toBe("first");
    expect((await d.client.stat("dup")).bytes).toBe(5);
  });

  it("answers Seal, Stat and Release of an unknown entry with NOT_FOUND", async () => {
    expectStatus(await rawUnary((md, o, cb) => raw.seal({ transferId: "never-was" }, md, o, cb)), status.NOT_FOUND);
    expectStatus(await rawUnary((md, o, cb) => raw.stat({ transferId: "never-was" }, md, o, cb)), status.NOT_FOUND);
    expectStatus(await rawUnary((md, o, cb) => raw.release({ transferId: "never-was" }, md, o, cb)), status.NOT_FOUND);
  });
});

describe("List", () => {
  const list = (req: { pageSize?: number; pageToken?: string; state?: number }) =>
    rawUnary((md, o, cb) => raw.list(ListRequest.create(req), md, o, cb));

  it("refuses page_size 5000 and -1, naming page_size", async () => {
    expectStatus(await list({ pageSize: 5000 }), status.INVALID_ARGUMENT, /page_size/);
    expectStatus(await list({ pageSize: -1 }), status.INVALID_ARGUMENT, /page_size/);
  });

  it("refuses an unknown state", async () => {
    expectStatus(await list({ state: 9 }), status.INVALID_ARGUMENT, /state/);
  });

  it("refuses a page_token that is not base64url, naming page_token", async () => {
    expectStatus(await list({ pageToken: "!!!" }), status.INVALID_ARGUMENT, /page_token/);
  });

  it("refuses base64url-looking page_tokens it never issued, naming page_token", async () => {
    for (const token of ["garbage", "zzzz", "not-a-token"]) {
      const outcome = await list({ pageToken: token });
      expect(outcome.ok, `page_token ${JSON.stringify(token)} was accepted`).toBe(false);
      expectStatus(outcome, status.INVALID_ARGUMENT, /page_token/);
    }
  });
});

describe("GetStream chunk_size", () => {
  it("refuses chunk_size above 4 MiB and below 0, naming chunk_size", async () => {
    await d.client.put("chunky", "a", Buffer.from("x"), { seal: true });
    expectStatus(await getStream(raw, { transferId: "chunky", chunkSize: 4 * MiB + 1 }), status.INVALID_ARGUMENT, /chunk_size/);
    expectStatus(await getStream(raw, { transferId: "chunky", chunkSize: -1 }), status.INVALID_ARGUMENT, /chunk_size/);
  });
});

describe("PutStream framing", () => {
  it("refuses a stream whose first message is a chunk, naming header", async () => {
    const before = await bytesUsed();
    expectStatus(await rawPutStream(raw, [{ chunk: Buffer.from("abc") }]), status.INVALID_ARGUMENT, /header/);
    expectStatus(await rawPutStream(raw, [{}]), status.INVALID_ARGUMENT, /header/);
    expectStatus(await rawPutStream(raw, []), status.INVALID_ARGUMENT, /header/);
    expect(await bytesUsed()).toBe(before);
  });

  it("refuses a second header, and gives back the room the first one reserved", async () => {
    const before = await bytesUsed();
    const header = { transferId: "two-headers", part: "p", size: 1000, seal: false };
    expectStatus(await rawPutStream(raw, [{ header }, { header }]), status.INVALID_ARGUMENT, /header/);
    expect(await bytesUsed()).toBe(before);
  });

  it("refuses chunks that exceed the declared size; bytes used return to what they were", async () => {
    const before = await bytesUsed();
    const outcome = await rawPutStream(raw, [
      { header: { transferId: "over", part: "p", size: MiB, seal: true } },
      { chunk: Buffer.alloc(MiB / 2) },
      { chunk: Buffer.alloc(MiB / 2) },
      { chunk: Buffer.alloc(1) },
    ]);
    expectStatus(outcome, status.INVALID_ARGUMENT, /declared size/);
    expect(await bytesUsed()).toBe(before);
    expectStatus(await rawUnary((md, o, cb) => raw.stat({ transferId: "over" }, md, o, cb)), status.NOT_FOUND);
  });

  it("refuses chunks that fall short of the declared size; bytes used return to what they were", async () => {
    const before = await bytesUsed();
    const outcome = await rawPutStream(raw, [
      { header: { transferId: "short", part: "p", size: MiB, seal: true } },
      { chunk: Buffer.alloc(MiB - 1) },
    ]);
    expectStatus(outcome, status.INVALID_ARGUMENT, /size/);
    expect(await bytesUsed()).toBe(before);
  });

  it("keeps an entry's other parts when a streamed part fails, and lets the part be sent again", async () => {
    await d.client.put("partial", "a", Buffer.from("kept"));
    const before = await bytesUsed();
    expectStatus(
      await rawPutStream(raw, [{ header: { transferId: "partial", part: "b", size: 10, seal: true } }, { chunk: Buffer.alloc(4) }]),
      status.INVALID_ARGUMENT,
    );
    expect(await bytesUsed()).toBe(before);
    const info = await d.client.stat("partial");
    expect(info.parts.map((p) => p.name)).toEqual(["a"]);
    expect(info.state).toBe(EntryState.ENTRY_STATE_OPEN); // the failed part's seal did not apply
    const again = await rawPutStream(raw, [{ header: { transferId: "partial", part: "b", size: 4, seal: true } }, { chunk: Buffer.from("done") }]);
    expect(again.ok).toBe(true);
    expect((await d.client.stat("partial")).parts.map((p) => p.name)).toEqual(["a", "b"]);
  });

  it("refuses a declared size beyond 2^53 bytes as never fitting, not as an internal error", async () => {
    const outcome = await rawPutStream(raw, [{ header: { transferId: "huge", part: "p", size: 2 ** 60, seal: false } }]);
    expect(outcome.ok).toBe(false);
    const code = outcome.ok ? undefined : status[outcome.error.code];
    expect(["OUT_OF_RANGE", "INVALID_ARGUMENT"], outcome.ok ? "" : outcome.error.details).toContain(code);
  });
});

describe("message size limits (max_message_bytes 1 MiB)", () => {
  it("refuses a 2 MiB unary Put with RESOURCE_EXHAUSTED and stores nothing", async () => {
    const before = await tight.client.serverInfo();
    expectStatus(await put(tight.client.raw, "too-long", "p", Buffer.alloc(2 * MiB), { seal: true }), status.RESOURCE_EXHAUSTED);
    const after = await tight.client.serverInfo();
    expect(after.bytesUsed).toBe(before.bytesUsed);
    expect(after.counters!.puts).toBe(before.counters!.puts);
    expectStatus(await rawUnary((md, o, cb) => tight.client.raw.stat({ transferId: "too-long" }, md, o, cb)), status.NOT_FOUND);
  });

  it("accepts a unary Put and Get of exactly max_message_bytes", async () => {
    const data = randomBytes(MiB);
    expect((await put(tight.client.raw, "just-fits", "p", data, { seal: true })).ok).toBe(true);
    const got = await get(tight.client.raw, "just-fits");
    expect(got.ok).toBe(true);
    expectSameBytes(got.ok ? got.value.parts[0]!.data : undefined, data);
  });

  it("refuses a unary Get of an entry larger than max_message_bytes with OUT_OF_RANGE pointing to GetStream", async () => {
    const data = randomBytes(3 * MiB);
    await tight.client.putStream("too-big-to-get", "kv", data, { seal: true });
    expectStatus(await get(tight.client.raw, "too-big-to-get"), status.OUT_OF_RANGE, /GetStream/);
    // A consuming Get that failed this way leaves the entry for a reader that streams it.
    expectStatus(await get(tight.client.raw, "too-big-to-get", { consume: true }), status.OUT_OF_RANGE, /GetStream/);
    const streamed = await tight.client.getStream("too-big-to-get", { waitMs: 0, consume: true });
    expect(sha256(streamed.parts.get("kv")!)).toBe(sha256(data));
  });

  it("serves GetStream with chunk_size 4 MiB (the documented maximum) without exceeding max_message_bytes", async () => {
    const data = randomBytes(3 * MiB);
    await tight.client.putStream("big-chunks", "kv", data, { seal: true });
    const outcome = await getStream(tight.client.raw, { transferId: "big-chunks", chunkSize: 4 * MiB });
    // Either the daemon sends smaller chunks (chunk_size is the largest it may send) or it
    // refuses the request up front; failing the stream with the bytes half sent is neither.
    if (!outcome.ok) {
      expectStatus(outcome, status.INVALID_ARGUMENT, /chunk_size/);
      return;
    }
    expect(sha256(Buffer.concat(outcome.value.map((m) => m.chunk)))).toBe(sha256(data));
  });
});

describe("after all of it", () => {
  for (const which of ["default", "tight"] as const) {
    it(`the ${which} daemon still serves, and bytes used equal what its live entries hold`, async () => {
      const t = which === "default" ? d : tight;
      expect(t.proc.child.exitCode).toBe(null);
      const data = pattern(4096, 77);
      await t.client.put("still-alive", "p", data, { seal: true });
      expectSameBytes((await t.client.get("still-alive", { waitMs: 0 })).parts.get("p"), data);
      // A fresh connection works too.
      const fresh = t.newClient();
      await fresh.waitForReady(3000);
      const info = await fresh.serverInfo();
      const entries = await listAll(fresh);
      expect(info.entries).toBe(entries.length);
      expect(info.bytesUsed).toBe(entries.reduce((s, e) => s + e.parts.reduce((t, p) => t + poolFootprint(p.size), 0), 0));
      expect(entries.every((e) => e.readers === 0 && e.writers === 0)).toBe(true);
    });
  }
});
