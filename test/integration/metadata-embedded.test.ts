// The embedded registry (the default: no metadata server): daemons learn each other
// through the peer API's Hello — from --peer flags, from the other side of prefill_url /
// decode_url, and from being greeted — and forget a node that stops answering for
// metadata_ttl_ms. BatchTransfer and Get name nodes by id; `kvferry status` lists them.
import { afterAll, describe, expect, it, onTestFinished } from "vitest";
import { NotFoundError } from "../../src/errors.js";
import { runCli, sleep, startDaemon } from "../helpers/daemon.js";
import { freePort, freePorts } from "../helpers/ports.js";
import {
  TOKEN,
  entrySpec,
  expectAllOk,
  fetchHashes,
  putEntry,
  startPeerDaemon,
  type PeerDaemon,
  type PeerDaemonOptions,
} from "../helpers/transfer.js";

/** Short, so that joins and leaves show within a test: heartbeats every 667 ms. */
const TTL_MS = 2_000;
const started: PeerDaemon[] = [];

async function node(id: string, o: PeerDaemonOptions & { peers?: string[] } = {}): Promise<PeerDaemon> {
  const d = await startPeerDaemon({
    ...o,
    bufferSize: o.bufferSize ?? "256MiB",
    args: ["--node-id", id, "--metadata-ttl-ms", String(TTL_MS), ...(o.peers ?? []).flatMap((p) => ["--peer", p]), ...(o.args ?? [])],
  });
  started.push(d);
  return d;
}

afterAll(async () => {
  await Promise.all(started.map((d) => d.stop()));
});

async function nodeIds(d: PeerDaemon): Promise<string[]> {
  return (await d.client.listNodes()).nodes.map((n) => n.nodeId);
}

/** Polls until `d` lists exactly `ids`, or fails naming what it lists. */
async function expectNodes(d: PeerDaemon, ids: string[], withinMs = 4 * TTL_MS): Promise<void> {
  const end = Date.now() + withinMs;
  let got: string[] = [];
  while (Date.now() < end) {
    got = await nodeIds(d);
    if (JSON.stringify(got) === JSON.stringify([...ids].sort())) return;
    await sleep(100);
  }
  expect(got, `nodes listed by ${d.address} after ${withinMs} ms`).toEqual([...ids].sort());
}

describe("learning nodes", () => {
  it("a daemon given --peer greets it, and the greeted one learns the greeter: both list both, with their records", async () => {
    const a = await node("emb-a1");
    const b = await node("emb-b1", { peers: [a.peerAddress] });
    await expectNodes(a, ["emb-a1", "emb-b1"]);
    await expectNodes(b, ["emb-a1", "emb-b1"]);
    const listing = await a.client.listNodes();
    expect(listing.backend).toBe("embedded");
    const seenByA = listing.nodes.find((n) => n.nodeId === "emb-b1")!;
    expect(seenByA).toMatchObject({
      clientAddress: b.address,
      peerAddress: b.peerAddress,
      dataAddress: b.dataAddress,
      poolBytes: 256 * 2 ** 20,
      transports: [{ name: "tcp", params: [{ key: "address", value: b.dataAddress }, { key: "connectionsPerPeer", value: "4" }] }],
    });
    expect(seenByA.version).not.toBe("");
    expect(Date.now() - seenByA.startedAtMs).toBeLessThan(60_000);
  });

  it("start order does not matter: a seed that is not up yet is greeted once it is", async () => {
    const port = await freePort();
    const late = `127.0.0.1:${port}`;
    const early = await node("emb-early", { peers: [late] });
    await sleep(700);
    expect(await nodeIds(early)).toEqual(["emb-early"]);
    await node("emb-late", { args: ["--peer-listen", late] });
    await expectNodes(early, ["emb-early", "emb-late"]);
  });

  it("a prefill and a decode daemon sharing one mooncake.json find each other through prefill_url and decode_url", async () => {
    // Ports at least 50 apart (the seed's rule); each daemon's peer API is one above its data port.
    const prefillPort = await freePorts([0, 1, 200, 201]);
    const decodePort = prefillPort + 200;
    const config = { prefill_url: `127.0.0.1:${prefillPort}`, decode_url: `127.0.0.1:${decodePort}`, protocol: "tcp" };
    const start = async (role: string, id: string): Promise<PeerDaemon> => {
      const args = ["--kv-role", role, "--node-id", id, "--metadata-ttl-ms", String(TTL_MS), "--cluster-token", TOKEN, "--kv-buffer-size", "256MiB"];
      const d = await startDaemon(args, { config });
      const peer = Object.assign(d, { peerAddress: d.proc.peerAddress, dataAddress: d.proc.dataAddress });
      started.push(peer);
      return peer;
    };
    const prefill = await start("kv_producer", "emb-prefill");
    const decode = await start("kv_consumer", "emb-decode");
    expect(prefill.dataAddress).toBe(`127.0.0.1:${prefillPort}`);
    expect(decode.peerAddress).toBe(`127.0.0.1:${decodePort + 1}`);
    await expectNodes(prefill, ["emb-decode", "emb-prefill"]);
    await expectNodes(decode, ["emb-decode", "emb-prefill"]);
    const spec = entrySpec("emb-by-url", [1 << 20]);
    const hashes = await putEntry(prefill.client, spec);
    expectAllOk((await prefill.client.batchTransfer([spec.id], "emb-decode", "push")).results);
    expect(await fetchHashes(decode.client, spec.id)).toEqual(hashes);
  });
});

