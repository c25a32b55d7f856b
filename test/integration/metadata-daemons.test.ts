// Daemons with an external metadata backend (etcd here; redis and http behave the same
// through the same interface, see metadata-redis/-http): they register, find each other
// by node id, survive the backend being killed and restarted, and refuse to start — or
// wait, when told to — while it cannot be reached.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { spawnDaemon } from "../../src/launch/spawn-daemon.js";
import { NotFoundError } from "../../src/errors.js";
import { BIN, runCli, sleep } from "../helpers/daemon.js";
import { freePort } from "../helpers/ports.js";
import { startEtcd, type EtcdServer } from "../helpers/etcd-server.js";
import { TOKEN, entrySpec, expectAllOk, fetchHashes, putEntry, startPeerDaemon, type PeerDaemon } from "../helpers/transfer.js";

const TTL_MS = 2_000;
let etcd: EtcdServer;
const started: PeerDaemon[] = [];

beforeAll(async () => {
  etcd = await startEtcd();
});

afterAll(async () => {
  await Promise.all(started.map((d) => d.stop()));
  await etcd?.stop();
});

async function node(id: string, server = `etcd://${etcd.endpoint}`, ttlMs = TTL_MS): Promise<PeerDaemon> {
  const d = await startPeerDaemon({
    bufferSize: "128MiB",
    args: ["--node-id", id, "--metadata-server", server, "--metadata-ttl-ms", String(ttlMs), "--metadata-prefix", "it-daemons/"],
  });
  started.push(d);
  return d;
}

async function until(what: string, probe: () => Promise<boolean>, withinMs: number): Promise<number> {
  const t0 = Date.now();
  while (Date.now() - t0 < withinMs) {
    if (await probe().catch(() => false)) return Date.now() - t0;
    await sleep(100);
  }
  throw new Error(`${what}: not within ${withinMs} ms`);
}

const ids = async (d: PeerDaemon) => (await d.client.listNodes()).nodes.map((n) => n.nodeId);
const etcdKeys = async () => (await etcd.ctl("get", "--prefix", "--keys-only", "it-daemons/nodes/")).split("\n").filter(Boolean);

describe("two daemons on etcd", () => {
  let a: PeerDaemon;
  let b: PeerDaemon;

  beforeAll(async () => {
    [a, b] = await Promise.all([node("etcd-a"), node("etcd-b")]);
  });

  it("register under the prefix, list each other, and move entries by node id", async () => {
    expect((await etcdKeys()).sort()).toEqual(["it-daemons/nodes/etcd-a", "it-daemons/nodes/etcd-b"]);
    // Each daemon learns the other from its own watch: both are waited for.
    await until("a lists both", async () => JSON.stringify(await ids(a)) === '["etcd-a","etcd-b"]', 3_000);
    await until("b lists both", async () => JSON.stringify(await ids(b)) === '["etcd-a","etcd-b"]', 3_000);
    const listing = await b.client.listNodes();
    expect(listing.backend).toBe("etcd");
    expect(listing.where).toContain(etcd.endpoint);
    expect(listing.nodes.find((n) => n.nodeId === "etcd-a")).toMatchObject({ peerAddress: a.peerAddress, dataAddress: a.dataAddress });
    const spec = entrySpec("etcd-by-id", [2 << 20, 7]);
    const hashes = await putEntry(a.client, spec);
    expectAllOk((await a.client.batchTransfer([spec.id], "etcd-b", "push")).results);
    expect(await fetchHashes(b.client, spec.id)).toEqual(hashes);
  });

  it("kvferry status reads etcd directly, with no daemon asked", async () => {
    const r = await runCli(["status", "--metadata-server", `etcd://${etcd.endpoint}`, "--metadata-prefix", "it-daemons/", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const listing = JSON.parse(r.stdout);
    expect(listing.backend).toBe("etcd");
    expect(listing.nodes.map((n: { nodeId: string }) => n.nodeId)).toEqual(["etcd-a", "etcd-b"]);
    const table = await runCli(["status", "--metadata-server", etcd.endpoint, "--metadata-prefix", "it-daemons/"]);
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout).toMatch(/^etcd-a\s+127\.0\.0\.1:\d+\s+127\.0\.0\.1:\d+/m);
    expect(table.stdout).toContain("2 nodes known to etcd at");
  });

  it.each([
    ["its data kept", false],
    ["an empty data dir", true],
  ])("etcd killed and restarted with %s: both daemons are registered again within the TTL and transfers by node id work again", async (_what, freshData) => {
    await etcd.kill();
    await sleep(500);
    await etcd.restart({ freshData });
    const back = await until(
      "both records back in etcd",
      async () => JSON.stringify((await etcdKeys()).sort()) === '["it-daemons/nodes/etcd-a","it-daemons/nodes/etcd-b"]',
      TTL_MS + 3_000,
    );
    expect(back).toBeLessThan(TTL_MS + 3_000);
    await until("a lists b again", async () => (await ids(a)).includes("etcd-b"), 3_000);
    const spec = entrySpec(`etcd-after-restart-${freshData}`, [1 << 20]);
    const hashes = await putEntry(b.client, spec);
    expectAllOk((await b.client.batchTransfer([spec.id], "etcd-a", "push")).results);
    expect(await fetchHashes(a.client, spec.id)).toEqual(hashes);
  }, 30_000);

  it("a daemon that stops leaves at once: naming it is NOT_FOUND", async () => {
    // A long TTL: had c's record lapsed rather than been revoked, it would be listed for 10 s
    // and more after the stop (its last refresh came at most ttl/3 before it).
    const ttlMs = 15_000;
    const c = await node("etcd-c", `etcd://${etcd.endpoint}`, ttlMs);
    await until("a sees c", async () => (await ids(a)).includes("etcd-c"), 10_000);
    await c.stop();
    const left = await until("a no longer lists c", async () => !(await ids(a)).includes("etcd-c"), (2 * ttlMs) / 3);
    expect(left).toBeLessThan((2 * ttlMs) / 3);
    const spec = entrySpec("etcd-to-gone", [4096]);
    await putEntry(a.client, spec);
    const err = await a.client.batchTransfer([spec.id], "etcd-c", "push").then(() => undefined, (e: Error) => e);
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err!.message).toMatch(/node "etcd-c" is not known to etcd at /);
  });
});

