// Transfers racing with each other and with peers that misbehave while holding the cluster
// token: a short deadline next to a long one, a handle garbled by the source, a WRITE
// through a handle lent for reading, an id re-put while its old entry is pushed, a peer
// trickling a frame, a data address that cannot be dialled. Each case once broke something
// that was not its own business; what must hold is that only the request at fault fails,
// with its own status, and that nothing is left reserved.
import { Server, ServerCredentials, status, type sendUnaryData, type ServerUnaryCall } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { NotFoundError } from "../../src/errors.js";
import { Peer } from "../../src/daemon/peers.js";
import type { TransferResult } from "../../src/gen/kvferry/v1/kvferry.js";
import {
  KvFerryPeerService,
  type PrepareReceiveRequest,
  type PrepareReceiveResponse,
  type PrepareSendRequest,
  type PrepareSendResponse,
} from "../../src/gen/kvferry/v1/peer.js";
import { MiB, sleep } from "../helpers/daemon.js";
import {
  TOKEN,
  digest,
  entrySpec,
  expectExactAccounting,
  fetchHashes,
  putEntry,
  seededBytes,
  startPeerDaemon,
  type PeerDaemon,
  expectAllOk,
} from "../helpers/transfer.js";
import { handshakeHandlers } from "../helpers/peer-auth.js";
import { FrameType, RawDataConnection, WireCode, authenticate, header, stallingRelay, type Frame } from "../helpers/wire.js";

const KiB = 1024;
let a: PeerDaemon;
let b: PeerDaemon;

beforeAll(async () => {
  const started = await Promise.allSettled([startPeerDaemon({ bufferSize: "2GiB" }), startPeerDaemon({ bufferSize: "2GiB" })]);
  [a, b] = started.map((r) => (r.status === "fulfilled" ? r.value : undefined!));
  const failed = started.find((r) => r.status === "rejected");
  if (failed) throw failed.reason; // afterAll stops the one that started
});

afterAll(async () => {
  await Promise.all([a, b].map((d) => d?.stop()));
});

async function releaseEverywhere(...ids: string[]): Promise<void> {
  for (const d of [a, b]) for (const id of ids) await d.client.release(id).catch(() => {});
}

/** "OK", or "CODE: message": what an assertion on a result should show when it fails. */
function describeResult(r: TransferResult): string {
  return r.code === status.OK ? "OK" : `${status[r.code]}: ${r.message}`;
}

type PeerMethod = "hello" | "prepareReceive" | "commitReceive" | "abortReceive" | "prepareSend" | "finishSend";

/**
 * A token-holding peer at its own address (it passes the handshake) that forwards every call to `to`'s peer API;
 * `mutate` may alter a method's reply on the way back (a peer that lies).
 */
