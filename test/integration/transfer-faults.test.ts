// Transfers when something goes wrong, with daemons as separate processes on 127.0.0.1:
// a wrong cluster token, garbage on the data port while a real transfer runs, and a
// peer killed with SIGKILL in the middle of a PUSH or a PULL. What must hold: the right
// status per id, within the deadline; no half-written entry; every pool byte accounted
// for on the survivor; and the survivor keeps serving.
import { readdirSync } from "node:fs";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { PermissionDeniedError, NotFoundError } from "../../src/errors.js";
import { Peer } from "../../src/daemon/peers.js";
import { poolFootprint } from "../../src/engine/pool-memory.js";
import { EntryState } from "../../src/gen/kvferry/v1/kvferry.js";
import {
  KvFerryPeerService,
  type PrepareReceiveRequest,
  type PrepareReceiveResponse,
  type PrepareSendRequest,
  type PrepareSendResponse,
} from "../../src/gen/kvferry/v1/peer.js";
import { MiB, rejection, sleep } from "../helpers/daemon.js";
import {
  TOKEN,
  codeCounts,
  digest,
  entryBytes,
  entrySpec,
  expectAllOk,
  entryFootprint,
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
import { FrameType, RawDataConnection, WireCode, authenticate, header, hello, type Frame } from "../helpers/wire.js";

const KiB = 1024;
/** Grace a reservation keeps past its deadline when the other daemon vanished (src/daemon/transfer-reservations.ts). */
const RESERVATION_GRACE_MS = 5_000;

/** Every daemon a test started, stopped (or reaped, if it was killed) when the file ends. */
const started: PeerDaemon[] = [];

async function daemon(o: Parameters<typeof startPeerDaemon>[0] = {}): Promise<PeerDaemon> {
  const d = await startPeerDaemon(o);
  started.push(d);
  return d;
}

afterAll(async () => {
  await Promise.all(started.map((d) => d.stop()));
});

/** SIGKILL, then waits for the process to be gone. */
async function kill9(d: PeerDaemon): Promise<void> {
  d.proc.child.kill("SIGKILL");
  await d.proc.exited;
}

function alive(d: PeerDaemon): boolean {
  return d.proc.child.exitCode === null && d.proc.child.signalCode === null;
}

/** Polls `probe` every few ms until it returns true or timeoutMs passes; says which. */
async function until(probe: () => Promise<boolean>, timeoutMs: number, intervalMs = 3): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await probe().catch(() => false)) return true;
    await sleep(intervalMs);
  }
  return false;
}

async function counters(d: PeerDaemon) {
  return (await d.client.serverInfo()).counters!;
}

function specs(prefix: string, n: number, size: number): EntrySpec[] {
  return Array.from({ length: n }, (_, i) => entrySpec(`${prefix}-${i}`, [size]));
}

async function putAll(d: PeerDaemon, list: EntrySpec[]): Promise<Map<string, Map<string, string>>> {
  const hashes = new Map<string, Map<string, string>>();
  for (const s of list) hashes.set(s.id, await putEntry(d.client, s));
  return hashes;
}

describe("a wrong cluster token", () => {
  let a: PeerDaemon;
  let b: PeerDaemon;

  beforeAll(async () => {
    [a, b] = await Promise.all([
      daemon({ token: "token-of-a", bufferSize: "64MiB" }),
      daemon({ token: "token-of-b", bufferSize: "64MiB" }),
    ]);
  });

  it("refuses a PUSH to a daemon with another token: every id PERMISSION_DENIED, nothing reserved there, the source keeps its entries", async () => {
    const list = [entrySpec("tok-push-0", [MiB]), entrySpec("tok-push-1", [1, 4 * KiB])];
    const hashes = await putAll(a, list);
    const before = await b.client.serverInfo();

    const res = await a.client.batchTransfer(list.map((s) => s.id), b.peerAddress, "push");

    expect(res.results.map((r) => r.transferId)).toEqual(list.map((s) => s.id));
    expect(codeCounts(res.results)).toEqual({ PERMISSION_DENIED: list.length });
    const after = await b.client.serverInfo();
    expect(after.bytesUsed).toBe(before.bytesUsed);
    expect(after.entries).toBe(before.entries);
    expect(after.counters!.bytesReceived).toBe(before.counters!.bytesReceived);
    for (const s of list) {
      await expectSealedLike(a.client, s);
      expect(await fetchHashes(a.client, s.id)).toEqual(hashes.get(s.id));
      await expect(b.client.stat(s.id)).rejects.toBeInstanceOf(NotFoundError);
    }
    await expectExactAccounting(a);
  });

  it("refuses a PULL from a daemon with another token: every id PERMISSION_DENIED, nothing half-written here, the source keeps its entry", async () => {
    const s = entrySpec("tok-pull-0", [2 * MiB]);
    await putEntry(b.client, s);
    const before = await a.client.serverInfo();

    const res = await a.client.batchTransfer([s.id], b.peerAddress, "pull");

    expect(codeCounts(res.results)).toEqual({ PERMISSION_DENIED: 1 });
    await expect(a.client.stat(s.id)).rejects.toBeInstanceOf(NotFoundError);
    expect((await a.client.serverInfo()).bytesUsed).toBe(before.bytesUsed);
    await expectSealedLike(b.client, s);
  });

  it("refuses peer API calls with a wrong or an empty token, reserving nothing", async () => {
    const before = (await b.client.serverInfo()).bytesUsed;
    for (const token of ["token-of-a", ""]) {
      const peer = new Peer(b.peerAddress, token);
      try {
        const err = await rejection(
          peer.call(
            KvFerryPeerService.prepareReceive,
            { entries: [{ transferId: "tok-direct", parts: [{ name: "p", size: MiB }] }], deadlineMs: 5_000, sourceNode: "it" },
            5_000,
          ),
        );
        expect(err, `token ${JSON.stringify(token)}: ${err.message}`).toBeInstanceOf(PermissionDeniedError);
      } finally {
        peer.close();
      }
    }
    expect((await b.client.serverInfo()).bytesUsed).toBe(before);
    await expect(b.client.stat("tok-direct")).rejects.toBeInstanceOf(NotFoundError);
  });
});

