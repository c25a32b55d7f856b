// One node id, one running daemon: a daemon started with the id of one that runs is refused
// (exit 2 naming node_id, its value, where it came from and the holder's addresses), with
// every metadata backend; a record left by a daemon that died is taken over at once, not
// after its TTL (also when the new daemon listens on the same port under another name); a
// holder that is paused has its record wait out. Real etcd, redis, metadata-server and
// daemons on 127.0.0.1.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import { BIN, runCli, sleep } from "../helpers/daemon.js";
import { freePorts } from "../helpers/ports.js";
import { startEtcd, type EtcdServer } from "../helpers/etcd-server.js";
import { spawnMetadataServer, type MetadataServerProcess } from "../helpers/metadata-server.js";
import { startRedis, type RedisServer } from "../helpers/redis-server.js";
import { TOKEN, entrySpec, expectAllOk, fetchHashes, putEntry, startPeerDaemon, type PeerDaemon } from "../helpers/transfer.js";

const started: PeerDaemon[] = [];
let etcd: EtcdServer;
let redis: RedisServer;
let http: MetadataServerProcess;

beforeAll(async () => {
  [etcd, redis, http] = await Promise.all([startEtcd(), startRedis(), spawnMetadataServer(["--listen", "127.0.0.1:0"])]);
});

afterAll(async () => {
  await Promise.all(started.map((d) => d.stop()));
  await Promise.all([etcd?.stop(), redis?.stop(), http?.stop()]);
});

async function daemon(id: string, args: string[]): Promise<PeerDaemon> {
  const d = await startPeerDaemon({ bufferSize: "64MiB", args: ["--node-id", id, ...args] });
  started.push(d);
  return d;
}

/** `kvferry daemon` run to its exit: it must not start. */
function refusedStart(id: string, args: string[]) {
  return runCli(
    ["daemon", "--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0", "--kv-buffer-size", "64MiB", "--node-id", id, ...args],
    { KVFERRY_CLUSTER_TOKEN: TOKEN },
    90_000,
  );
}

function expectTaken(r: { code: number | null; stderr: string }, id: string, holder: PeerDaemon): void {
  expect(r.code, r.stderr).toBe(2);
  expect(r.stderr).toContain(`--node-id: node_id: got ${JSON.stringify(id)}, expected an id no running daemon holds`);
  expect(r.stderr).toContain(`peer API ${holder.peerAddress}, client API ${holder.address}`);
}

async function until(what: string, probe: () => Promise<boolean>, withinMs: number): Promise<void> {
  const end = Date.now() + withinMs;
  while (Date.now() < end) {
    if (await probe().catch(() => false)) return;
    await sleep(100);
  }
  throw new Error(`${what}: not within ${withinMs} ms`);
}

const SIGKILL = async (d: PeerDaemon) => {
  d.proc.child.kill("SIGKILL");
  await d.proc.exited;
  started.splice(started.indexOf(d), 1);
};

describe.each([
  ["etcd", () => `etcd://${etcd.endpoint}`],
  ["redis", () => redis.url],
  ["http", () => http.url],
])("with %s metadata", (backend, server) => {
  const prefix = `it-node-id-${backend}/`;
  const args = () => ["--metadata-server", server(), "--metadata-prefix", prefix, "--metadata-ttl-ms", "20000"];
  /** The records under `id` as the backend has them (read by `kvferry status`, no daemon asked). */
  const recordsOf = async (id: string) => {
    const r = await runCli(["status", "--metadata-server", server(), "--metadata-prefix", prefix, "--json"]);
    expect(r.code, r.stderr).toBe(0);
    return (JSON.parse(r.stdout).nodes as { nodeId: string; peerAddress: string }[]).filter((n) => n.nodeId === id);
  };

  it("a second daemon with a running daemon's node id exits 2 naming it and the holder, also when told to retry; the holder's record stays", async () => {
    const id = `dup-${backend}`;
    const holder = await daemon(id, args());
    expectTaken(await refusedStart(id, args()), id, holder);
    const t0 = Date.now();
    expectTaken(await refusedStart(id, [...args(), "--metadata-retry-ms", "60000"]), id, holder);
    expect(Date.now() - t0).toBeLessThan(30_000); // not retried for the 60 s it was allowed
    expect((await recordsOf(id)).map((n) => n.peerAddress)).toEqual([holder.peerAddress]);
  });

  it("a record left by a daemon that died is taken over at once (TTL 20 s), and transfers by that id reach the new daemon", async () => {
    const id = `reborn-${backend}`;
    const other = await daemon(`other-${backend}`, args());
    const dead = await daemon(id, args());
    await SIGKILL(dead);
    const t0 = Date.now();
    const reborn = await daemon(id, args());
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(reborn.peerAddress).not.toBe(dead.peerAddress);
    await until("the other daemon sees the new record", async () =>
      (await other.client.listNodes()).nodes.some((n) => n.nodeId === id && n.peerAddress === reborn.peerAddress), 10_000);
    const spec = entrySpec(`to-${id}`, [1 << 20]);
    const hashes = await putEntry(other.client, spec);
    expectAllOk((await other.client.batchTransfer([spec.id], id, "push")).results);
    expect(await fetchHashes(reborn.client, spec.id)).toEqual(hashes);
  });
});