async function fakePeer(to: PeerDaemon, mutate: Partial<Record<PeerMethod, (reply: any) => unknown>> = {}): Promise<string> {
  const real = new Peer(to.peerAddress, TOKEN);
  const fake = new Server();
  const forward = (method: PeerMethod) => (call: ServerUnaryCall<unknown, unknown>, cb: sendUnaryData<unknown>) => {
    real.call(KvFerryPeerService[method], call.request as never, 5_000).then(
      (reply) => cb(null, mutate[method] ? mutate[method]!(reply) : reply),
      (e: Error) => cb(e),
    );
  };
  const methods: PeerMethod[] = ["hello", "prepareReceive", "commitReceive", "abortReceive", "prepareSend", "finishSend"];
  fake.addService(KvFerryPeerService, { ...handshakeHandlers(TOKEN), ...Object.fromEntries(methods.map((m) => [m, forward(m)])) });
  const port = await new Promise<number>((resolve, reject) =>
    fake.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  onTestFinished(() => {
    fake.forceShutdown();
    real.close();
  });
  return `127.0.0.1:${port}`;
}

describe("transfers that must not hurt their neighbours", () => {
  it("a batch whose deadline expires mid-transfer does not fail a concurrent batch to the same peer", async () => {
    // The short deadline lands at a different point of the transfer each round.
    for (const [round, deadlineMs] of [80, 120, 160, 200].entries()) {
      const victim = entrySpec(`race-long-${round}`, [128 * MiB, 128 * MiB, 128 * MiB, 128 * MiB]);
      const short = entrySpec(`race-short-${round}`, [128 * MiB, 128 * MiB, 128 * MiB, 128 * MiB]);
      const hashes = await putEntry(a.client, victim);
      await putEntry(a.client, short);
      onTestFinished(() => releaseEverywhere(victim.id, short.id));
      const [v, s] = await Promise.all([
        a.client.batchTransfer([victim.id], b.peerAddress, "push", { deadlineMs: 60_000 }),
        a.client.batchTransfer([short.id], b.peerAddress, "push", { deadlineMs }),
      ]);
      expect(describeResult(v.results[0]!), `round ${round}: the long batch`).toBe("OK");
      expect(["OK", "DEADLINE_EXCEEDED"], `round ${round}: the short batch`).toContain(status[s.results[0]!.code]);
      expect(await fetchHashes(b.client, victim.id)).toEqual(hashes);
      await releaseEverywhere(victim.id, short.id);
    }
    await expectExactAccounting(a);
    await expectExactAccounting(b);
  }, 300_000);

  it("a PULL from a source that sends a malformed batch handle, or parts that do not fill it, fails that batch and writes nothing here", async () => {
    const one = entrySpec("garbled-one", [64 * KiB]);
    const two = entrySpec("garbled-two", [64 * KiB, 1]);
    const hashes = await putEntry(b.client, one);
    await putEntry(b.client, two);
    onTestFinished(() => releaseEverywhere(one.id, two.id));
    for (const [garble, why] of [
      [(r: PrepareSendResponse) => void (r.batch!.handle = "not-a-handle"), /^UNAVAILABLE: .*handle/],
      [(r: PrepareSendResponse) => void (r.entries[1]!.parts[1]!.size += 1), /^UNAVAILABLE: .*batch handle holds/],
    ] as const) {
      const source = await fakePeer(b, { prepareSend: (r: PrepareSendResponse) => (garble(r), r) });
      const res = await a.client.batchTransfer([one.id, two.id], source, "pull", { keepSource: true });
      expect(res.results.map(describeResult)).toEqual([expect.stringMatching(why), expect.stringMatching(why)]);
      for (const id of [one.id, two.id]) await expect(a.client.stat(id)).rejects.toBeInstanceOf(NotFoundError);
      await expectExactAccounting(a);
      expect(await fetchHashes(b.client, one.id), "the source keeps its entries").toEqual(hashes);
    }
  });

  it("a handle lent for reading (PrepareSend) refuses data-plane WRITEs: the sealed source entry keeps its bytes", async () => {
    const spec = entrySpec("lent-for-reading", [64 * KiB]);
    const hashes = await putEntry(b.client, spec);
    onTestFinished(() => releaseEverywhere(spec.id));
    const peer = new Peer(b.peerAddress, TOKEN);
    onTestFinished(() => peer.close());
    const prep = await peer.call(
      KvFerryPeerService.prepareSend,
      { transferIds: [spec.id], deadlineMs: 10_000, destinationNode: "it" },
      5_000,
    );
    const handle = BigInt(prep.batch!.handle);
    const c = await RawDataConnection.open(b.dataAddress);
    onTestFinished(() => c.destroy());
    expect(((await authenticate(c, TOKEN)).verdict as Frame).type).toBe(FrameType.HELLO_OK);
    c.send(header({ type: FrameType.WRITE, requestId: 1n, handle, offset: 0n, length: 16n }), Buffer.alloc(16, 0xee));
    const f = await c.frame();
    expect(f !== "closed" && [f.type, f.requestId, f.status]).toEqual([FrameType.WRITE_ACK, 1n, WireCode.PERMISSION_DENIED]);
    // The same connection still reads through that handle.
    c.send(header({ type: FrameType.READ, requestId: 2n, handle, offset: 0n, length: 16n }));
    const r = await c.frame();
    expect(r !== "closed" && [r.type, r.status, r.length]).toEqual([FrameType.READ_DATA, WireCode.OK, 16n]);
    await c.read(16);
    await peer.call(KvFerryPeerService.finishSend, { completed: [], failed: [prep.entries[0]!.id], releaseSource: false }, 5_000);
    expect(await fetchHashes(b.client, spec.id)).toEqual(hashes);
  });

  it("a PUSH drops only the entry it moved, not a newer entry put under the same id meanwhile", async () => {
    const old = entrySpec("re-put", [256 * MiB, 256 * MiB]);
    await putEntry(a.client, old);
    onTestFinished(() => releaseEverywhere(old.id));
    const pushing = a.client.batchTransfer([old.id], b.peerAddress, "push", { deadlineMs: 60_000 });
    await sleep(40); // the push holds its lease on the old entry by now
    await a.client.release(old.id);
    const fresh = seededBytes(1024, "re-put-fresh");
    await a.client.put(old.id, "new", fresh, { seal: true });
    const res = await pushing;
    expect(["OK", "NOT_FOUND"]).toContain(status[res.results[0]!.code]);
    const got = await a.client.get(old.id, { waitMs: 0 });
    expect([...got.parts.keys()]).toEqual(["new"]);
    expect(digest(got.parts.get("new")!)).toBe(digest(fresh));
  });

  it("a peer trickling one byte every 2 s into a WRITE is cut off at the frame deadline (the 10 s I/O timeout), then SIGTERM drains at once", async () => {
    const c = await startPeerDaemon({ bufferSize: "64MiB", config: { shutdown_grace_ms: 1000 } });
    onTestFinished(async () => {
      c.proc.child.kill("SIGKILL");
      await c.proc.exited;
    });
    const peer = new Peer(c.peerAddress, TOKEN);
    onTestFinished(() => peer.close());
    const size = 1 * MiB;
    const prep = await peer.call(
      KvFerryPeerService.prepareReceive,
      { entries: [{ transferId: "trickled", parts: [{ name: "p", size }] }], deadlineMs: 600_000, sourceNode: "it" },
      5_000,
    );
    const handle = BigInt(prep.batch!.handle);
    const conn = await RawDataConnection.open(c.dataAddress);
    onTestFinished(() => conn.destroy());
    expect(((await authenticate(conn, TOKEN)).verdict as Frame).type).toBe(FrameType.HELLO_OK);
    const t0 = Date.now();
    conn.send(header({ type: FrameType.WRITE, requestId: 1n, handle, offset: 0n, length: BigInt(size) }), Buffer.alloc(1));
    // Each byte alone would reset a per-call timeout; the frame's deadline does not move.
    const trickle = setInterval(() => conn.isClosed || conn.send(Buffer.alloc(1)), 2_000);
    onTestFinished(() => clearInterval(trickle));
    while (!conn.isClosed && Date.now() - t0 < 20_000) await sleep(50);
    const cutOffAfter = Date.now() - t0;
    expect(conn.isClosed, "the daemon closed the trickling connection").toBe(true);
    expect(cutOffAfter).toBeGreaterThanOrEqual(9_000);
    expect(cutOffAfter).toBeLessThan(13_000);
    c.proc.child.kill("SIGTERM");
    const exited = await Promise.race([c.proc.exited.then(() => true), sleep(5_000).then(() => false)]);
    expect(exited, "the daemon exited within the grace").toBe(true);
    expect(c.proc.child.exitCode).toBe(0);
  }, 60_000);

  it("a PUSH to a target whose answer is unusable (a malformed batch handle, entries out of order) gives every reservation back before answering", async () => {
    const one = entrySpec("unusable-one", [64 * KiB]);
    const two = entrySpec("unusable-two", [64 * KiB]);
    const hashes = await putEntry(a.client, one);
    await putEntry(a.client, two);
    onTestFinished(() => releaseEverywhere(one.id, two.id));
    for (const [garble, why] of [
      [(r: PrepareReceiveResponse) => void (r.batch!.handle = "not-a-handle"), /^UNAVAILABLE: .*handle/],
      [(r: PrepareReceiveResponse) => void r.entries.reverse(), /^UNAVAILABLE: .*out of order/],
    ] as const) {
      const before = (await b.client.serverInfo()).bytesUsed;
      const target = await fakePeer(b, { prepareReceive: (r: PrepareReceiveResponse) => (garble(r), r) });
      const res = await a.client.batchTransfer([one.id, two.id], target, "push", { deadlineMs: 20_000 });
      expect(res.results.map(describeResult)).toEqual([expect.stringMatching(why), expect.stringMatching(why)]);
      expect((await b.client.serverInfo()).bytesUsed - before, "bytes still reserved on the target").toBe(0);
      expect(await fetchHashes(a.client, one.id), "the source keeps its entries").toEqual(hashes);
    }
  });

  it("a peer that advertises its data address by name is reached: the daemon resolves it when greeting, not the engine's I/O loop", async () => {
    const spec = entrySpec("by-name", [64 * KiB, 3]);
    const hashes = await putEntry(a.client, spec);
    onTestFinished(() => releaseEverywhere(spec.id));
    const port = b.dataAddress.slice(b.dataAddress.lastIndexOf(":") + 1);
    const target = await fakePeer(b, { hello: (r: object) => ({ ...r, dataAddress: `localhost:${port}` }) });
    expectAllOk((await a.client.batchTransfer([spec.id], target, "push", { deadlineMs: 20_000 })).results);
    expect(await fetchHashes(b.client, spec.id)).toEqual(hashes);
    const nowhere = await fakePeer(b, { hello: (r: object) => ({ ...r, dataAddress: `no-such-host.invalid:${port}` }) });
    const res = await b.client.batchTransfer([spec.id], nowhere, "pull", { deadlineMs: 20_000, keepSource: true });
    expect(describeResult(res.results[0]!)).toMatch(/^UNAVAILABLE: .*no-such-host\.invalid.*does not resolve/);
  });

  it("a PUSH to a peer whose data plane speaks another protocol fails UNAVAILABLE naming both, before anything is reserved", async () => {
    const spec = entrySpec("other-protocol", [64 * KiB]);
    const hashes = await putEntry(a.client, spec);
    onTestFinished(() => releaseEverywhere(spec.id));
    const before = (await b.client.serverInfo()).bytesUsed;
    const target = await fakePeer(b, { hello: (r: object) => ({ ...r, protocol: "rdma" }) });
    const res = await a.client.batchTransfer([spec.id], target, "push", { deadlineMs: 20_000 });
    expect(describeResult(res.results[0]!)).toMatch(/^UNAVAILABLE: .*"rdma", this daemon over "tcp"/);
    expect((await b.client.serverInfo()).bytesUsed - before).toBe(0);
    expect(await fetchHashes(a.client, spec.id), "the source keeps its entry").toEqual(hashes);
  });

  it("a PUSH to a peer advertising an undiallable data address fails with a precise status and gives the reservation back before answering", async () => {
    const spec = entrySpec("undiallable", [4 * MiB]);
    const hashes = await putEntry(a.client, spec);
    onTestFinished(() => releaseEverywhere(spec.id));
    const before = (await b.client.serverInfo()).bytesUsed;
    const target = await fakePeer(b, { hello: (r: object) => ({ ...r, dataAddress: "no-port-here" }) });
    const res = await a.client.batchTransfer([spec.id], target, "push", { deadlineMs: 20_000 });
    expect(describeResult(res.results[0]!)).toMatch(/^UNAVAILABLE: .*no-port-here/);
    expect((await b.client.serverInfo()).bytesUsed - before, "bytes still reserved on the target").toBe(0);
    expect(await fetchHashes(a.client, spec.id), "the source keeps its entry").toEqual(hashes);
  });

  it("an entry that failed NOT_FOUND before the deadline stays NOT_FOUND when another entry of the batch runs late", async () => {
    const big = entrySpec("late-big", [4 * MiB, 4 * MiB, 4 * MiB]);
    await putEntry(b.client, big);
    onTestFinished(() => releaseEverywhere(big.id));
    // b's data plane behind a relay that swallows every READ: the big entry runs late
    // however fast the machine is, while the absent one failed at once.
    const relay = await stallingRelay(b.dataAddress, () => false);
    onTestFinished(() => relay.close());
    const source = await fakePeer(b, { hello: (r: object) => ({ ...r, dataAddress: relay.address }) });
    // First contact (two handshakes: a with the fake, the fake with b) before the clock that matters starts.
    const warm = await a.client.batchTransfer(["late-none"], source, "pull", { deadlineMs: 10_000 });
    expect(describeResult(warm.results[0]!)).toMatch(/^NOT_FOUND/);
    const res = await a.client.batchTransfer(["late-absent", big.id], source, "pull", { deadlineMs: 5_000, keepSource: true });
    expect(status[res.results[0]!.code], describeResult(res.results[0]!)).toBe("NOT_FOUND");
    expect(status[res.results[1]!.code], describeResult(res.results[1]!)).toBe("DEADLINE_EXCEEDED");
    await expectExactAccounting(a);
  });
});
