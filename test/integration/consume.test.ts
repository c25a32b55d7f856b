// Consuming reads against a real daemon: an entry is gone only once its reader confirmed
// it holds every byte (two-phase consume), a sealed entry never lacks a part that was
// being written, and exactly one of many concurrent consumers gets an entry.
import { Metadata, status, type ClientReadableStream } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AbortedError, NotFoundError } from "../../src/errors.js";
import {
  GetRequest, GetStreamRequest, PutStreamRequest, type GetResponse, type GetStreamResponse,
} from "../../src/gen/kvferry/v1/kvferry.js";
import {
  expectSameBytes, expectStatus, MiB, pattern, rawUnary, rejection, sleep, startDaemon, type TestDaemon,
} from "../helpers/daemon.js";

let d: TestDaemon;

beforeAll(async () => {
  // The daemon's consume lease stays long (a loaded machine may take seconds to deliver 48 MiB
  // and confirm it); the calls whose lapse a test waits for ask for a short hold of their own.
  d = await startDaemon(["--kv-buffer-size", "256MiB", "--consume-lease-ms", "60000"]);
});

afterAll(async () => {
  await d?.stop();
});

const rawGet = (req: Partial<GetRequest>, timeoutMs = 10_000) =>
  rawUnary<GetResponse>((md, o, cb) => d.client.raw.get(GetRequest.create(req), md, o, cb), timeoutMs);

describe("two-phase consume", () => {
  it("a consuming Get whose reader never confirms leaves the entry readable again once the hold lapses", async () => {
    const data = pattern(512 * 1024, 11);
    await d.client.put("c-unconfirmed", "kv", data, { seal: true });
    const before = await d.client.serverInfo();
    // The raw call returns the bytes and a token, and the reader "dies" before confirming.
    const first = await rawGet({ transferId: "c-unconfirmed", consume: true, waitMs: 0, consumeLeaseMs: 1000 });
    expect(first.ok && first.value.consumeToken.length > 0).toBe(true);

    // Another consumer waits for the outcome and gets every byte once the hold lapsed.
    const again = await d.newClient().get("c-unconfirmed", { consume: true, waitMs: 20_000 });
    expectSameBytes(again.parts.get("kv"), data);
    expect((await rejection(d.client.stat("c-unconfirmed"))).reason).toBe("consumed");
    const after = await d.client.serverInfo();
    expect(after.counters!.consumeLapses - before.counters!.consumeLapses).toBe(1);
    expect(after.counters!.consumed - before.counters!.consumed).toBe(1);
  });

  it("a unary consuming Get whose deadline runs out before the reply leaves the entry for the next consumer", async () => {
    const data = pattern(48 * MiB, 12);
    await d.client.put("c-deadline", "kv", data, { seal: true });
    // 48 MiB cannot be copied, serialized and received in 30 ms: the caller gets DEADLINE_EXCEEDED.
    const lost = await rawGet({ transferId: "c-deadline", consume: true, waitMs: 0, consumeLeaseMs: 1000 }, 30);
    expectStatus(lost, status.DEADLINE_EXCEEDED);
    const again = await d.newClient().get("c-deadline", { consume: true, waitMs: 20_000, timeoutMs: 30_000 });
    expectSameBytes(again.parts.get("kv"), data);
    expect((await rejection(d.client.stat("c-deadline"))).reason).toBe("consumed");
  });

  it("a consuming GetStream whose client cancels after the first chunk leaves the entry readable", async () => {
    const data = pattern(MiB, 13);
    await d.client.put("c-cancel", "kv", data, { seal: true });
    // The whole entry fits in the HTTP/2 window: the daemon writes every chunk at once,
    // possibly before the cancellation reaches it. Either way the entry must come back.
    const stream: ClientReadableStream<GetStreamResponse> = d.client.raw.getStream(
      GetStreamRequest.create({ transferId: "c-cancel", consume: true, waitMs: 0, chunkSize: 64 * 1024, consumeLeaseMs: 1000 }),
      new Metadata(),
    );
    const first = await new Promise<GetStreamResponse>((resolve, reject) => {
      stream.once("data", resolve);
      stream.once("error", reject);
    });
    expect(first.consumeToken.length).toBeGreaterThan(0);
    stream.on("error", () => {}); // CANCELLED, as asked
    stream.cancel();

    const again = await d.newClient().getStream("c-cancel", { consume: true, waitMs: 20_000 });
    expectSameBytes(again.parts.get("kv"), data);
    expect((await rejection(d.client.stat("c-cancel"))).reason).toBe("consumed");
  });

  it("ConfirmConsume drops the entry; a wrong token fails FAILED_PRECONDITION naming consume_token; a repeat is OK", async () => {
    await d.client.put("c-confirm", "kv", pattern(4096, 14), { seal: true });
    const got = await rawGet({ transferId: "c-confirm", consume: true, waitMs: 0 });
    if (!got.ok) throw got.error;
    expect((await d.client.stat("c-confirm")).bytes).toBe(4096); // not gone before the confirmation
    const wrong = await rejection(d.client.confirmConsume("c-confirm", "not-the-token"));
    expect(wrong.name).toBe("FailedPreconditionError");
    expect(wrong.message).toMatch(/^consume_token: /);
    const empty = await rejection(d.client.confirmConsume("c-confirm", ""));
    expect(empty.message).toMatch(/^consume_token: must not be empty/);

    expect(await d.client.confirmConsume("c-confirm", got.value.consumeToken)).toBe(4096);
    expect(await d.client.confirmConsume("c-confirm", got.value.consumeToken)).toBe(0);
    expect((await rejection(d.client.stat("c-confirm"))).reason).toBe("consumed");
  });

  it("a Get asking for a longer hold than the daemon's consume_lease_ms fails INVALID_ARGUMENT naming the field", async () => {
    await d.client.put("c-long", "kv", pattern(100, 15), { seal: true });
    const r = await rawGet({ transferId: "c-long", consume: true, waitMs: 0, consumeLeaseMs: 60001 });
    expectStatus(r, status.INVALID_ARGUMENT, /^consume_lease_ms: 60001 .*1 to 60000/);
    expect((await d.client.stat("c-long")).bytes).toBe(100);
  });

  it("exactly one of 50 concurrent consumers gets the entry; the other 49 hear NOT_FOUND consumed", async () => {
    const data = pattern(2 * MiB, 16);
    for (let round = 0; round < 2; round++) {
      const id = `c-fifty-${round}`;
      await d.client.put(id, "kv", data, { seal: true });
      const clients = Array.from({ length: 50 }, () => d.newClient());
      const results = await Promise.allSettled(
        clients.map((c, i) =>
          i % 2 === 0 ? c.get(id, { consume: true, waitMs: 20_000 }) : c.getStream(id, { consume: true, waitMs: 20_000 }),
        ),
      );
      const got = results.filter((r) => r.status === "fulfilled");
      const failed = results.flatMap((r) => (r.status === "rejected" ? [r.reason as Error] : []));
      expect(got, `round ${round}: ${failed.map((e) => e.message).slice(0, 3).join("; ")}`).toHaveLength(1);
      expectSameBytes((got[0] as PromiseFulfilledResult<{ parts: Map<string, Buffer> }>).value.parts.get("kv"), data);
      expect(failed.every((e) => e instanceof NotFoundError && e.reason === "consumed"), failed[0]?.message).toBe(true);
      for (const c of clients) c.close();
    }
  });
});