describe("with etcd metadata, a restart", () => {
  const args = (ttl = "20000") => ["--metadata-server", `etcd://${etcd.endpoint}`, "--metadata-prefix", "it-node-id-restart/", "--metadata-ttl-ms", ttl];

  it("on the same ports under another name (localhost for 127.0.0.1) takes its own dead record over at once", async () => {
    const base = await freePorts([0, 1]);
    const dead = await daemon("same-ports", [...args(), "--data-listen", `127.0.0.1:${base}`, "--peer-listen", `127.0.0.1:${base + 1}`]);
    await SIGKILL(dead);
    // The old record names 127.0.0.1:P; asking there reaches the new daemon itself.
    const again = await daemon("same-ports", [...args(), "--data-listen", `127.0.0.1:${base}`, "--peer-listen", `localhost:${base + 1}`]);
    expect(again.peerAddress).toBe(`localhost:${base + 1}`);
  });

  it("with a holder that is paused (SIGSTOP) waits for its record to lapse, then starts", async () => {
    // A TTL long enough that the record is surely still there when the second daemon looks.
    const paused = await daemon("paused-holder", args("6000"));
    paused.proc.child.kill("SIGSTOP");
    try {
      const t0 = Date.now();
      const next = await daemon("paused-holder", args("6000"));
      expect(Date.now() - t0).toBeGreaterThan(500);
      expect(next.proc.logs.some((l) => String(l.msg).includes("waiting for the record to lapse"))).toBe(true);
    } finally {
      await SIGKILL(paused);
    }
  });

  it("waiting for a paused holder's record, stops on SIGTERM: exit 3 saying it stopped waiting, not that the id is taken", async () => {
    const paused = await daemon("paused-holder-2", args());
    paused.proc.child.kill("SIGSTOP");
    try {
      const child = spawn(process.execPath, [BIN, "daemon", "--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0",
        "--kv-buffer-size", "64MiB", "--node-id", "paused-holder-2", ...args()],
      { env: { ...process.env, KVFERRY_CLUSTER_TOKEN: TOKEN, NO_PRETTY: "1" }, stdio: ["ignore", "pipe", "pipe"] });
      let out = "";
      child.stdout.on("data", (d) => (out += d));
      const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
      await until("the wait for the record to lapse", async () => out.includes("waiting for the record to lapse"), 15_000);
      child.kill("SIGTERM");
      expect(await exited).toBe(3);
      expect(out).toContain('node id \\"paused-holder-2\\": stopped waiting for another daemon\'s record to lapse (interrupted by SIGTERM during start-up)');
    } finally {
      await SIGKILL(paused);
    }
  });
});

describe("with embedded metadata", () => {
  // A long TTL: a dead node is never forgotten by its TTL here, only by being asked.
  const args = (...peers: string[]) => ["--metadata-ttl-ms", "20000", ...peers.flatMap((p) => ["--peer", p])];

  it("a daemon whose seed holds its node id exits 2 naming the seed", async () => {
    const holder = await daemon("emb-dup", args());
    const r = await refusedStart("emb-dup", args(holder.peerAddress));
    expectTaken(r, "emb-dup", holder);
  });

  it("a seed that knows a running holder of the id refuses the newcomer; once the holder died, a newcomer takes the id over", async () => {
    const holder = await daemon("emb-held", args());
    const seed = await daemon("emb-seed", args(holder.peerAddress));
    await until("the seed knows the holder", async () => (await seed.client.listNodes()).nodes.some((n) => n.nodeId === "emb-held"), 5_000);
    expectTaken(await refusedStart("emb-held", args(seed.peerAddress)), "emb-held", holder);
    // The seed still lists the holder at its own address.
    const known = (await seed.client.listNodes()).nodes.find((n) => n.nodeId === "emb-held");
    expect(known?.peerAddress).toBe(holder.peerAddress);

    await SIGKILL(holder);
    const reborn = await daemon("emb-held", args(seed.peerAddress));
    await until("the seed lists the new daemon under the id", async () =>
      (await seed.client.listNodes()).nodes.some((n) => n.nodeId === "emb-held" && n.peerAddress === reborn.peerAddress), 10_000);
    expect(seed.proc.logs.some((l) => String(l.msg).includes(`no longer answers at ${holder.peerAddress}`))).toBe(true);
    const spec = entrySpec("emb-to-reborn", [4096]);
    const hashes = await putEntry(seed.client, spec);
    expectAllOk((await seed.client.batchTransfer([spec.id], "emb-held", "push")).results);
    expect(await fetchHashes(reborn.client, spec.id)).toEqual(hashes);
  });

  it("a seed that cannot tell yet (the holder is paused) is asked again: the newcomer starts once the seed has given the silent holder up", async () => {
    const ttl = ["--metadata-ttl-ms", "6000"];
    const holder = await daemon("emb-paused", ttl);
    const seed = await daemon("emb-seed2", [...ttl, "--peer", holder.peerAddress]);
    await until("the seed knows the holder", async () => (await seed.client.listNodes()).nodes.some((n) => n.nodeId === "emb-paused"), 5_000);
    holder.proc.child.kill("SIGSTOP");
    try {
      const t0 = Date.now();
      const next = await daemon("emb-paused", [...ttl, "--peer", seed.peerAddress]);
      expect(Date.now() - t0).toBeGreaterThan(1_000);
      expect(next.proc.logs.some((l) => String(l.msg).includes("cannot tell yet whether this node id is held"))).toBe(true);
      await until("the seed lists the newcomer under the id", async () =>
        (await seed.client.listNodes()).nodes.some((n) => n.nodeId === "emb-paused" && n.peerAddress === next.peerAddress), 10_000);
    } finally {
      await SIGKILL(holder);
    }
  });
});
