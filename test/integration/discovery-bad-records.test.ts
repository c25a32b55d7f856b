// The proxy reads node records that anyone with write access to the registry may have
// written: a record whose fields are not what a daemon writes must not stop it, nor send
// it dialing something other than a HOST:PORT. Real `kvferry metadata-server` and
// `kvferry proxy` processes; the records are written with the protocol's raw PUT.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { nodeKey } from "../../src/metadata/registry.js";
import { eventually, spawnProxy, type SpawnedProxy } from "../helpers/proxy.js";
import { rawPut, spawnMetadataServer, type MetadataServerProcess } from "../helpers/metadata-server.js";

const PREFIX = "it-bad-records/";
let server: MetadataServerProcess;
let proxy: SpawnedProxy | undefined;

interface HealthReport {
  decode: { url: string; daemon?: string }[];
}

function record(nodeId: string, clientAddress: string, engineUrl: string): string {
  return JSON.stringify({
    nodeId, hostname: "h", clientAddress, peerAddress: "127.0.0.1:2", dataAddress: "127.0.0.1:3",
    transports: [], poolBytes: 0, poolUsedBytes: 0, version: "x", startedAt: Date.now(), updatedAt: Date.now(),
    engines: [{ url: engineUrl, role: "decode", models: [] }],
  });
}

/** Writes the index and the records, fresh (the records carry updatedAt). */
async function publish(records: Record<string, string>): Promise<void> {
  await rawPut(server.url, `${PREFIX}nodes`, JSON.stringify(Object.keys(records)));
  for (const [id, text] of Object.entries(records)) await rawPut(server.url, nodeKey(PREFIX, id), text);
}

beforeAll(async () => {
  server = await spawnMetadataServer(["--listen", "127.0.0.1:0"]);
}, 30_000);

afterAll(async () => {
  await proxy?.stop();
  await server?.stop();
});

describe("proxy discovery of records it did not expect", () => {
  it("keeps serving when a record's clientAddress is not HOST:PORT, and uses no such address", async () => {
    proxy = await spawnProxy(["--metadata-server", server.url, "--metadata-prefix", PREFIX, "--health-interval-ms", "500"]);
    const records = {
      "bad-newline": record("bad-newline", "127.0.0.1:1\nx", "http://127.0.0.1:9/a"),
      "bad-unix": record("bad-unix", "unix:/tmp/kvferry-review.sock", "http://127.0.0.1:9/b"),
      good: record("good", "127.0.0.1:4", "http://127.0.0.1:9/c"),
    };
    // Rewritten for a while: the proxy reads the registry every ttl/3.
    const deadline = Date.now() + 6_000;
    let report: HealthReport | undefined;
    while (Date.now() < deadline && proxy.child.exitCode === null) {
      await publish(records);
      report = await fetch(`${proxy.url}/health`, { signal: AbortSignal.timeout(5_000) })
        .then((r) => r.json() as Promise<HealthReport>)
        .catch(() => undefined);
      await new Promise((r) => setTimeout(r, 500));
    }
    expect(proxy.child.exitCode, proxy.lastLines().join("\n")).toBeNull();
    const found = await eventually(async () => {
      await publish(records);
      report = (await (await fetch(`${proxy!.url}/health`, { signal: AbortSignal.timeout(5_000) })).json()) as HealthReport;
      return report.decode.some((i) => i.url === "http://127.0.0.1:9/c");
    });
    expect(found, JSON.stringify(report)).toBe(true);
    // The engines of the two bad records are not given their address as a daemon.
    for (const i of report!.decode) expect(["127.0.0.1:4"]).toContain(i.daemon);
  }, 60_000);
});
