// `kvferry demo`: one daemon, driven through the TypeScript client, summarized.
//
// What it shows: entries made of per-layer parts, a streamed large part, a consuming
// read that frees the entry, LRU eviction when the buffer overflows, and the daemon's
// own counters. Everything runs on loopback and stops before the command returns.
import { createHash, randomBytes } from "node:crypto";
import { KvferryClient } from "../client/client.js";
import { NotFoundError } from "../errors.js";
import { spawnDaemon } from "./spawn-daemon.js";

const MiB = 1 << 20;

function fmtBytes(n: number): string {
  return n >= MiB ? `${(n / MiB).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`;
}

export async function runDemo(options: { kvBufferSize?: string }): Promise<number> {
  const bufferSize = options.kvBufferSize ?? "64MiB";
  const out = (s: string) => process.stdout.write(`${s}\n`);
  out(`kvferry demo: starting a daemon with a ${bufferSize} lookup buffer on 127.0.0.1`);
  const daemon = await spawnDaemon(["--listen", "127.0.0.1:0", "--kv-buffer-size", bufferSize]);
  const client = new KvferryClient(daemon.address);
  const rows: [string, string][] = [];
  let ok = true;
  try {
    await client.waitForReady();
    const info0 = await client.serverInfo();
    out(`daemon ${info0.nodeId} (v${info0.version}) serving on ${daemon.address}, pool ${fmtBytes(info0.poolCapacity)}`);

    // 1. A prefill-like writer: 32 layers of 256 KiB, then seal.
    const layers = 32;
    const layerBytes = 256 * 1024;
    const written = new Map<string, Buffer>();
    const t0 = performance.now();
    for (let l = 0; l < layers; l++) {
      const data = randomBytes(layerBytes);
      written.set(`layer.${l}`, data);
      await client.put("demo-req-1", `layer.${l}`, data, { seal: l === layers - 1 });
    }
    const putMs = performance.now() - t0;
    rows.push(["put 32 layers × 256 KiB", `${putMs.toFixed(1)} ms (${((layers * layerBytes) / putMs / 1e6).toFixed(2)} GB/s)`]);

    // 2. A decode-like reader: everything, consumed (freed after the read).
    const t1 = performance.now();
    const got = await client.getStream("demo-req-1", { consume: true });
    const getMs = performance.now() - t1;
    const intact = [...written].every(([name, data]) => got.parts.get(name)?.equals(data));
    ok &&= intact;
    rows.push(["get (consume) 8 MiB", `${getMs.toFixed(1)} ms, ${intact ? "every byte verified" : "MISMATCH"}`]);
    const gone = await client.stat("demo-req-1").then(() => "still there", (e) => (e instanceof NotFoundError ? e.message : String(e)));
    rows.push(["stat after consume", gone]);

    // 3. A large part streamed in chunks.
    const big = randomBytes(24 * MiB);
    await client.put("demo-big", "kv", big, { seal: true });
    const back = await client.getStream("demo-big");
    const digest = (b: Buffer) => createHash("sha256").update(b).digest("hex").slice(0, 16);
    ok &&= digest(back.parts.get("kv")!) === digest(big);
    rows.push(["24 MiB part streamed", `sha256 ${digest(big)} → ${digest(back.parts.get("kv")!)}`]);

    // 4. Overflow: 8 MiB entries until the buffer must evict the least recently used.
    const capacity = info0.poolCapacity;
    const n = Math.ceil(capacity / (8 * MiB)) + 2;
    for (let i = 0; i < n; i++) await client.put(`demo-fill-${i}`, "kv", randomBytes(8 * MiB), { seal: true });
    const info = await client.serverInfo();
    const evictedFirst = await client.stat("demo-big").then(() => "kept", (e) => (e instanceof NotFoundError ? e.reason ?? e.message : String(e)));
    rows.push([`wrote ${n} × 8 MiB into ${fmtBytes(capacity)}`, `${info.counters!.evictions} evictions (${fmtBytes(info.counters!.bytesEvicted)}); oldest entry: ${evictedFirst}`]);
    rows.push(["buffer now", `${fmtBytes(info.bytesUsed)} used of ${fmtBytes(info.poolCapacity)} in ${info.entries} entries`]);
    ok &&= info.bytesUsed <= info.poolCapacity && info.counters!.evictions > 0;

    const width = Math.max(...rows.map(([k]) => k.length));
    out("");
    for (const [k, v] of rows) out(`  ${k.padEnd(width)}  ${v}`);
    out("");
  } catch (err) {
    ok = false;
    process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
  } finally {
    client.close();
    const code = await daemon.stop();
    out(`daemon stopped (exit code ${code})`);
    ok &&= code === 0;
  }
  out(ok ? "demo: OK" : "demo: FAILED");
  return ok ? 0 : 1;
}