describe("sealed means complete", () => {
  it("a PutStream cancelled after a Seal arrived drops the entry as incomplete; readers get ABORTED naming the part", async () => {
    await d.client.put("c-incomplete", "layer.0", pattern(1000, 17));
    const reader = d.newClient().get("c-incomplete", { waitMs: 20_000 }); // waits for the seal
    const stream = d.client.raw.putStream(new Metadata(), () => {});
    stream.on("error", () => {}); // CANCELLED, as asked
    stream.write(PutStreamRequest.create({ header: { transferId: "c-incomplete", part: "layer.3", size: 2 * MiB } }));
    stream.write(PutStreamRequest.create({ chunk: pattern(MiB, 18) }));
    // The part is being written once Stat lists it (bounded: 10 s).
    for (let i = 0; i < 200 && !(await d.client.stat("c-incomplete")).parts.some((p) => p.name === "layer.3"); i++) await sleep(50);
    const sealed = await d.client.seal("c-incomplete");
    expect(sealed.parts.map((p) => [p.name, p.complete])).toEqual([["layer.0", true], ["layer.3", false]]);
    stream.cancel();

    const err = await rejection(reader);
    expect(err).toBeInstanceOf(AbortedError);
    expect(err.message).toMatch(/entry c-incomplete is incomplete: part layer\.3 was abandoned after the seal/);
    const stat = await rejection(d.client.stat("c-incomplete"));
    expect(stat).toBeInstanceOf(AbortedError);
    expect((await d.client.serverInfo()).counters!.incomplete).toBe(1);
  });
});
