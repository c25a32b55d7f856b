// The local path: clients on the daemon's node write and read entries in the daemon's pool
// (the memfd its local socket hands out), real daemons and real client processes. Round
// trips by hash, mixed with inline clients; a part never committed, or committed short,
// never reaches a reader; a client killed holding a reservation and a loan gives its room
// back when their leases lapse; a client of another uid is refused by the kernel's word;
// a locally written entry moves to another daemon and is read there in place; and a client
// that scribbles over the whole mapping damages entry bytes only, never the daemon.
import { spawn } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { FailedPreconditionError, InvalidArgumentError, NotFoundError, ResourceExhaustedError, UnavailableError } from "../../src/errors.js";
import { MiB, REPO, sleep } from "../helpers/daemon.js";
import { freePort } from "../helpers/ports.js";
import { metricValue, rejectionOf } from "../helpers/local-path.js";
import { digest, expectAllOk, seededBytes, startPeerDaemon, type PeerDaemon, type PeerDaemonOptions } from "../helpers/transfer.js";

const started: PeerDaemon[] = [];
async function daemon(o: PeerDaemonOptions = {}): Promise<PeerDaemon> {
  const d = await startPeerDaemon({ bufferSize: "256MiB", ...o });
  started.push(d);
  return d;
}
afterAll(async () => {
  await Promise.all(started.map((d) => d.stop()));
});

const ADDON = join(REPO, "build/Release/kvferry_native.node");
const CLIENT = join(REPO, "dist/client/client.js");

/** Runs `code` (an ES module body) in a child node process; resolves with its stdout lines as they come. */
function child(code: string, o: { uid?: number; gid?: number } = {}) {
  const proc = spawn(process.execPath, ["--input-type=module", "-e", code], { stdio: ["ignore", "pipe", "pipe"], cwd: "/", ...o });
  let out = "";
  let err = "";
  proc.stdout.on("data", (d) => (out += d));
  proc.stderr.on("data", (d) => (err += d));
  const exited = new Promise<number | null>((resolve) => proc.once("exit", (code) => resolve(code)));
  const line = async (prefix: string, timeoutMs = 60_000): Promise<string> => {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const found = out.split("\n").find((l) => l.startsWith(prefix));
      if (found !== undefined) return found.slice(prefix.length);
      if (proc.exitCode !== null || Date.now() > end) throw new Error(`no "${prefix}" line (exit ${proc.exitCode}); stdout: ${out}; stderr: ${err}`);
      await sleep(50);
    }
  };
  return { proc, exited, line, output: () => ({ out, err }) };
}