// The TCP data plane's own wire (raw connections, frames, handshakes); ucx_transfer_test.cc
// covers the UCX transport's refusals.
describe.skipIf(RDMA)("garbage on the data port", () => {
  let s: PeerDaemon;
  let t: PeerDaemon;

  beforeAll(async () => {
    [s, t] = await Promise.all([daemon({ bufferSize: "384MiB" }), daemon({ bufferSize: "384MiB" })]);
  });

  /** Runs `send` on a fresh raw connection to the target's data port, closed afterwards. */
  async function probe(send: (c: RawDataConnection) => Promise<void> | void) {
    const c = await RawDataConnection.open(t.dataAddress);
    try {
      await send(c);
    } finally {
      c.destroy();
    }
  }

  /** Expects the server to close the connection within timeoutMs, sending nothing first. */
  async function expectDropped(c: RawDataConnection, what: string, timeoutMs = 3_000): Promise<void> {
    const o = await c.outcome(timeoutMs);
    expect(o, what).toEqual({ state: "closed", received: 0 });
  }

  async function handshake(c: RawDataConnection): Promise<Frame> {
    const { verdict: f, serverProved } = await authenticate(c, TOKEN);
    if (f === "closed") throw new Error("the data port closed a handshake with the right token");
    expect(serverProved, "the server proved the token").toBe(true);
    expect(f.type, "HELLO_OK").toBe(FrameType.HELLO_OK);
    expect(f.status).toBe(0);
    expect(f.offset, "the server's slice size").toBeGreaterThan(0n);
    return f;
  }

  /** Sends one request and returns its reply header (the connection must stay open). */
  async function request(c: RawDataConnection, h: Buffer, payload?: Buffer): Promise<Frame> {
    c.send(h, ...(payload ? [payload] : []));
    const f = await c.frame();
    if (f === "closed") throw new Error("the data port closed the connection instead of answering");
    return f;
  }

  /** Every kind of garbage, each on its own connection; resolves when all were judged. */
  async function sendGarbage(): Promise<void> {
    // Random bytes of many lengths, several connections at once.
    await Promise.all(
      [1, 47, 48, 49, 4096, 1 * MiB].map((n, i) =>
        probe(async (c) => {
          const junk = seededBytes(n, `junk-${i}`);
          if (n >= 4) junk.writeUInt32LE(0xdeadbeef, 0); // never the magic by chance
          c.send(junk);
          if (n < 48) c.end();
          const o = await c.outcome(3_000);
          expect(o.state, `${n} random bytes`).toBe("closed");
          expect(o.received, `${n} random bytes: no reply`).toBe(0);
        }),
      ),
    );
    // A truncated header, then EOF.
    await probe(async (c) => {
      c.send(hello().subarray(0, 20));
      c.end();
      await expectDropped(c, "a truncated HELLO header");
    });
    // Well-formed HELLO headers whose payload is not a 32-byte nonce: never read, never allocated.
    for (const length of [0n, 31n, 33n, 4097n, 1n << 40n, (1n << 64n) - 1n]) {
      await probe(async (c) => {
        c.send(header({ type: FrameType.HELLO, offset: 4n << 20n, length }), Buffer.alloc(64));
        await expectDropped(c, `a HELLO announcing ${length} nonce bytes`);
      });
    }
    // A HELLO of wire version 1 (it carried the token itself): refused as NOT_SUPPORTED.
    await probe(async (c) => {
      const token = Buffer.from(TOKEN);
      c.send(header({ type: FrameType.HELLO, version: 1, offset: 4n << 20n, length: BigInt(token.length) }), token);
      const f = await c.frame();
      expect(f, "a version-1 HELLO").not.toBe("closed");
      expect([(f as Frame).type, (f as Frame).status]).toEqual([FrameType.HELLO_REFUSED, WireCode.NOT_SUPPORTED]);
      expect((await c.outcome(3_000)).state, "closed after HELLO_REFUSED").toBe("closed");
    });
    // A first frame that is not a HELLO.
    await probe(async (c) => {
      c.send(header({ type: FrameType.WRITE, handle: 1n, length: 8n }), Buffer.alloc(8));
      await expectDropped(c, "a WRITE before any HELLO");
    });
    // A wrong token: the server's proof does not check out for it, and our proof gets
    // HELLO_REFUSED with PERMISSION_DENIED, then the server closes.
    for (const token of ["wrong-token", TOKEN.slice(0, -1), `${TOKEN}x`, ""]) {
      await probe(async (c) => {
        const { verdict: f, serverProved } = await authenticate(c, token);
        expect(serverProved, `token ${JSON.stringify(token)}: the server's proof fits it`).toBe(false);
        expect(f, `token ${JSON.stringify(token)}`).not.toBe("closed");
        expect((f as Frame).type).toBe(FrameType.HELLO_REFUSED);
        expect((f as Frame).status).toBe(WireCode.PERMISSION_DENIED);
        expect((await c.outcome(3_000)).state, "closed after HELLO_REFUSED").toBe("closed");
      });
    }
    // After a good HELLO: refusals that keep the connection usable.
    await probe(async (c) => {
      await handshake(c);
      const unknown = 0x0123456789abcdefn;
      let f = await request(c, header({ type: FrameType.WRITE, requestId: 7n, handle: unknown, length: 1000n }), Buffer.alloc(1000, 0xab));
      expect([f.type, f.status, f.requestId, f.length], "WRITE to an unknown handle").toEqual([FrameType.WRITE_ACK, WireCode.NOT_FOUND, 7n, 0n]);
      f = await request(c, header({ type: FrameType.READ, requestId: 8n, handle: unknown, length: 4096n }));
      expect([f.type, f.status, f.requestId, f.length], "READ of an unknown handle").toEqual([FrameType.READ_DATA, WireCode.NOT_FOUND, 8n, 0n]);
      f = await request(c, header({ type: FrameType.WRITE, requestId: 9n, handle: 0n, length: 0n }));
      expect([f.type, f.status, f.requestId], "empty WRITE to handle 0").toEqual([FrameType.WRITE_ACK, WireCode.NOT_FOUND, 9n]);
      expect(c.isClosed).toBe(false);
    });
    // After a good HELLO: protocol violations that close the connection.
    const violations: [string, (slice: bigint) => Buffer][] = [
      ["a WRITE longer than the slice size", (slice) => header({ type: FrameType.WRITE, handle: 1n, length: slice + 1n })],
      ["a WRITE of 2^64-1 bytes", () => header({ type: FrameType.WRITE, handle: 1n, length: (1n << 64n) - 1n })],
      ["a READ longer than the slice size", (slice) => header({ type: FrameType.READ, handle: 1n, length: slice * 4n })],
      ["a wrong magic", () => header({ type: FrameType.WRITE, magic: 0x12345678, length: 0n })],
      ["a wrong version", () => header({ type: FrameType.WRITE, version: 1, length: 0n })],
      ["non-zero flags", () => header({ type: FrameType.READ, flags: 1, length: 0n })],
      ["a non-zero reserved field", () => header({ type: FrameType.READ, reserved: 1, length: 0n })],
      ["a request with a status", () => header({ type: FrameType.READ, status: 3, length: 0n })],
      ["a second HELLO", () => hello()],
      ["a reply type from the client", () => header({ type: FrameType.WRITE_ACK })],
      ["an unknown type", () => header({ type: 99 })],
    ];
    for (const [what, frame] of violations) {
      await probe(async (c) => {
        const ok = await handshake(c);
        c.send(frame(ok.offset));
        await expectDropped(c, what);
      });
    }
    // After a good HELLO: seeded random frames with the right magic and version, and random
    // fields, payloads and truncations. Whatever the server does with them, it must live.
    let x = 0x2545f491;
    const rnd = () => {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      return x >>> 0;
    };
    await Promise.all(
      Array.from({ length: 24 }, () =>
        probe(async (c) => {
          await handshake(c);
          for (let i = 0; i < 8; i++) {
            const length = [0n, 1n, BigInt(rnd() % 70_000), BigInt(rnd()) << 32n, (1n << 64n) - 1n][rnd() % 5]!;
            c.send(
              header({
                type: 1 + (rnd() % 8),
                requestId: BigInt(rnd()),
                handle: rnd() % 3 === 0 ? 0n : (BigInt(rnd()) << 32n) | BigInt(rnd()),
                offset: [0n, BigInt(rnd()), (1n << 64n) - BigInt(1 + (rnd() % 100))][rnd() % 3]!,
                length,
              }),
              // The announced payload, all of it or cut short.
              seededBytes(Math.max(0, Number(length < 70_000n ? length : 70_000n) - (rnd() % 2 === 0 ? 0 : 1 + (rnd() % 10))), `fz-${rnd()}`),
            );
          }
          c.end();
          await c.outcome(3_000);
        }),
      ),
    );
  }

  it("survives random bytes, truncated and oversized frames, wrong tokens and refused accesses, while 64 MiB transfers both ways stay intact", async () => {
    // Two entries start on each side; legs alternate PUSH s→t and PULL t→s while the garbage
    // flows. Each entry is verified where it arrives, a daemon that never held its bytes.
    const fromS = [entrySpec("garbage-push-0", [64 * MiB]), entrySpec("garbage-push-1", [64 * MiB])];
    const fromT = [entrySpec("garbage-pull-0", [64 * MiB]), entrySpec("garbage-pull-1", [64 * MiB])];
    const hashes = new Map([...(await putAll(s, fromS)), ...(await putAll(t, fromT))]);
    const legs = [
      { spec: fromS[0]!, mode: "push" as const },
      { spec: fromT[0]!, mode: "pull" as const },
      { spec: fromS[1]!, mode: "push" as const },
      { spec: fromT[1]!, mode: "pull" as const },
    ];
    const mover = (async () => {
      for (const leg of legs) {
        const res = await s.client.batchTransfer([leg.spec.id], t.peerAddress, leg.mode, { timeoutMs: 30_000 });
        expectAllOk(res.results);
        expect(res.results[0]!.bytes).toBe(64 * MiB);
      }
    })();

    await Promise.all([sendGarbage(), mover]);

    for (const leg of legs) {
      const [from, to] = leg.mode === "push" ? [s, t] : [t, s];
      await expectSealedLike(to.client, leg.spec);
      expect(await fetchHashes(to.client, leg.spec.id), leg.spec.id).toEqual(hashes.get(leg.spec.id));
      await expect(from.client.stat(leg.spec.id)).rejects.toBeInstanceOf(NotFoundError);
    }
    expect(alive(t), "the target process is alive").toBe(true);
    expect((await t.client.serverInfo()).version).not.toBe("");
    await expectExactAccounting(s);
    await expectExactAccounting(t);
    // And it still serves a fresh transfer.
    const after = entrySpec("garbage-after", [3 * MiB, 1]);
    const afterHashes = await putEntry(s.client, after);
    expectAllOk((await s.client.batchTransfer([after.id], t.peerAddress, "push")).results);
    expect(await fetchHashes(t.client, after.id)).toEqual(afterHashes);
  });

  it("bounds-checks every access to a real handle: offsets and lengths past the part or wrapping around 2^64 are OUT_OF_RANGE, a READ through a receiving handle is PERMISSION_DENIED, and nothing refused is written", async () => {
    const size = 64 * KiB;
    const peer = new Peer(t.peerAddress, TOKEN);
    onTestFinished(() => peer.close());
    const before = (await t.client.serverInfo()).bytesUsed;
    const prep = await peer.call(
      KvFerryPeerService.prepareReceive,
      { entries: [{ transferId: "bounds", parts: [{ name: "p", size }] }], deadlineMs: 10_000, sourceNode: "it" },
      5_000,
    );
    const reservation = prep.entries[0]!;
    expect(reservation.error, JSON.stringify(reservation.error)).toBeUndefined();
    const handle = BigInt(prep.batch!.handle);
    const data = seededBytes(size, "bounds");

    const c = await RawDataConnection.open(t.dataAddress);
    onTestFinished(() => c.destroy());
    expect(((await authenticate(c, TOKEN)).verdict as Frame).type).toBe(FrameType.HELLO_OK);
    const write = async (id: bigint, offset: bigint, payload: Buffer, length = BigInt(payload.length)) => {
      c.send(header({ type: FrameType.WRITE, requestId: id, handle, offset, length }), payload);
      const f = await c.frame();
      if (f === "closed") throw new Error(`WRITE ${id} closed the connection`);
      expect([f.type, f.requestId], `reply to WRITE ${id}`).toEqual([FrameType.WRITE_ACK, id]);
      return f.status;
    };
    const U64 = 1n << 64n;
    const poison = Buffer.alloc(32, 0xee);
    expect(await write(1n, U64 - 16n, poison), "offset + length wraps around 2^64").toBe(WireCode.OUT_OF_RANGE);
    expect(await write(2n, U64 - 1n, poison.subarray(0, 1)), "offset 2^64-1").toBe(WireCode.OUT_OF_RANGE);
    expect(await write(3n, BigInt(size), poison.subarray(0, 1)), "one byte past the end").toBe(WireCode.OUT_OF_RANGE);
    expect(await write(4n, BigInt(size) - 16n, poison), "straddling the end").toBe(WireCode.OUT_OF_RANGE);
    expect(await write(5n, BigInt(size) + 1n, Buffer.alloc(0)), "an empty write past the end").toBe(WireCode.OUT_OF_RANGE);
    // A reservation's handle is for writing into: no READ, in range or not, gets a byte of it.
    for (const [id, offset, length] of [[6n, U64 - 8n, 16n], [7n, 0n, BigInt(size)]] as const) {
      c.send(header({ type: FrameType.READ, requestId: id, handle, offset, length }));
      const r = await c.frame();
      expect(r !== "closed" && [r.type, r.requestId, r.status, r.length], `READ ${id} of a receiving handle`).toEqual([
        FrameType.READ_DATA, id, WireCode.PERMISSION_DENIED, 0n,
      ]);
    }
    // In range: the whole part in two writes on the same connection, which stayed usable.
    expect(await write(8n, 0n, data.subarray(0, size / 2))).toBe(WireCode.OK);
    expect(await write(9n, BigInt(size / 2), data.subarray(size / 2))).toBe(WireCode.OK);

    // Committed through the peer API, the entry holds exactly those bytes: no refused write touched it.
    await peer.call(KvFerryPeerService.commitReceive, { ids: [reservation.id] }, 5_000);
    const got = await t.client.get("bounds", { waitMs: 0 });
    expect(digest(got.parts.get("p")!)).toBe(digest(data));
    expect((await t.client.serverInfo()).bytesUsed).toBe(before + poolFootprint(size));
    await t.client.release("bounds");
    expect(alive(t)).toBe(true);
  });

  it("600 connections that never finish a handshake start no thread in the daemon, do not keep a real PUSH out, and are closed by the handshake deadline", async () => {
    const threads = () => readdirSync(`/proc/${t.proc.child.pid}/task`).length;
    const before = threads();
    const idle = await Promise.all(Array.from({ length: 600 }, () => RawDataConnection.open(t.dataAddress)));
    onTestFinished(() => idle.forEach((c) => c.destroy()));
    // Half of them send a partial HELLO, the others nothing; none of them gets a thread.
    idle.forEach((c, i) => i % 2 === 0 && c.send(hello().subarray(0, 10)));
    let most = threads();
    for (let i = 0; i < 20; i++) {
      await sleep(20);
      most = Math.max(most, threads());
    }
    // (a few threads of slack: Node starts its libuv pool of 4 on first use; before the fix: ~500)
    expect(most, "threads of the daemon while 600 connections wait").toBeLessThanOrEqual(before + 8);

    const spec = entrySpec("idle-flood-push", [16 * MiB]);
    const hashes = await putEntry(s.client, spec);
    const res = await s.client.batchTransfer([spec.id], t.peerAddress, "push", { timeoutMs: 30_000 });
    expectAllOk(res.results);
    expect(await fetchHashes(t.client, spec.id)).toEqual(hashes);

    // Shed at once (more than 64 pending from one address), or closed at the 1 s deadline.
    const outcomes = await Promise.all(idle.map((c) => c.outcome(5_000)));
    expect(outcomes.filter((o) => o.state !== "closed" || o.received !== 0)).toEqual([]);
    await t.client.release(spec.id);
    expect(alive(t)).toBe(true);
  });

  it("1,000 idle authenticated connections cost the daemon no thread each (its I/O loops serve them all), stay open, and a real PUSH and PULL beside them are byte-exact", async () => {
    const threads = () => readdirSync(`/proc/${t.proc.child.pid}/task`).length;
    const before = threads();
    const idle: RawDataConnection[] = [];
    onTestFinished(() => idle.forEach((c) => c.destroy()));
    // In groups, as peers would open them: each proves the token and then says nothing.
    for (let i = 0; i < 1000; i += 50) {
      const group = await Promise.all(Array.from({ length: 50 }, () => RawDataConnection.open(t.dataAddress)));
      idle.push(...group);
      const verdicts = await Promise.all(group.map((c) => authenticate(c, TOKEN)));
      for (const v of verdicts) expect(v.verdict !== "closed" && v.verdict.type).toBe(FrameType.HELLO_OK);
    }
    // (a few threads of slack: Node starts its libuv pool of 4 on first use; a thread per connection: 1,000)
    expect(threads(), "threads of the daemon with 1,000 authenticated idle connections").toBeLessThanOrEqual(before + 8);

    const spec = entrySpec("idle-authenticated", [16 * MiB, 64 * 1024, 1]);
    const hashes = await putEntry(s.client, spec);
    expectAllOk((await s.client.batchTransfer([spec.id], t.peerAddress, "push", { timeoutMs: 30_000 })).results);
    expect(await fetchHashes(t.client, spec.id)).toEqual(hashes);
    expectAllOk((await s.client.batchTransfer([spec.id], t.peerAddress, "pull", { timeoutMs: 30_000 })).results);
    expect(await fetchHashes(s.client, spec.id)).toEqual(hashes);
    await s.client.release(spec.id);
    // An authenticated peer may stay idle: none was closed.
    const closed = (await Promise.all(idle.map((c) => c.outcome(0)))).filter((o) => o.state === "closed");
    expect(closed.length).toBe(0);
    expect(alive(t)).toBe(true);
  });
});

