// The proxy finds its instances in the node registry: engines (kvferry simulate) announce
// themselves to their daemons (AnnounceEngine), the daemons publish them in their etcd
// records, and `kvferry proxy --metadata-server` follows them as they come and go. Real
// etcd, daemons, simulators and proxy, as separate processes on loopback.
import { Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EngineRole } from "../../src/gen/kvferry/v1/node.js";
import { loadProxyConfig } from "../../src/proxy/config.js";
import { spawnSimulator, type SpawnedSimulator } from "../../src/simulator/spawn.js";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runCli, sleep } from "../helpers/daemon.js";
import { startEtcd, type EtcdServer } from "../helpers/etcd-server.js";
import {
  eventually, generatedText, mapConcurrent, mixedCases, sendCase, spawnProxy, startNode, startReference, stopNodes,
  SMALL_LAYOUT, type SimNode, type SpawnedProxy,
} from "../helpers/proxy.js";
import { freePort } from "../helpers/ports.js";
import { startPeerDaemon, type PeerDaemon } from "../helpers/transfer.js";

const TTL_MS = 3_000;
const PREFIX = "it-discovery/";
let etcd: EtcdServer;
let prefill: SimNode | undefined;
let decode: SimNode | undefined;
let reference: SpawnedSimulator | undefined;
const extra: SpawnedSimulator[] = [];

const daemonArgs = () => ["--metadata-server", `etcd://${etcd.endpoint}`, "--metadata-ttl-ms", String(TTL_MS), "--metadata-prefix", PREFIX];
const proxyArgs = () => ["--metadata-server", `etcd://${etcd.endpoint}`, "--metadata-prefix", PREFIX, "--health-interval-ms", "500"];

interface HealthReport {
  status: string;
  prefill: { url: string; health: string; daemon?: string }[];
  decode: { url: string; health: string; daemon?: string }[];
}

async function health(proxy: SpawnedProxy): Promise<HealthReport> {
  const res = await fetch(`${proxy.url}/health`, { signal: AbortSignal.timeout(5_000) });
  return (await res.json()) as HealthReport;
}

const urls = (list: { url: string }[]) => list.map((i) => i.url).sort();

beforeAll(async () => {
  etcd = await startEtcd();
  [prefill, decode, reference] = await Promise.all([
    startNode("prefill", SMALL_LAYOUT, daemonArgs()),
    startNode("decode", SMALL_LAYOUT, daemonArgs()),
    startReference(SMALL_LAYOUT),
  ]);
}, 60_000);

afterAll(async () => {
  await Promise.all(extra.map((s) => s.stop()));
  await stopNodes([prefill, decode]);
  await reference?.stop();
  await etcd?.stop();
});