describe("naming nodes by id", () => {
  it("PUSHes to a node id, PULLs from one, and a Get pulls from a source node id", async () => {
    const a = await node("emb-a2");
    const b = await node("emb-b2", { peers: [a.peerAddress] });
    await expectNodes(a, ["emb-a2", "emb-b2"]);
    const pushed = entrySpec("emb-pushed", [3 << 20, 1]);
    const pulled = entrySpec("emb-pulled", [2 << 20]);
    const got = entrySpec("emb-got", [4096]);
    const hashes = {
      pushed: await putEntry(a.client, pushed),
      pulled: await putEntry(b.client, pulled),
      got: await putEntry(b.client, got),
    };
    expectAllOk((await a.client.batchTransfer([pushed.id], "emb-b2", "push")).results);
    expect(await fetchHashes(b.client, pushed.id)).toEqual(hashes.pushed);
    expectAllOk((await a.client.batchTransfer([pulled.id], "emb-b2", "pull")).results);
    expect(await fetchHashes(a.client, pulled.id)).toEqual(hashes.pulled);
    const entry = await a.client.get(got.id, { source: "emb-b2", waitMs: 0 });
    expect(entry.parts.size).toBe(1);
    await expect(b.client.stat(got.id)).rejects.toBeInstanceOf(NotFoundError);
  });

  it("a node id nobody knows fails the whole call NOT_FOUND naming it, and moves nothing", async () => {
    const a = await node("emb-a3");
    const spec = entrySpec("emb-unknown", [4096]);
    const hashes = await putEntry(a.client, spec);
    const err = await a.client.batchTransfer([spec.id], "no-such-node", "push").then(
      () => undefined,
      (e: Error & { code?: number }) => e,
    );
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err!.message).toMatch(/^target: node "no-such-node" is not known to embedded/);
    // A host without its port is a node id to look up, and the message says what an address needs.
    const noPort = await a.client.batchTransfer([spec.id], "127.0.0.1", "push").then(() => undefined, (e: Error) => e);
    expect(noPort).toBeInstanceOf(NotFoundError);
    expect(noPort!.message).toContain('a peer address needs a port: "host:port"');
    const get = await a.client.get("elsewhere", { source: "no-such-node", waitMs: 0 }).then(() => undefined, (e: Error) => e);
    expect(get?.message).toMatch(/^source: node "no-such-node" is not known/);
    expect(await fetchHashes(a.client, spec.id)).toEqual(hashes);
  });

  it("a node that stopped is forgotten within the TTL; naming it then fails NOT_FOUND", async () => {
    const a = await node("emb-a4");
    const b = await node("emb-b4", { peers: [a.peerAddress] });
    await expectNodes(a, ["emb-a4", "emb-b4"]);
    const spec = entrySpec("emb-after-leave", [4096]);
    await putEntry(a.client, spec);
    await b.stop();
    // b's last heartbeat came before it stopped: it is gone a TTL (and a heartbeat period) after that.
    await expectNodes(a, ["emb-a4"], 4 * TTL_MS);
    const err = await a.client.batchTransfer([spec.id], "emb-b4", "push").then(() => undefined, (e: Error) => e);
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err!.message).toContain('"emb-b4"');
  });
});

