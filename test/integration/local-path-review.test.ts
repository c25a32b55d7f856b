// Review findings on the local path: a commit that fails part-way must not leave its
// reservation behind (its lapse would drop parts the client committed), and odd requests
// (zero-size parts, huge sizes, commits after abort, a part committed twice) are refused
// naming the field, never crashing the daemon.
import { afterAll, describe, expect, it } from "vitest";
import { InvalidArgumentError, NotFoundError, OutOfRangeError } from "../../src/errors.js";
import { sleep } from "../helpers/daemon.js";
import { metricValue, rejectionOf } from "../helpers/local-path.js";
import { digest, seededBytes, startPeerDaemon, type PeerDaemon, type PeerDaemonOptions } from "../helpers/transfer.js";

const started: PeerDaemon[] = [];
async function daemon(o: PeerDaemonOptions = {}): Promise<PeerDaemon> {
  const d = await startPeerDaemon({ bufferSize: "64MiB", ...o });
  started.push(d);
  return d;
}
afterAll(async () => {
  await Promise.all(started.map((d) => d.stop()));
});

describe("a commit that fails part-way", () => {
  it("ends the reservation once no part is left: its lapse does not drop the parts committed", async () => {
    const d = await daemon({ args: ["--metrics-listen", "127.0.0.1:0"] });
    // Reservation of one part; the commit names it and a part never reserved.
    const w = await d.client.reserveLocal("pw-1", [{ name: "a", size: 100 }], { reservationTtlMs: 1500 });
    w.write("a", seededBytes(100, "a"));
    const err = await rejectionOf(d.client.raw.commit.bind(d.client.raw), {
      reservationId: w.reservationId, parts: [{ name: "a", bytes: 100 }, { name: "nope", bytes: 1 }], seal: false,
    });
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err.message).toMatch(/parts\[1\]\.name/);
    // Refused whole: a is still reserved, and commits now.
    await expect(d.client.get("pw-1", { parts: ["a"], waitMs: 0 })).rejects.toBeInstanceOf(Error);
    await w.commit(["a"]);
    // Second reservation of the entry: one part committed, the other committed short.
    const w2 = await d.client.reserveLocal("pw-2", [{ name: "a", size: 100 }, { name: "b", size: 50 }], { reservationTtlMs: 1500 });
    w2.write("a", seededBytes(100, "a2"));
    await w2.commit(["a"]);
    const short = await rejectionOf(d.client.raw.commit.bind(d.client.raw), { reservationId: w2.reservationId, parts: [{ name: "b", bytes: 49 }], seal: false });
    expect(short).toBeInstanceOf(InvalidArgumentError);
    // Neither reservation has a part left: both are over.
    expect(await metricValue(d, "kvferry_daemon_local_reservations")).toBe(0);
    // Well past both reservations' leases (the entries' own lease is the daemon's default, minutes).
    await sleep(4000);
    const got = await d.client.get("pw-1", { parts: ["a"], waitMs: 0 });
    expect(digest(got.parts.get("a")!)).toBe(digest(seededBytes(100, "a")));
    const got2 = await d.client.get("pw-2", { parts: ["a"], waitMs: 0 });
    expect(digest(got2.parts.get("a")!)).toBe(digest(seededBytes(100, "a2")));
  });
});