describe("kvferry proxy --metadata-server", () => {
  it("discovers 1P1D through etcd and answers as the non-disaggregated reference", async () => {
    const proxy = await spawnProxy(proxyArgs());
    try {
      expect(await eventually(async () => (await health(proxy)).status === "ok", 15_000)).toBe(true);
      const h = await health(proxy);
      expect(urls(h.prefill)).toEqual([prefill!.sim.url]);
      expect(urls(h.decode)).toEqual([decode!.sim.url]);
      expect(h.prefill[0]!.daemon).toBe(prefill!.daemon.address);
      expect(h.decode[0]!.daemon).toBe(decode!.daemon.address);
      const cases = mixedCases(8, 7);
      const answers = await mapConcurrent(cases, 2, async (c) => {
        const [via, ref] = await Promise.all([sendCase(proxy.url, c), sendCase(reference!.url, c)]);
        const stream = c.body.stream === true;
        return [generatedText(c.endpoint, stream, via), generatedText(c.endpoint, stream, ref)];
      });
      for (const [via, ref] of answers) expect(via).toBe(ref);
    } finally {
      await proxy.stop();
    }
  }, 90_000);

  it("drops a decode simulator that dies and uses the one started after it", async () => {
    const proxy = await spawnProxy(proxyArgs());
    try {
      expect(await eventually(async () => (await health(proxy)).status === "ok", 15_000)).toBe(true);
      // Killed, not stopped: its announcement ends with its connection.
      decode!.sim.child.kill("SIGKILL");
      await decode!.sim.exited;
      expect(await eventually(async () => (await health(proxy)).decode.length === 0, 15_000)).toBe(true);
      const h = await health(proxy);
      expect(h.status).toBe("unavailable");
      const refused = await sendCase(proxy.url, mixedCases(1, 3)[0]!);
      expect(refused.status).toBe(503);
      expect(refused.text).toMatch(/decode/);

      const replacement = await spawnSimulator(["--role", "decode", "--listen", "127.0.0.1:0", "--daemon", decode!.daemon.address, ...SMALL_LAYOUT]);
      extra.push(replacement);
      expect(await eventually(async () => {
        const now = await health(proxy);
        return now.status === "ok" && urls(now.decode).join() === replacement.url;
      }, 15_000)).toBe(true);
      const c = mixedCases(1, 5)[0]!;
      const [via, ref] = await Promise.all([sendCase(proxy.url, c), sendCase(reference!.url, c)]);
      expect(generatedText(c.endpoint, c.body.stream === true, via)).toBe(generatedText(c.endpoint, c.body.stream === true, ref));
    } finally {
      await proxy.stop();
    }
  }, 90_000);

  it("keeps the instances given by flags for their role and discovers the others", async () => {
    // A second decode node, announced in etcd like the first: only the flag's one is used.
    const second = await startNode("decode", SMALL_LAYOUT, daemonArgs());
    const proxy = await spawnProxy([...proxyArgs(), "--decode", second.flag]);
    try {
      expect(await eventually(async () => (await health(proxy)).status === "ok", 15_000)).toBe(true);
      await sleep(1_500); // a few health rounds: discovery has had its chance to add the other decode
      const h = await health(proxy);
      expect(urls(h.decode)).toEqual([second.sim.url]);
      expect(urls(h.prefill)).toEqual([prefill!.sim.url]);
      const consumed = async (n: SimNode) => Number((await n.daemon.client.serverInfo()).counters?.consumed ?? 0);
      const [firstBefore, secondBefore] = [await consumed(decode!), await consumed(second)];
      const c = mixedCases(1, 9)[0]!;
      const [via, ref] = await Promise.all([sendCase(proxy.url, c), sendCase(reference!.url, c)]);
      expect(generatedText(c.endpoint, c.body.stream === true, via)).toBe(generatedText(c.endpoint, c.body.stream === true, ref));
      // The KV went to the flag's decode node, not to the discovered one.
      expect(await consumed(second)).toBe(secondBefore + 1);
      expect(await consumed(decode!)).toBe(firstBefore);
    } finally {
      await proxy.stop();
      await stopNodes([second]);
    }
  }, 90_000);
});

describe("the proxy's discovery settings", () => {
  const file = (object: unknown) => {
    const path = join(mkdtempSync(join(tmpdir(), "kvferry-proxy-")), "mooncake.json");
    writeFileSync(path, JSON.stringify(object));
    return path;
  };
  const seed = { prefill_url: "127.0.0.1:13003", decode_url: "127.0.0.1:13103", metadata_server: "127.0.0.1:2379", metadata_backend: "etcd", protocol: "tcp", device_name: "" };

  it("reads mooncake.json as --config or $MOONCAKE_CONFIG_PATH: its metadata names the registry, the daemon's other keys are left alone", () => {
    const path = file(seed);
    const c = loadProxyConfig({}, path, {});
    expect(c.discovery).toMatchObject({ kind: "registry", metadata: { backend: "etcd", server: "127.0.0.1:2379", prefix: "kvferry/v1/" } });
    expect(c.prefill).toEqual([]);
    expect(loadProxyConfig({}, undefined, { MOONCAKE_CONFIG_PATH: path }).discovery).toMatchObject({ kind: "registry" });
    // Flags win over the file; --daemon wins over any registry.
    expect(loadProxyConfig({ metadataServer: "redis://127.0.0.1:6379", metadataBackend: "redis" }, path, {}).discovery).toMatchObject({ metadata: { backend: "redis" } });
    expect(loadProxyConfig({ daemon: "127.0.0.1:50051" }, path, {}).discovery).toEqual({ kind: "daemon", address: "127.0.0.1:50051" });
  });

  it("refuses a typo, a backend that disagrees and a bad --daemon, naming the key or flag; without discovery both roles are required", () => {
    expect(() => loadProxyConfig({}, file({ ...seed, metadata_servr: "x" }), {})).toThrow(/mooncake\.json: metadata_servr: .*expected one of the keys/);
    expect(() => loadProxyConfig({ metadataServer: "redis://127.0.0.1:6379", metadataBackend: "etcd" }, undefined, {})).toThrow(/metadata_backend|metadata-backend/);
    expect(() => loadProxyConfig({ daemon: "nowhere" }, undefined, {})).toThrow(/--daemon: daemon: got "nowhere", expected HOST:PORT/);
    expect(() => loadProxyConfig({ decode: ["http://d:1=127.0.0.1:3"] }, file({ ...seed, metadata_server: "P2PHANDSHAKE", metadata_backend: "p2p" }), {})).toThrow(
      /prefill.*at least one prefill instance.*--metadata-server URL, or --daemon HOST:PORT/,
    );
  });
});