describe("a peer killed mid-transfer", () => {
  /** Outlives every victim. */
  let survivor: PeerDaemon;
  const DEADLINE_MS = 10_000;

  beforeAll(async () => {
    survivor = await daemon({ bufferSize: "768MiB" });
  });

  /** A bystander entry on the survivor, so that "the sum of its live entries" is not zero. */
  async function bystander(id: string): Promise<EntrySpec> {
    const spec = entrySpec(id, [3 * MiB + 5, 17]);
    await putEntry(survivor.client, spec);
    releaseAfter([id]);
    return spec;
  }

  function releaseAfter(ids: string[]): void {
    onTestFinished(async () => {
      await Promise.all(ids.map((id) => survivor.client.release(id).catch(() => {})));
    });
  }

  // A batch moves in chunks that commit on their own, so the ids whose chunk committed
  // before the kill may succeed; every other id must fail UNAVAILABLE, and the kill must
  // have come before the end (checked through the byte counters).

  it("PUSH to a target killed with SIGKILL: the ids not committed fail UNAVAILABLE within the deadline, the source keeps them intact, accounting exact, and it pushes to a new peer", async () => {
    const keep = await bystander("push-kill-bystander");
    const list = specs("push-kill", 6, 32 * MiB);
    const hashes = await putAll(survivor, list);
    releaseAfter(list.map((s) => s.id));
    const victim = await daemon({ bufferSize: "512MiB" });
    const sentBefore = (await counters(survivor)).bytesSent;

    const t0 = Date.now();
    const batch = survivor.client.batchTransfer(list.map((s) => s.id), victim.peerAddress, "push", {
      deadlineMs: DEADLINE_MS,
      timeoutMs: DEADLINE_MS + 10_000,
    });
    const flowing = await until(async () => (await counters(victim)).bytesReceived > 0, 10_000);
    await kill9(victim);
    const res = await batch;
    const elapsed = Date.now() - t0;

    expect(flowing, "the data was flowing when the target was killed").toBe(true);
    expect((await counters(survivor)).bytesSent - sentBefore, "killed before the end").toBeLessThan(6 * 32 * MiB);
    expect(res.results.map((r) => r.transferId)).toEqual(list.map((s) => s.id));
    const failed = res.results.filter((r) => r.code !== status.OK);
    expect(failed.length, "ids not committed before the kill").toBeGreaterThan(0);
    expect(codeCounts(failed), JSON.stringify(failed.map((r) => r.message).slice(0, 3))).toEqual({ UNAVAILABLE: failed.length });
    expect(elapsed, "failed within the deadline").toBeLessThan(DEADLINE_MS);
    const kept = list.filter((s) => failed.some((r) => r.transferId === s.id));
    for (const r of res.results.filter((r) => r.code === status.OK)) {
      await expect(survivor.client.stat(r.transferId), r.transferId).rejects.toMatchObject({ reason: "transferred" });
    }
    for (const s of kept) {
      const info = await survivor.client.stat(s.id);
      expect(info.state, s.id).toBe(EntryState.ENTRY_STATE_SEALED);
      expect(info.readers, `${s.id}: no lease left behind`).toBe(0);
    }
    expect(await expectExactAccounting(survivor)).toBe(entryBytes(keep) + kept.reduce((sum, s) => sum + entryBytes(s), 0));
    expect(alive(survivor)).toBe(true);

    // A fresh peer gets the entries the dead one did not, intact.
    const fresh = await daemon({ bufferSize: "512MiB" });
    const again = await survivor.client.batchTransfer(kept.map((s) => s.id), fresh.peerAddress, "push");
    expectAllOk(again.results);
    for (const s of [kept[0]!, kept.at(-1)!]) expect(await fetchHashes(fresh.client, s.id), s.id).toEqual(hashes.get(s.id));
    expect(await expectExactAccounting(survivor)).toBe(entryBytes(keep));
    await fresh.stop();
  });

  it("PULL from a source killed with SIGKILL: the ids not completed fail UNAVAILABLE within the deadline, no half-written entry here, accounting exact, and it pulls from a new peer", async () => {
    const keep = await bystander("pull-kill-bystander");
    const victim = await daemon({ bufferSize: "512MiB" });
    const list = specs("pull-kill", 6, 32 * MiB);
    const hashes = await putAll(victim, list);
    releaseAfter(list.map((s) => s.id));
    const receivedBefore = (await counters(survivor)).bytesReceived;

    const t0 = Date.now();
    const batch = survivor.client.batchTransfer(list.map((s) => s.id), victim.peerAddress, "pull", {
      deadlineMs: DEADLINE_MS,
      timeoutMs: DEADLINE_MS + 10_000,
    });
    const flowing = await until(async () => (await counters(survivor)).bytesReceived > receivedBefore, 10_000);
    await kill9(victim);
    const res = await batch;
    const elapsed = Date.now() - t0;

    expect(flowing, "the data was flowing when the source was killed").toBe(true);
    expect((await counters(survivor)).bytesReceived - receivedBefore, "killed before the end").toBeLessThan(6 * 32 * MiB);
    expect(res.results.map((r) => r.transferId)).toEqual(list.map((s) => s.id));
    const failed = res.results.filter((r) => r.code !== status.OK);
    expect(failed.length, "ids not completed before the kill").toBeGreaterThan(0);
    expect(codeCounts(failed), JSON.stringify(failed.map((r) => r.message).slice(0, 3))).toEqual({ UNAVAILABLE: failed.length });
    expect(elapsed, "failed within the deadline").toBeLessThan(DEADLINE_MS);
    const landed = list.filter((s) => !failed.some((r) => r.transferId === s.id));
    for (const r of failed) await expect(survivor.client.stat(r.transferId), r.transferId).rejects.toBeInstanceOf(NotFoundError);
    for (const s of landed) expect(await fetchHashes(survivor.client, s.id), s.id).toEqual(hashes.get(s.id));
    expect(await expectExactAccounting(survivor)).toBe(entryBytes(keep) + landed.reduce((sum, s) => sum + entryBytes(s), 0));
    expect(alive(survivor)).toBe(true);

    // A fresh peer: the survivor pulls from it.
    const fresh = await daemon({ bufferSize: "256MiB" });
    const next = entrySpec("pull-kill-fresh", [5 * MiB, 1]);
    const nextHashes = await putEntry(fresh.client, next);
    releaseAfter([next.id]);
    expectAllOk((await survivor.client.batchTransfer([next.id], fresh.peerAddress, "pull")).results);
    expect(await fetchHashes(survivor.client, next.id)).toEqual(nextHashes);
    await fresh.stop();
  });

  it("an initiator killed mid-PUSH and mid-PULL: the survivor undoes its reservations by deadline + grace, keeps its own entries, and no byte leaks", async () => {
    const keep = await bystander("init-kill-bystander");
    const outgoing = specs("init-kill-out", 4, 32 * MiB); // the survivor's, pulled by the victim
    const incoming = specs("init-kill-in", 12, 32 * MiB); // the victim's, pushed to the survivor
    const outHashes = await putAll(survivor, outgoing);
    releaseAfter([...outgoing, ...incoming].map((s) => s.id));
    const victim = await daemon({ bufferSize: "512MiB" });
    const inHashes = await putAll(victim, incoming);
    const before = await counters(survivor);
    // Long enough that a busy machine does not end the victim's batches before the kill.
    const deadlineMs = 8_000;

    const state = async () => {
      const stat = (id: string) => survivor.client.stat(id).then((e) => e, () => undefined);
      return {
        incoming: await Promise.all(incoming.map((s) => stat(s.id))),
        outgoing: await Promise.all(outgoing.map((s) => stat(s.id))),
      };
    };
    const t0 = Date.now();
    const pushing = victim.client.batchTransfer(incoming.map((s) => s.id), survivor.peerAddress, "push", { deadlineMs }).catch(() => undefined);
    const pulling = victim.client.batchTransfer(outgoing.map((s) => s.id), survivor.peerAddress, "pull", { deadlineMs }).catch(() => undefined);
    // Frozen (SIGSTOP: at once, mid-flight) as soon as the survivor holds room for an incoming
    // entry and a lease on an outgoing one, then killed.
    const reserved = await until(async () => {
      const now = await state();
      return now.incoming.some((e) => e?.state === EntryState.ENTRY_STATE_OPEN) && now.outgoing.some((e) => (e?.readers ?? 0) > 0);
    }, 10_000, 1);
    victim.proc.child.kill("SIGSTOP");
    // What the victim finished before it froze is final; calls it sent are handled by now.
    await sleep(500);
    const atKill = await state();
    await kill9(victim);
    await Promise.all([pushing, pulling]);
    expect(reserved, "the survivor held reservations both ways when the initiator was killed").toBe(true);
    const undoneIn = incoming.filter((_, i) => atKill.incoming[i]?.state === EntryState.ENTRY_STATE_OPEN);
    const committedIn = incoming.filter((_, i) => atKill.incoming[i]?.state === EntryState.ENTRY_STATE_SEALED);
    const leasedOut = outgoing.filter((_, i) => (atKill.outgoing[i]?.readers ?? 0) > 0);
    const presentOut = outgoing.filter((_, i) => atKill.outgoing[i] !== undefined);
    // The kill lands mid-transfer in one direction at least (which one is a race of milliseconds).
    expect(undoneIn.length + leasedOut.length, "entries left half-written or leased by the kill").toBeGreaterThan(0);

    // The survivor still serves at once, while its reservations wait for their timers.
    expect(alive(survivor)).toBe(true);
    expect((await survivor.client.serverInfo()).version).not.toBe("");
    // By the deadline + grace (+ slack for a busy machine), every reservation is undone.
    const expected = entryFootprint(keep) + [...committedIn, ...presentOut].reduce((sum, s) => sum + entryFootprint(s), 0);
    const settled = await until(async () => (await survivor.client.serverInfo()).bytesUsed === expected, deadlineMs + RESERVATION_GRACE_MS + 10_000 - (Date.now() - t0), 50);
    expect(settled, `bytesUsed back to ${expected} by deadline + grace`).toBe(true);
    await expectExactAccounting(survivor);
    for (const s of undoneIn) await expect(survivor.client.stat(s.id), `${s.id}: half-written`).rejects.toBeInstanceOf(NotFoundError);
    for (const s of committedIn) expect(await fetchHashes(survivor.client, s.id), `${s.id}: committed`).toEqual(inHashes.get(s.id));
    for (const s of presentOut) {
      const info = await survivor.client.stat(s.id);
      expect(info.state, s.id).toBe(EntryState.ENTRY_STATE_SEALED);
      expect(info.readers, `${s.id}: lease released`).toBe(0);
    }
    expect((await counters(survivor)).transferred - before.transferred, "dropped as transferred").toBe(outgoing.length - presentOut.length);
    for (const s of leasedOut) expect(await fetchHashes(survivor.client, s.id), s.id).toEqual(outHashes.get(s.id));

    // And it moves entries with a fresh peer.
    const fresh = await daemon({ bufferSize: "256MiB" });
    const res = await survivor.client.batchTransfer(presentOut.map((s) => s.id), fresh.peerAddress, "push");
    expectAllOk(res.results);
    expect(await fetchHashes(fresh.client, presentOut[0]!.id)).toEqual(outHashes.get(presentOut[0]!.id));
    await fresh.stop();
  });
});

