// Proxy overhead (not part of npm test):
//
//   npm run bench:proxy      (or: node --import tsx test/bench/proxy-bench.ts)
//
// Time to first token of a streamed completion through the proxy (prefill on one node,
// KV pushed between two daemons, decode on the other) against the reference measured in
// the same run: the same request sent straight to the decode simulator with its KV
// already in the decode node's daemon. Sequential requests, p50 and p99, for a short and
// a long prompt; the difference is what disaggregating through kvferry costs per request.
import { randomBytes } from "node:crypto";
import { spawnDaemon } from "../../src/launch/spawn-daemon.js";
import { spawnProxy } from "../../src/proxy/spawn.js";
import { metricSum, percentile } from "../../src/demo/report.js";
import { spawnSimulator } from "../../src/simulator/spawn.js";

const N = Number(process.env.BENCH_N ?? 40);
const MODEL = "kvferry-sim-7b";

/** Milliseconds to the first SSE data event of a streamed completion. */
async function ttft(url: string, body: Record<string, unknown>): Promise<number> {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ ...body, stream: true }),
  });
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status} ${await res.text()}`);
  const reader = res.body!.getReader();
  let first = NaN;
  let seen = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    seen += Buffer.from(value).toString("utf8");
    if (Number.isNaN(first) && seen.includes("data: {")) first = performance.now() - t0;
  }
  if (!seen.includes("data: [DONE]")) throw new Error(`${url}: stream did not end with [DONE]`);
  return first;
}

async function postJson(url: string, path: string, body: Record<string, unknown>): Promise<void> {
  const res = await fetch(`${url}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  if (!res.ok) throw new Error(`${url}${path}: HTTP ${res.status} ${await res.text()}`);
  await res.arrayBuffer();
}

function prompt(words: number, seed: number): string {
  return Array.from({ length: words }, (_, i) => `w${(seed * 7919 + i * 104729) % 5000}`).join(" ");
}

async function main() {
  const env = { KVFERRY_CLUSTER_TOKEN: randomBytes(18).toString("base64url") };
  const daemonArgs = ["--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0", "--kv-buffer-size", "2GiB"];
  const [prefillDaemon, decodeDaemon] = await Promise.all([spawnDaemon(daemonArgs, { env }), spawnDaemon(daemonArgs, { env })]);
  const sim = (role: string, daemon: { address: string }) =>
    spawnSimulator(["--role", role, "--listen", "127.0.0.1:0", "--daemon", daemon.address, "--model", MODEL]);
  const [prefill, decode, localPrefill] = await Promise.all([sim("prefill", prefillDaemon), sim("decode", decodeDaemon), sim("prefill", decodeDaemon)]);
  const proxy = await spawnProxy([
    "--listen", "127.0.0.1:0", "--transfer", "push",
    "--prefill", `${prefill.url}=${prefillDaemon.address}`, "--decode", `${decode.url}=${decodeDaemon.address}`,
  ]);
  const proxyUrl = proxy.url;
  try {
    console.log(`kvferry proxy bench (2 daemons, simulators, proxy on 127.0.0.1; ${N} sequential streamed requests each; 128 KiB of KV per token)`);
    for (const words of [64, 512]) {
      const through: number[] = [];
      const direct: number[] = [];
      // A warm-up of each path.
      await ttft(proxyUrl, { model: MODEL, prompt: prompt(words, -1), max_tokens: 4 });
      const before = await (await fetch(`${proxyUrl}/metrics`)).text();
      for (let i = 0; i < N; i++) {
        const body = { model: MODEL, prompt: prompt(words, i), max_tokens: 4 };
        through.push(await ttft(proxyUrl, body));
        // The reference: the KV is put into the decode node's own daemon first (not timed).
        const transferId = `bench-direct-${words}-${i}`;
        await postJson(localPrefill.url, "/v1/completions", { ...body, kv_transfer_params: { do_remote_decode: true, transfer_id: transferId } });
        direct.push(await ttft(decode.url, { ...body, kv_transfer_params: { do_remote_prefill: true, transfer_id: transferId } }));
      }
      const after = await (await fetch(`${proxyUrl}/metrics`)).text();
      const meanMs = (name: string) => ((metricSum(after, name) - metricSum(before, name)) / N) * 1e3;
      const prefillMs = meanMs("kvferry_proxy_prefill_duration_seconds_sum");
      const pushMs = meanMs("kvferry_proxy_kv_transfer_seconds_sum");
      const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
      const row = (label: string, xs: number[]) => `${label} p50 ${percentile(xs, 50).toFixed(1).padStart(7)} ms   p99 ${percentile(xs, 99).toFixed(1).padStart(7)} ms`;
      console.log(`  prompt ${words} words (${((words + 1) * 128) / 1024} MiB of KV)`);
      console.log(`    ${row("through the proxy (prefill + push + decode)", through)}`);
      console.log(`    ${row("straight to decode, KV already local       ", direct)}`);
      console.log(`    overhead p50 ${(percentile(through, 50) - percentile(direct, 50)).toFixed(1)} ms; per request on average: ` +
        `prefill call ${prefillMs.toFixed(1)} ms (KV computed and written into its daemon: the local path unless KVFERRY_LOCAL_SOCKET=none), push ${pushMs.toFixed(1)} ms, ` +
        `the rest (the proxy's own hops, within noise) ${(mean(through) - mean(direct) - prefillMs - pushMs).toFixed(1)} ms`);
    }
  } finally {
    for (const p of [proxy, prefill, decode, localPrefill, prefillDaemon, decodeDaemon]) await p.stop();
  }
}

await main();