describe("kvferry proxy --daemon (embedded metadata)", () => {
  it("discovers the instances a daemon's ListNodes lists, its own and its greeted peers'", async () => {
    const p = await startNode("prefill", SMALL_LAYOUT);
    // The decode daemon greets the prefill daemon, which so learns of it (and of its engine).
    const d = await startNode("decode", SMALL_LAYOUT, ["--peer", p.daemon.peerAddress, "--metadata-ttl-ms", String(TTL_MS)]);
    const proxy = await spawnProxy(["--daemon", p.daemon.address, "--health-interval-ms", "500"]);
    try {
      expect(await eventually(async () => (await health(proxy)).status === "ok", 20_000)).toBe(true);
      const h = await health(proxy);
      expect(urls(h.prefill)).toEqual([p.sim.url]);
      expect(urls(h.decode)).toEqual([d.sim.url]);
      const c = mixedCases(1, 11)[0]!;
      const [via, ref] = await Promise.all([sendCase(proxy.url, c), sendCase(reference!.url, c)]);
      expect(generatedText(c.endpoint, c.body.stream === true, via)).toBe(generatedText(c.endpoint, c.body.stream === true, ref));
    } finally {
      await proxy.stop();
      await stopNodes([p, d]);
    }
  }, 90_000);
});

describe("AnnounceEngine", () => {
  const announce = (d: PeerDaemon, engine: unknown): Promise<{ code: number; details: string }> =>
    new Promise((resolve) => {
      const call = d.client.raw.announceEngine({ engine } as never, new Metadata());
      call.on("data", () => {
        resolve({ code: status.OK, details: "" });
        call.cancel();
      });
      call.on("error", (err: ServiceError) => resolve({ code: err.code, details: err.details }));
    });

  it("refuses bad input with INVALID_ARGUMENT naming the field", async () => {
    const d = prefill!.daemon;
    const good = { url: "http://127.0.0.1:9", role: EngineRole.ENGINE_ROLE_DECODE, models: [] };
    const cases: [unknown, RegExp][] = [
      [undefined, /^engine: is required/],
      [{ ...good, url: "" }, /^engine\.url: /],
      [{ ...good, url: "ftp://127.0.0.1:9" }, /^engine\.url: .*http\(s\)/],
      [{ ...good, url: "http://127.0.0.1:9/?q=1" }, /^engine\.url: .*no query/],
      [{ ...good, url: "http://0.0.0.0:9" }, /^engine\.url: .*wildcard/],
      [{ ...good, role: EngineRole.ENGINE_ROLE_UNSPECIFIED }, /^engine\.role: got 0, expected ENGINE_ROLE_PREFILL/],
      [{ ...good, models: ["has space"] }, /^engine\.models: got "has space"/],
      [{ ...good, models: Array.from({ length: 17 }, (_, i) => `m${i}`) }, /^engine\.models: 17 names, expected at most 16/],
    ];
    for (const [engine, message] of cases) {
      const r = await announce(d, engine);
      expect(r.code, JSON.stringify(engine)).toBe(status.INVALID_ARGUMENT);
      expect(r.details).toMatch(message);
    }
    // The daemon still serves, and publishes only its simulator.
    const self = (await d.client.listNodes()).nodes.find((n) => n.clientAddress === d.address);
    expect(self?.engines.map((e) => e.url)).toEqual([prefill!.sim.url]);
  });

  it("is made again by the simulator when its daemon drains and another starts at the same address", async () => {
    const port = await freePort();
    const first = await startPeerDaemon({ bufferSize: "64MiB", args: ["--listen", `127.0.0.1:${port}`] });
    let second: PeerDaemon | undefined;
    const sim = await spawnSimulator(["--role", "decode", "--listen", "127.0.0.1:0", "--daemon", first.address, ...SMALL_LAYOUT]);
    const engines = async (d: PeerDaemon) => (await d.client.listNodes()).nodes.flatMap((n) => n.engines.map((e) => e.url));
    try {
      expect(await engines(first)).toEqual([sim.url]);
      expect(await first.stop()).toBe(0); // the drain ends the announcement: it does not hold the drain up
      second = await startPeerDaemon({ bufferSize: "64MiB", args: ["--listen", `127.0.0.1:${port}`] });
      expect(await eventually(async () => (await engines(second!)).join() === sim.url, 15_000)).toBe(true);
      expect(sim.logs.some((l) => l.msg === "announcement ended: announcing again")).toBe(true);
      // A simulator that stops withdraws its engine.
      expect(await sim.stop()).toBe(0);
      expect(await eventually(async () => (await engines(second!)).length === 0, 10_000)).toBe(true);
    } finally {
      await sim.stop();
      await second?.stop();
    }
  }, 60_000);

  it("holds at most 64 engines per daemon and names the limit", async () => {
    const d = decode!.daemon;
    const calls = Array.from({ length: 70 }, (_, i) =>
      d.client.announceEngine({ url: `http://127.0.0.1:${20000 + i}`, role: "prefill", models: ["m"] }),
    );
    try {
      const outcomes = await Promise.all(calls.map((c) => Promise.race([c.announced.then(() => "ok", (e: Error) => e.message), sleep(5_000).then(() => c.state)])));
      const published = (await d.client.listNodes()).nodes.find((n) => n.clientAddress === d.address)!.engines;
      expect(published.length).toBe(64);
      const refused = outcomes.filter((o) => o !== "ok");
      // Others (the decode simulators of the earlier tests) may hold places too: at least 6 wait.
      expect(refused.length).toBeGreaterThanOrEqual(6);
      const direct = await announce(d, { url: "http://127.0.0.1:30999", role: EngineRole.ENGINE_ROLE_PREFILL, models: [] });
      expect(direct.code).toBe(status.RESOURCE_EXHAUSTED);
      expect(direct.details).toMatch(/maximum \(64 per node\)/);
    } finally {
      for (const c of calls) c.close();
    }
    // Closed announcements leave the record.
    expect(await eventually(async () => {
      const self = (await d.client.listNodes()).nodes.find((n) => n.clientAddress === d.address)!;
      return self.engines.every((e) => !e.url.startsWith("http://127.0.0.1:2"));
    }, 10_000)).toBe(true);
  }, 30_000);
});