describe("round trips through the local path", () => {
  it("1 B to 64 MiB by hash, interleaved with inline puts and gets of the same entries", async () => {
    const d = await daemon();
    const pool = await d.client.localPool();
    expect(pool.memory.length).toBe(256 * MiB);
    const sizes = [1, 4096, 4097, 3 * MiB + 5, 64 * MiB];
    for (const [i, size] of sizes.entries()) {
      const data = seededBytes(size, `local-${size}`);
      const extra = seededBytes(17, `extra-${size}`);
      // Written locally, read inline and locally; written inline, read locally.
      const info = await d.client.putLocal(`lp-${i}`, new Map([["layer.0", data], ["layer.1", extra]]), { seal: true });
      expect(info.state).toBe(2); // SEALED
      const inline = await d.client.getStream(`lp-${i}`);
      expect(digest(inline.parts.get("layer.0")!)).toBe(digest(data));
      const loan = await d.client.getLocal(`lp-${i}`, { consume: true });
      expect(digest(loan.bytes("layer.0"))).toBe(digest(data));
      expect(digest(loan.bytes("layer.1"))).toBe(digest(extra));
      await loan.return();
      await expect(d.client.stat(`lp-${i}`)).rejects.toMatchObject({ reason: "consumed" });

      await d.client.put(`in-${i}`, "p", data.subarray(0, Math.min(size, 4 * MiB)), { seal: true });
      const back = await d.client.getLocal(`in-${i}`);
      expect(digest(back.bytes("p"))).toBe(digest(data.subarray(0, Math.min(size, 4 * MiB))));
      await back.return();
    }
    const info = await d.client.serverInfo();
    expect(info.local?.socket).toMatch(/kvferry-\d+\.sock$/);
    expect(info.local?.poolId).toBe(pool.poolId);
  });

  it("512 MiB in one part, written in place and read in place, by hash", async () => {
    const d = await daemon({ bufferSize: "640MiB" });
    const data = seededBytes(512 * MiB, "big");
    await d.client.putLocal("big", new Map([["kv", data]]), { seal: true });
    const loan = await d.client.getLocal("big", { consume: true });
    expect(digest(loan.bytes("kv"))).toBe(digest(data));
    await loan.return();
    expect((await d.client.serverInfo()).bytesUsed).toBe(0);
  });

  it("writes and commits part by part; a reader never sees a part not committed, or committed short", async () => {
    const d = await daemon();
    const w = await d.client.reserveLocal("pbp", [{ name: "layer.0", size: 1000 }, { name: "layer.1", size: 2000 }, { name: "layer.2", size: 10 }]);
    w.write("layer.0", seededBytes(1000, "l0"));
    await w.commit(["layer.0"]);
    // layer.0 readable now; the whole entry is not (not sealed, layer.1 not committed).
    const first = await d.client.get("pbp", { parts: ["layer.0"], waitMs: 0 });
    expect(digest(first.parts.get("layer.0")!)).toBe(digest(seededBytes(1000, "l0")));
    await expect(d.client.get("pbp", { parts: ["layer.1"], waitMs: 0 })).rejects.toBeInstanceOf(Error);
    // Committed with fewer bytes than reserved: INVALID_ARGUMENT naming it, and abandoned.
    const short = await rejectionOf(d.client.raw.commit.bind(d.client.raw), { reservationId: w.reservationId, parts: [{ name: "layer.1", bytes: 1999 }], seal: true });
    expect(short.message).toMatch(/parts\[0\]\.bytes.*1999 bytes written of the 2000 reserved/);
    // The commit failed before its seal: the entry is not complete, and layer.1 never readable.
    await expect(d.client.getLocal("pbp", { waitMs: 0 })).rejects.toBeInstanceOf(FailedPreconditionError);
    await expect(d.client.getLocal("pbp", { parts: ["layer.1"], waitMs: 0 })).rejects.toBeInstanceOf(Error);
    await w.abort().catch(() => {});
    expect((await d.client.serverInfo()).bytesUsed).toBe(0);
  });

  it("abort gives everything back, and extents of the pool are never lent twice for writing", async () => {
    const d = await daemon({ bufferSize: "16MiB" });
    const a = await d.client.reserveLocal("ab-a", [{ name: "p", size: 6 * MiB }]);
    const b = await d.client.reserveLocal("ab-b", [{ name: "p", size: 6 * MiB }]);
    const [va] = a.views("p");
    const [vb] = b.views("p");
    expect(va!.byteOffset + va!.length <= vb!.byteOffset || vb!.byteOffset + vb!.length <= va!.byteOffset).toBe(true);
    await a.abort();
    await expect(d.client.stat("ab-a")).rejects.toBeInstanceOf(NotFoundError);
    b.write("p", seededBytes(6 * MiB, "b"));
    await b.commit(undefined, { seal: true });
    expect((await d.client.serverInfo()).bytesUsed).toBeGreaterThanOrEqual(6 * MiB);
    expect(await rejectionOf(d.client.raw.abort.bind(d.client.raw), { reservationId: a.reservationId })).toBeInstanceOf(NotFoundError);
  });
});