describe("a node replaced at the same address", () => {
  it("never sends a node's entries to another daemon that took its ports: the call fails naming both, nothing lands there", async () => {
    const peerPort = await freePort();
    const dataPort = await freePort();
    const ttl = 15_000; // long: the stale record is still there when the transfer runs
    const start = (id: string, peers: string[] = []) =>
      startPeerDaemon({
        bufferSize: "128MiB",
        args: ["--node-id", id, "--metadata-ttl-ms", String(ttl), ...peers.flatMap((p) => ["--peer", p])],
      });
    const p = await start("emb-p");
    started.push(p);
    const d = await startDaemon(
      ["--node-id", "emb-d", "--metadata-ttl-ms", String(ttl), "--cluster-token", TOKEN, "--kv-buffer-size", "128MiB",
        "--peer-listen", `127.0.0.1:${peerPort}`, "--data-listen", `127.0.0.1:${dataPort}`, "--peer", p.peerAddress],
    );
    await expectNodes(p, ["emb-d", "emb-p"], 10_000); // d greets p as it starts
    d.proc.child.kill("SIGKILL");
    await d.proc.exited;
    await d.stop();
    // Another node takes d's ports and does not greet p: p still holds d's record.
    const z = await startDaemon(
      ["--node-id", "emb-z", "--metadata-ttl-ms", String(ttl), "--cluster-token", TOKEN, "--kv-buffer-size", "128MiB",
        "--peer-listen", `127.0.0.1:${peerPort}`, "--data-listen", `127.0.0.1:${dataPort}`],
    );
    const zPeer = Object.assign(z, { peerAddress: z.proc.peerAddress, dataAddress: z.proc.dataAddress });
    started.push(zPeer);
    const spec = entrySpec("emb-stale", [64 * 1024]);
    const hashes = await putEntry(p.client, spec);
    const res = await p.client.batchTransfer([spec.id], "emb-d", "push").then((r) => r.results[0]!, (e: Error) => e);
    if (res instanceof Error) {
      expect(res).toBeInstanceOf(NotFoundError); // p's heartbeat already learnt that emb-z answers there
    } else {
      expect(res.code).not.toBe(0);
      expect(res.message).toContain('node "emb-d" is no longer at');
      expect(res.message).toContain('"emb-z"');
    }
    await expect(zPeer.client.stat(spec.id)).rejects.toBeInstanceOf(NotFoundError);
    expect(await fetchHashes(p.client, spec.id)).toEqual(hashes);
    // And within a heartbeat p learns who answers at that address now.
    await expectNodes(p, ["emb-p", "emb-z"], 10_000);
  }, 180_000);
});

describe("kvferry status", () => {
  it("prints the nodes the local daemon knows as a table and as JSON", async () => {
    const a = await node("emb-a5");
    const b = await node("emb-b5", { peers: [a.peerAddress] });
    await expectNodes(a, ["emb-a5", "emb-b5"]);
    const text = await runCli(["status", "--address", a.address]);
    expect(text.code, text.stderr).toBe(0);
    const lines = text.stdout.split("\n");
    expect(lines[0]).toMatch(/^NODE\s+CLIENT\s+PEER\s+DATA\s+TRANSPORTS\s+POOL USED \/ CAPACITY\s+VERSION\s+AGE\s+SEEN\s+ENGINES$/);
    const row = lines.find((l) => l.startsWith("emb-b5 "))!;
    expect(row).toContain(b.peerAddress);
    expect(row).toContain(b.dataAddress);
    expect(row).toContain("/ 256 MiB (0%)");
    expect(text.stdout).toContain("2 nodes known to embedded peer-to-peer metadata");
    const json = await runCli(["status", "--address", a.address, "--json"]);
    expect(json.code, json.stderr).toBe(0);
    const parsed = JSON.parse(json.stdout);
    expect(parsed.backend).toBe("embedded");
    expect(parsed.nodes.map((n: { nodeId: string }) => n.nodeId)).toEqual(["emb-a5", "emb-b5"]);
  });

  it("says so and exits 1 when no daemon answers", async () => {
    const port = await freePort();
    const r = await runCli(["status", "--address", `127.0.0.1:${port}`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`no kvferry daemon answers at 127.0.0.1:${port}`);
  });
});