describe("shutdown while holding reservations for a peer", () => {
  // A peer that prepared a transfer and then went quiet (died, or gave up at its deadline)
  // leaves reservations here until their timers; SIGTERM in that window must still drain.
  it.each([
    ["room reserved by PrepareReceive", "receive"],
    ["an entry held by PrepareSend", "send"],
  ] as const)("drains and exits 0 on SIGTERM with %s and never finished", async (_what, kind) => {
    const d = await daemon({ bufferSize: "64MiB" });
    const peer = new Peer(d.peerAddress, TOKEN);
    onTestFinished(() => peer.close());
    if (kind === "receive") {
      const prep = await peer.call(
        KvFerryPeerService.prepareReceive,
        { entries: [{ transferId: "held-in", parts: [{ name: "p", size: MiB }] }], deadlineMs: 60_000, sourceNode: "it" },
        5_000,
      );
      expect(prep.entries[0]!.error, JSON.stringify(prep.entries[0]!.error)).toBeUndefined();
    } else {
      await d.client.put("held-out", "p", seededBytes(MiB, "held-out"), { seal: true });
      const prep = await peer.call(
        KvFerryPeerService.prepareSend,
        { transferIds: ["held-out"], deadlineMs: 60_000, destinationNode: "it" },
        5_000,
      );
      expect(prep.entries[0]!.error, JSON.stringify(prep.entries[0]!.error)).toBeUndefined();
    }
    expect((await d.client.serverInfo()).bytesUsed).toBe(MiB);

    const code = await d.proc.stop(15_000);
    expect({ code, signal: d.proc.child.signalCode }).toEqual({ code: 0, signal: null });
    expect(d.proc.logs.map((l) => l.msg)).toContain("stopped");
  });
});