describe("kvferry status on etcd", () => {
  it("reads the backend that MOONCAKE_CONFIG_PATH names when no daemon is asked, with SEEN from the last heartbeat and the engines", async () => {
    // A node whose record does not change: etcd rewrites it only every 60 s, its lease every second.
    const quiet = await startPeerDaemon({ bufferSize: "64MiB", args: [...daemonArgs(), "--node-id", "quiet-node"] });
    try {
      const dir = mkdtempSync(join(tmpdir(), "kvferry-status-"));
      const mooncake = join(dir, "mooncake.json");
      writeFileSync(mooncake, JSON.stringify({
        prefill_url: "127.0.0.1:13003", decode_url: "127.0.0.1:13103", metadata_server: etcd.endpoint, metadata_backend: "etcd",
        metadata_prefix: PREFIX, protocol: "tcp",
      }));
      await sleep(TTL_MS + 4_000); // longer than the TTL: a SEEN taken from the record's write would say so
      // The default client address (127.0.0.1:50051) is not asked: the file names a backend.
      const json = await runCli(["status", "--json"], { MOONCAKE_CONFIG_PATH: mooncake }, 20_000);
      expect(json.code, json.stderr).toBe(0);
      const listing = JSON.parse(json.stdout) as { backend: string; nodes: { nodeId: string; updatedAtMs: number; engines: { url: string; role: string }[] }[] };
      expect(listing.backend).toBe("etcd");
      const q = listing.nodes.find((n) => n.nodeId === "quiet-node");
      expect(q, json.stdout).toBeDefined();
      // Its lease was renewed within the TTL (it would have lapsed otherwise), to the second.
      expect(Date.now() - q!.updatedAtMs).toBeLessThanOrEqual(TTL_MS + 2_000);
      expect(q!.engines).toEqual([]);
      const withPrefill = listing.nodes.find((n) => n.engines.some((e) => e.url === prefill!.sim.url));
      expect(withPrefill?.engines).toEqual([{ url: prefill!.sim.url, role: "prefill", models: ["kvferry-sim-7b"] }]);

      const text = await runCli(["status", "--config", mooncake], {}, 20_000);
      expect(text.code, text.stderr).toBe(0);
      const lines = text.stdout.split("\n");
      expect(lines[0]).toMatch(/SEEN\s+ENGINES$/);
      expect(lines.find((l) => l.includes(prefill!.sim.url))).toMatch(new RegExp(`prefill ${prefill!.sim.url}$`));
      expect(lines.find((l) => l.startsWith("quiet-node"))).toMatch(/ [0-4]s ago\s+-$/);
    } finally {
      await quiet.stop();
    }
  }, 60_000);
});
