// `kvferry demo`: two daemons on loopback, driven through the TypeScript client.
//
// What it shows: entries made of per-layer parts, a streamed large part, a consuming
// read that frees the entry, LRU eviction when the buffer overflows, a batch PUSH from
// one daemon to the other through the native engine, a Get that pulls from a source,
// and the daemons' own counters. Everything stops before the command returns.
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
  out(`kvferry demo: starting two daemons with ${bufferSize} lookup buffers on 127.0.0.1`);
  const args = ["--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0", "--kv-buffer-size", bufferSize];
  const env = { KVFERRY_CLUSTER_TOKEN: randomBytes(18).toString("base64url") };
  const [daemon, decode] = await Promise.all([spawnDaemon(args, { env }), spawnDaemon(args, { env })]);
  const client = new KvferryClient(daemon.address);
  const decodeClient = new KvferryClient(decode.address);
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

    // 4. Between daemons: a batch of 16 entries × 2 MiB pushed through the native engine,
    //    then one more pulled by a Get that names its source.
    const batch = Array.from({ length: 16 }, (_, i) => `demo-kv-${i}`);
    const kv = randomBytes(2 * MiB);
    for (const id of batch) await client.put(id, "kv", kv, { seal: true });
    const pushed = await client.batchTransfer(batch, decode.peerAddress, "push");
    const pushOk = pushed.results.every((r) => r.code === 0);
    const slowest = Math.max(...pushed.results.map((r) => r.micros));
    const arrived = await decodeClient.get("demo-kv-7", { consume: true });
    ok &&= pushOk && arrived.parts.get("kv")!.equals(kv);
    rows.push([
      "PUSH 16 × 2 MiB to the 2nd daemon",
      pushOk ? `${(slowest / 1000).toFixed(1)} ms (${((32 * MiB) / slowest / 1e3).toFixed(2)} GB/s), bytes verified` : pushed.results.find((r) => r.code)!.message,
    ]);
    await client.put("demo-pull", "kv", kv, { seal: true });
    const pulled = await decodeClient.get("demo-pull", { source: daemon.peerAddress, consume: true });
    ok &&= pulled.parts.get("kv")!.equals(kv);
    const sourceSays = await client.stat("demo-pull").then(() => "kept", (e) => (e instanceof NotFoundError ? e.reason ?? e.message : String(e)));
    rows.push(["Get with source on the 2nd daemon", `pulled 2 MiB, bytes verified; the source's copy: ${sourceSays}`]);

    // 5. Overflow: 8 MiB entries until the buffer must evict the least recently used.
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
    decodeClient.close();
    const codes = await Promise.all([daemon.stop(), decode.stop()]);
    out(`daemons stopped (exit codes ${codes.join(", ")})`);
    ok &&= codes.every((c) => c === 0);
  }
  out(ok ? "demo: OK" : "demo: FAILED");
  return ok ? 0 : 1;
}