describe("odd requests never crash the daemon", () => {
  it("zero-size parts, huge sizes, a part committed twice, commit after abort, a part reserved twice", async () => {
    const d = await daemon({ args: ["--metrics-listen", "127.0.0.1:0"] });
    // Zero-size parts round-trip.
    const z = await d.client.reserveLocal("z", [{ name: "empty", size: 0 }, { name: "one", size: 1 }]);
    z.write("one", Buffer.from([7]));
    await z.commit(undefined, { seal: true });
    const loan = await d.client.getLocal("z", { consume: true });
    expect(loan.bytes("empty").length).toBe(0);
    expect([...loan.bytes("one")]).toEqual([7]);
    await loan.return();
    // Sizes past the pool or past 2^53.
    expect(await rejectionOf(d.client.raw.reserve.bind(d.client.raw), { transferId: "huge", parts: [{ name: "p", size: 1 << 30 }] })).toBeInstanceOf(OutOfRangeError);
    const unsafe = await rejectionOf(d.client.raw.reserve.bind(d.client.raw), { transferId: "huge", parts: [{ name: "p", size: "18446744073709551615" }] });
    // (grpc-js cannot decode it: "Error deserializing request", not naming parts[0].size)
    expect(unsafe).toBeInstanceOf(Error);
    // A part committed twice, in one commit and in two.
    const t = await d.client.reserveLocal("twice", [{ name: "p", size: 4 }, { name: "q", size: 4 }]);
    const dup = await rejectionOf(d.client.raw.commit.bind(d.client.raw), { reservationId: t.reservationId, parts: [{ name: "p", bytes: 4 }, { name: "p", bytes: 4 }], seal: false });
    expect(dup.message).toMatch(/parts\[1\]\.name/);
    // (refused whole: p is still uncommitted)
    await t.commit(["p"]);
    const again = await rejectionOf(d.client.raw.commit.bind(d.client.raw), { reservationId: t.reservationId, parts: [{ name: "p", bytes: 4 }], seal: false });
    expect(again).toBeInstanceOf(NotFoundError);
    // The same part reserved by a second reservation while the first holds it.
    const other = await rejectionOf(d.client.raw.reserve.bind(d.client.raw), { transferId: "twice", parts: [{ name: "q", size: 4 }] });
    expect(other.message).toMatch(/q/);
    await t.abort();
    expect(await rejectionOf(d.client.raw.commit.bind(d.client.raw), { reservationId: t.reservationId, parts: [{ name: "q", bytes: 4 }], seal: false })).toBeInstanceOf(NotFoundError);
    expect(await rejectionOf(d.client.raw.returnLoan.bind(d.client.raw), { loanId: "", consumed: true })).toBeInstanceOf(NotFoundError);
    const info = await d.client.serverInfo();
    expect(info.bytesUsed).toBe(0);
    expect(await metricValue(d, "kvferry_daemon_local_reservations")).toBe(0);
  });
});

describe("a client whose daemon restarted", () => {
  it("maps the new pool instead of failing for good, and leaves no reservation or loan behind", async () => {
    const { KvferryClient } = await import("../../src/client/client.js");
    const first = await daemon();
    const port = first.port;
    const client = new KvferryClient(first.address);
    const reader = new KvferryClient(first.address);
    try {
      await client.putLocal("before", new Map([["p", seededBytes(1000, "before")]]), { seal: true });
      await (await reader.getLocal("before")).return();
      await first.stop();
      // The same address (and so the same default socket path), a new pool.
      const second = await daemon({ args: ["--listen", `127.0.0.1:${port}`, "--metrics-listen", "127.0.0.1:0"] });
      await client.waitForReady(30_000);
      await client.putLocal("after", new Map([["p", seededBytes(1000, "after")]]), { seal: true });
      // A reader that mapped the old pool maps the new one too.
      await reader.waitForReady(30_000);
      const loan = await reader.getLocal("after", { consume: true });
      expect(digest(loan.bytes("p"))).toBe(digest(seededBytes(1000, "after")));
      await loan.return();
      await expect(client.stat("after")).rejects.toBeInstanceOf(NotFoundError);
      expect(await metricValue(second, "kvferry_daemon_local_reservations")).toBe(0);
    } finally {
      client.close();
      reader.close();
    }
  });
});

describe("a Reserve whose caller gave up while it waited for room", () => {
  it("holds no room once room comes: its wait ends with the call", async () => {
    const d = await daemon({ bufferSize: "16MiB", args: ["--put-deadline-ms", "8000", "--metrics-listen", "127.0.0.1:0"] });
    // The pool full of an open (not evictable) entry.
    await d.client.putLocal("filler", new Map([["p", Buffer.alloc(12 << 20)]]), { seal: false });
    const gaveUp = d.client.reserveLocal("late", [{ name: "p", size: 8 << 20 }], { timeoutMs: 1000 });
    await expect(gaveUp).rejects.toBeInstanceOf(Error);
    // Room comes back while the daemon would still wait (put_deadline_ms 8 s).
    await d.client.release("filler");
    await sleep(3000);
    expect(await metricValue(d, "kvferry_daemon_local_reservations")).toBe(0);
    expect((await d.client.serverInfo()).bytesUsed).toBe(0);
  });
});
