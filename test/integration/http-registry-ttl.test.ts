// The http registry has no TTL of its own: each record carries updatedAt and a reader
// judges it stale. A node refreshes its record at its own metadata_ttl_ms/3, so whether a
// record is stale is the writer's TTL's business: a proxy (or another daemon) with another
// TTL must not see a live node come and go. And an engine announced to a daemon is
// published at once, not with the daemon's next refresh (40 s away here). Real `kvferry metadata-server`, daemon,
// simulator and proxy processes.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sleep } from "../helpers/daemon.js";
import { spawnMetadataServer, type MetadataServerProcess } from "../helpers/metadata-server.js";
import { eventually, SMALL_LAYOUT, spawnProxy, startNode, stopNodes, type SimNode, type SpawnedProxy } from "../helpers/proxy.js";

/** The daemon's TTL: it rewrites its record every 40 s; a proxy's default TTL is 10 s. */
const DAEMON_TTL_MS = 120_000;
/** Watched for this long: more than twice the proxy's TTL. */
const WATCH_MS = 25_000;

let server: MetadataServerProcess;
let node: SimNode | undefined;
let proxy: SpawnedProxy | undefined;

beforeAll(async () => {
  server = await spawnMetadataServer(["--listen", "127.0.0.1:0"]);
}, 30_000);

afterAll(async () => {
  await proxy?.stop();
  await stopNodes([node]);
  await server?.stop();
});

describe("http registry records judged by their writer's TTL", () => {
  it("a proxy with the default TTL keeps the engine of a daemon with a longer one", async () => {
    node = await startNode("decode", SMALL_LAYOUT, ["--metadata-server", server.url, "--metadata-ttl-ms", String(DAEMON_TTL_MS)]);
    proxy = await spawnProxy(["--metadata-server", server.url, "--health-interval-ms", "500"]);
    const discovered = () => proxy!.logs.filter((l) => l.msg === "instance discovered" || l.msg === "instance gone");
    expect(await eventually(() => discovered().length > 0, 30_000)).toBe(true);
    await sleep(WATCH_MS);
    expect(discovered().map((l) => `${String(l.msg)} ${String(l.url)}`)).toEqual([`instance discovered ${node.sim.url}`]);
  }, 120_000);
});