describe("clients that die or do not belong", () => {
  it("a client SIGKILLed holding a reservation and a loan: room back once their leases lapse, the lent entry intact", async () => {
    const d = await daemon();
    const kept = seededBytes(5 * MiB, "kept");
    await d.client.putLocal("kill-kept", new Map([["p", kept]]), { seal: true });
    const before = (await d.client.serverInfo()).bytesUsed;
    const c = child(`
      import { KvferryClient } from ${JSON.stringify(CLIENT)};
      const client = new KvferryClient(${JSON.stringify(d.address)});
      const w = await client.reserveLocal("kill-reserved", [{ name: "p", size: 8 << 20 }], { reservationTtlMs: 2000 });
      w.views("p")[0].fill(7);
      const loan = await client.getLocal("kill-kept", { consume: true, loanTtlMs: 2000 });
      console.log("held " + loan.bytes("p").length);
      setInterval(() => {}, 1000);
    `);
    expect(await c.line("held ")).toBe(String(5 * MiB));
    expect((await d.client.serverInfo()).bytesUsed).toBeGreaterThan(before);
    c.proc.kill("SIGKILL");
    await c.exited;
    // The reservation's and the loan's leases lapse (2 s): the room comes back, the consume is undone.
    let used = Number.NaN;
    for (const end = Date.now() + 30_000; Date.now() < end; await sleep(200)) {
      used = (await d.client.serverInfo()).bytesUsed;
      if (used === before) break;
    }
    expect(used).toBe(before);
    await expect(d.client.stat("kill-reserved")).rejects.toBeInstanceOf(NotFoundError);
    const again = await d.client.getLocal("kill-kept", { consume: true });
    expect(digest(again.bytes("p"))).toBe(digest(kept));
    await again.return();
  });

  it("a client of another uid is refused with the reason, unless the daemon allows its uid", async () => {
    // 0666 socket (some ids allowed), so that the refusal is the daemon's, by SO_PEERCRED.
    const d = await daemon({ args: ["--local-allowed-gids", "4242", "--metrics-listen", "127.0.0.1:0"] });
    const socket = (await d.client.serverInfo()).local!.socket;
    const probe = `
      import { createRequire } from "node:module";
      const addon = createRequire(import.meta.url)(${JSON.stringify(ADDON)});
      const r = addon.mapLocalPool(${JSON.stringify(socket)}, 5000);
      console.log("header " + r.header);
      console.log("mapped " + (r.buffer ? r.buffer.byteLength : 0));
    `;
    const nobody = child(probe, { uid: 65534, gid: 65534 });
    expect(await nobody.line("header ")).toMatch(/"ok":false,"reason":"uid 65534 \(gid 65534\) is not the daemon's uid 0/);
    expect(await nobody.line("mapped ")).toBe("0");

    const allowed = await daemon({ args: ["--local-allowed-uids", "65534", "--metrics-listen", "127.0.0.1:0"] });
    const socket2 = (await allowed.client.serverInfo()).local!.socket;
    const ok = child(probe.replace(JSON.stringify(socket), JSON.stringify(socket2)), { uid: 65534, gid: 65534 });
    expect(await ok.line("header ")).toMatch(/"ok":true/);
    expect(await ok.line("mapped ")).toBe(String(256 * MiB));
    // Both counted on the daemons' /metrics.
    expect(await metricValue(d, "kvferry_daemon_local_clients_refused_total")).toBe(1);
    expect(await metricValue(allowed, "kvferry_daemon_local_clients_admitted_total")).toBe(1);
  });

  it("a default socket path that is taken (another user's file in /tmp) leaves the daemon serving inline; a configured one fails its start, named", async () => {
    const port = await freePort();
    const taken = join(process.env.XDG_RUNTIME_DIR || tmpdir(), `kvferry-${port}.sock`);
    writeFileSync(taken, "not a socket");
    try {
      const d = await daemon({ args: ["--listen", `127.0.0.1:${port}`] });
      expect((await d.client.serverInfo()).local?.socket).toBe("");
      await expect(d.client.localPool()).rejects.toBeInstanceOf(UnavailableError);
      const data = seededBytes(MiB, "taken");
      await d.client.putLocal("taken", new Map([["p", data]]), { seal: true });
      expect(digest((await d.client.getLocal("taken")).bytes("p"))).toBe(digest(data));
      const err = await startPeerDaemon({ bufferSize: "16MiB", args: ["--local-socket", taken] }).then(
        (d2) => (started.push(d2), undefined),
        (e: Error) => e,
      );
      expect(err?.message).toMatch(/local_socket.*not a socket/);
    } finally {
      rmSync(taken, { force: true });
    }
  });

  it("a daemon with local_socket none serves no local path: the client goes inline", async () => {
    const d = await daemon({ args: ["--local-socket", "none"] });
    await expect(d.client.localPool()).rejects.toBeInstanceOf(UnavailableError);
    const data = seededBytes(3 * MiB, "inline");
    await d.client.putLocal("inl", new Map([["p", data]]), { seal: true });
    const loan = await d.client.getLocal("inl");
    expect(digest(loan.bytes("p"))).toBe(digest(data));
    await loan.return();
  });
});

describe("the local path and the rest of the store", () => {
  it("an entry written locally is pushed to a second daemon and read there in place, and pulled back by a loan naming its source", async () => {
    const [a, b] = await Promise.all([daemon(), daemon()]);
    const data = seededBytes(24 * MiB + 3, "moved");
    await a.client.putLocal("moved", new Map([["layer.0", data], ["layer.1", data.subarray(0, 1000)]]), { seal: true });
    expectAllOk((await a.client.batchTransfer(["moved"], b.peerAddress, "push")).results);
    const loan = await b.client.getLocal("moved", { consume: true });
    expect(digest(loan.bytes("layer.0"))).toBe(digest(data));
    expect(digest(loan.bytes("layer.1"))).toBe(digest(data.subarray(0, 1000)));
    await loan.return();
    expect((await b.client.serverInfo()).entries).toBe(0);

    // And the other way: a loan naming a source pulls the entry here first, then lends it.
    const back = seededBytes(5 * MiB, "pulled");
    await a.client.putLocal("pulled", new Map([["p", back]]), { seal: true });
    const pulled = await b.client.getLocal("pulled", { consume: true, source: a.peerAddress });
    expect(digest(pulled.bytes("p"))).toBe(digest(back));
    await pulled.return();
    await expect(a.client.stat("pulled")).rejects.toMatchObject({ reason: "transferred" });
  });

  it("a lent entry is not evicted while lent, nor room reserved for a writer given to another; returned, it is evictable", async () => {
    const d = await daemon({ bufferSize: "16MiB", args: ["--put-deadline-ms", "500"] });
    const lent = seededBytes(6 * MiB, "lent");
    await d.client.putLocal("lent", new Map([["p", lent]]), { seal: true });
    const loan = await d.client.getLocal("lent");
    // 12 MiB more fit only by evicting "lent": refused while it is lent, its bytes untouched.
    await expect(d.client.reserveLocal("big", [{ name: "p", size: 12 * MiB }])).rejects.toBeInstanceOf(ResourceExhaustedError);
    expect(digest(loan.bytes("p"))).toBe(digest(lent));
    await loan.return();
    const big = await d.client.reserveLocal("big", [{ name: "p", size: 12 * MiB }]);
    await expect(d.client.stat("lent")).rejects.toMatchObject({ reason: "evicted" });
    // The reservation's room is its own: a second writer cannot take it either.
    await expect(d.client.reserveLocal("big2", [{ name: "p", size: 8 * MiB }])).rejects.toBeInstanceOf(ResourceExhaustedError);
    await big.abort();
  });

  it("aborting (or the lapse of) a reservation whose entry was released never drops a newer entry of the same id", async () => {
    const d = await daemon();
    const old = await d.client.reserveLocal("reused", [{ name: "p", size: MiB }]);
    await d.client.release("reused");
    const fresh = seededBytes(MiB, "fresh-reused");
    await d.client.put("reused", "q", fresh, { seal: false }); // open: more parts may come
    await old.abort().catch(() => {});
    const got = await d.client.get("reused", { parts: ["q"], waitMs: 0 });
    expect(digest(got.parts.get("q")!)).toBe(digest(fresh));
  });

  it("a client that overwrites the whole mapping damages entry bytes only: the daemon's bookkeeping is not in it", async () => {
    const d = await daemon({ bufferSize: "64MiB" });
    await d.client.putLocal("victim", new Map([["p", seededBytes(MiB, "v")]]), { seal: true });
    const before = await d.client.stat("victim");
    const pool = await d.client.localPool();
    pool.memory.fill(0xa5);
    const after = await d.client.stat("victim");
    expect(after).toMatchObject({ transferId: "victim", state: before.state, bytes: before.bytes, partCount: 1 });
    expect((await d.client.list()).entries.map((e) => e.transferId)).toEqual(["victim"]);
    // The bytes are the scribbler's; the daemon still reserves, commits and lends correctly.
    expect((await d.client.getLocal("victim")).bytes("p").every((b) => b === 0xa5)).toBe(true);
    const fresh = seededBytes(2 * MiB, "fresh");
    await d.client.putLocal("fresh", new Map([["p", fresh]]), { seal: true });
    const loan = await d.client.getLocal("fresh");
    expect(digest(loan.bytes("p"))).toBe(digest(fresh));
    await loan.return();
  });

  it("refuses bad requests naming the field", async () => {
    const d = await daemon();
    const raw = d.client.raw;
    const bad = [
      [raw.reserve.bind(raw), { transferId: "", parts: [{ name: "p", size: 1 }] }, /transfer_id/],
      [raw.reserve.bind(raw), { transferId: "x", parts: [] }, /parts/],
      [raw.reserve.bind(raw), { transferId: "x", parts: [{ name: "p", size: 1 }, { name: "p", size: 2 }] }, /parts\[1\]\.name/],
      [raw.reserve.bind(raw), { transferId: "x", parts: [{ name: "p", size: 1 }], reservationTtlMs: 0 }, /reservation_ttl_ms/],
      [raw.commit.bind(raw), { reservationId: "nope", parts: [], seal: false }, /reservation_id/],
      [raw.returnLoan.bind(raw), { loanId: "nope", consumed: true }, /loan_id/],
      [raw.lend.bind(raw), { transferId: "absent", parts: [], waitMs: 0, consume: false, source: "" }, /absent/],
    ] as const;
    for (const [method, request, field] of bad) {
      const err = await rejectionOf(method as never, request);
      expect(err.message, JSON.stringify(request)).toMatch(field);
      expect(err).toSatisfy((e) => e instanceof InvalidArgumentError || e instanceof NotFoundError);
    }
    expect((await d.client.serverInfo()).bytesUsed).toBe(0);
  });
});
