// A discovered instance that goes takes its series out of the proxy's /metrics: with
// engines coming and going on new ports, series by URL would otherwise pile up for ever.
// Real `kvferry metadata-server`, daemons, simulators and proxy processes.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawnMetadataServer, type MetadataServerProcess } from "../helpers/metadata-server.js";
import { eventually, SMALL_LAYOUT, spawnProxy, startNode, stopNodes, type SimNode, type SpawnedProxy } from "../helpers/proxy.js";

let server: MetadataServerProcess;
let prefill: SimNode | undefined;
let decode: SimNode | undefined;
let proxy: SpawnedProxy | undefined;

beforeAll(async () => {
  server = await spawnMetadataServer(["--listen", "127.0.0.1:0"]);
}, 30_000);

afterAll(async () => {
  await proxy?.stop();
  await stopNodes([prefill, decode]);
  await server?.stop();
});

const metrics = async () => (await fetch(`${proxy!.url}/metrics`, { signal: AbortSignal.timeout(5_000) })).text();
const seriesOf = (text: string, url: string) => text.split("\n").filter((l) => !l.startsWith("#") && l.includes(`url="${url}"`));

describe("proxy metrics of a discovered instance that goes", () => {
  it("drops every series labelled with its URL", async () => {
    const daemonArgs = ["--metadata-server", server.url, "--metadata-ttl-ms", "3000"];
    [prefill, decode] = await Promise.all([startNode("prefill", SMALL_LAYOUT, daemonArgs), startNode("decode", SMALL_LAYOUT, daemonArgs)]);
    proxy = await spawnProxy(["--metadata-server", server.url, "--health-interval-ms", "500"]);
    // Both roles discovered and healthy: /health answers 200.
    expect(await eventually(async () => (await fetch(`${proxy!.url}/health`)).status === 200, 20_000)).toBe(true);
    const res = await fetch(`${proxy.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "kvferry-sim-7b", prompt: "hello there", max_tokens: 2 }),
      signal: AbortSignal.timeout(30_000),
    });
    expect(res.status, await res.text()).toBe(200);
    const url = prefill.sim.url;
    expect(seriesOf(await metrics(), url).some((l) => l.startsWith("kvferry_proxy_prefill_duration_seconds_count"))).toBe(true);
    // The prefill simulator stops: its announcement ends and its daemon's record drops it.
    expect(await prefill.sim.stop()).toBe(0);
    expect(await eventually(() => proxy!.logs.some((l) => l.msg === "instance gone" && l.url === url), 20_000)).toBe(true);
    expect(seriesOf(await metrics(), url)).toEqual([]);
  }, 90_000);
});