describe("an unreachable backend at start-up", () => {
  it("exits 3 with a message naming the backend, without retrying by default", async () => {
    const dead = await freePort();
    const t0 = Date.now();
    const r = await runCli(
      ["daemon", "--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0", "--kv-buffer-size", "64MiB",
        "--metadata-server", `etcd://127.0.0.1:${dead}`, "--metadata-ttl-ms", "2000"],
      { KVFERRY_CLUSTER_TOKEN: TOKEN },
      60_000,
    );
    expect(r.code).toBe(3);
    expect(r.stdout).not.toContain("metadata backend unreachable: retrying");
    expect(Date.now() - t0).toBeLessThan(30_000); // a start (seconds on a busy machine) and one bounded attempt
    expect(r.stdout).toContain(`etcd at 127.0.0.1:${dead}`);
    expect(r.stdout).toContain("cannot register");
  });

  it("with metadata_retry_ms, stops retrying on SIGTERM instead of waiting the whole retry time", async () => {
    const dead = await freePort();
    const child = spawn(process.execPath, [BIN, "daemon", "--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0",
      "--kv-buffer-size", "64MiB", "--metadata-server", `127.0.0.1:${dead}`, "--metadata-ttl-ms", "2000", "--metadata-retry-ms", "60000"],
    { env: { ...process.env, KVFERRY_CLUSTER_TOKEN: TOKEN, NO_PRETTY: "1" }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    await until("the first retry", async () => out.includes("metadata backend unreachable: retrying"), 60_000);
    const t0 = Date.now();
    child.kill("SIGTERM");
    // Well under the 60 s it would retry for, with seconds to spare for a busy machine.
    const code = await Promise.race([exited, sleep(30_000).then(() => "still running")]);
    if (code === "still running") child.kill("SIGKILL");
    expect(code).toBe(3);
    expect(Date.now() - t0).toBeLessThan(30_000);
    expect(out).toContain("interrupted by SIGTERM during start-up");
  }, 120_000);

  it("with metadata_retry_ms, keeps trying with backoff and serves once the backend comes up", async () => {
    const late = await startEtcd();
    onTestFinished(() => late.stop());
    await late.kill();
    // etcd comes back once the daemon has found it down and said it retries, however long its start takes.
    let retrying!: () => void;
    const saidRetrying = new Promise<void>((resolve) => (retrying = resolve));
    const daemon = spawnDaemon(
      ["--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0", "--kv-buffer-size", "64MiB",
        "--metadata-server", late.endpoint, "--metadata-ttl-ms", "2000", "--metadata-retry-ms", "90000", "--node-id", "etcd-late"],
      {
        env: { KVFERRY_CLUSTER_TOKEN: TOKEN },
        startTimeoutMs: 120_000,
        onSpawn: (child) => createInterface({ input: child.stdout! }).on("line", (l) => l.includes("metadata backend unreachable: retrying") && retrying()),
      },
    );
    const before = await Promise.race([saidRetrying.then(() => "retrying"), daemon.then(() => "served", () => "failed")]);
    expect(before, "the daemon waits for the backend instead of serving without it").toBe("retrying");
    await late.restart();
    const d = await daemon;
    onTestFinished(() => d.stop().then(() => undefined));
    expect(d.logs.some((l) => l.msg === "metadata backend unreachable: retrying")).toBe(true);
    expect(await late.ctl("get", "--keys-only", "kvferry/v1/nodes/etcd-late")).toContain("kvferry/v1/nodes/etcd-late");
  }, 180_000);
});
