// Benchmark of one daemon's client API on loopback (not part of npm test).
//
//   npm run bench            (or: node --import tsx test/bench/daemon-bench.ts)
//
// Prints Put / Get latency percentiles for 4 KiB parts, and the throughput of 64 MiB
// parts through PutStream / GetStream, each beside a reference measured in the same
// run: memcpy of the same bytes, and a plain Node.js TCP stream over loopback. Also the
// cost of a put into an entry that already holds many parts, against its first parts
// (a ratio near 1: per-part bookkeeping is O(1)).
import { randomBytes } from "node:crypto";
import { createServer, connect, type AddressInfo } from "node:net";
import { KvferryClient } from "../../src/client/client.js";
import { spawnDaemon } from "../../src/launch/spawn-daemon.js";

const MiB = 1 << 20;
const LAT_N = Number(process.env.BENCH_LAT_N ?? 2000);
const BIG_N = Number(process.env.BENCH_BIG_N ?? 8);
/** Parts per quarter of the many-parts entry (4 quarters: at most max_parts_per_entry 4096). */
const PARTS_N = Number(process.env.BENCH_PARTS_N ?? 1000);

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function memcpyGBs(bytes: number, rounds = 8): number {
  const src = randomBytes(bytes);
  const dst = Buffer.allocUnsafe(bytes);
  src.copy(dst); // warm
  const t = performance.now();
  for (let i = 0; i < rounds; i++) src.copy(dst);
  return (bytes * rounds) / ((performance.now() - t) / 1e3) / 1e9;
}

/** One Node.js TCP stream over loopback, 1 MiB writes, honouring backpressure. */
async function nodeTcpGBs(total: number): Promise<number> {
  const server = createServer((s) => s.resume());
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  const sock = connect(port, "127.0.0.1");
  await new Promise((r) => sock.once("connect", r));
  const chunk = randomBytes(MiB);
  const t = performance.now();
  for (let sent = 0; sent < total; sent += MiB) {
    if (!sock.write(chunk)) await new Promise((r) => sock.once("drain", r));
  }
  await new Promise<void>((r) => sock.end(r));
  const gbs = total / ((performance.now() - t) / 1e3) / 1e9;
  sock.destroy();
  server.close();
  return gbs;
}

async function main() {
  const daemon = await spawnDaemon(["--listen", "127.0.0.1:0", "--kv-buffer-size", "1GiB"]);
  const client = new KvferryClient(daemon.address);
  try {
    await client.waitForReady();

    // Latency: 4 KiB parts, one call at a time.
    const small = randomBytes(4096);
    const put: number[] = [];
    const get: number[] = [];
    for (let i = 0; i < 200; i++) {
      await client.put(`warm-${i}`, "p", small, { seal: true });
      await client.get(`warm-${i}`, { consume: true });
    }
    for (let i = 0; i < LAT_N; i++) {
      let t = performance.now();
      await client.put(`lat-${i}`, "p", small, { seal: true });
      put.push(performance.now() - t);
      t = performance.now();
      await client.get(`lat-${i}`, { consume: true });
      get.push(performance.now() - t);
    }
    put.sort((a, b) => a - b);
    get.sort((a, b) => a - b);

    // Throughput: 64 MiB parts, streamed.
    const big = randomBytes(64 * MiB);
    await client.putStream("warm-big", "kv", big, { seal: true });
    await client.getStream("warm-big", { consume: true });
    let t = performance.now();
    for (let i = 0; i < BIG_N; i++) await client.putStream(`big-${i}`, "kv", big, { seal: true });
    const putGBs = (BIG_N * big.length) / ((performance.now() - t) / 1e3) / 1e9;
    t = performance.now();
    for (let i = 0; i < BIG_N; i++) {
      const got = await client.getStream(`big-${i}`, { consume: true });
      if (got.parts.get("kv")!.length !== big.length) throw new Error("short read");
    }
    const getGBs = (BIG_N * big.length) / ((performance.now() - t) / 1e3) / 1e9;

    // One entry, 4 × PARTS_N small parts: the last quarter's puts against the first's.
    const quarter: number[] = [];
    for (let q = 0; q < 4; q++) {
      const t = performance.now();
      for (let i = q * PARTS_N; i < (q + 1) * PARTS_N; i++) await client.put("many-parts", `layer.${i}`, small);
      quarter.push((performance.now() - t) / PARTS_N);
    }
    await client.release("many-parts");

    const memcpy = memcpyGBs(64 * MiB);
    const tcp = await nodeTcpGBs(BIG_N * 64 * MiB);

    const ms = (x: number) => `${(x * 1000).toFixed(0)} µs`;
    console.log(`kvferry daemon bench (one client, one daemon, 127.0.0.1)`);
    console.log(`  Put 4 KiB   p50 ${ms(pct(put, 50))}  p99 ${ms(pct(put, 99))}   (n=${LAT_N})`);
    console.log(`  Get 4 KiB   p50 ${ms(pct(get, 50))}  p99 ${ms(pct(get, 99))}   (n=${LAT_N}, consume)`);
    console.log(`  PutStream 64 MiB  ${putGBs.toFixed(2)} GB/s   (n=${BIG_N})`);
    console.log(`  GetStream 64 MiB  ${getGBs.toFixed(2)} GB/s   (n=${BIG_N}, consume)`);
    console.log(
      `  Put into one entry: ${ms(quarter[0]!)} per part for parts 0..${PARTS_N - 1}, ` +
        `${ms(quarter[3]!)} for parts ${3 * PARTS_N}..${4 * PARTS_N - 1}   (ratio ${(quarter[3]! / quarter[0]!).toFixed(2)})`,
    );
    console.log(`  reference: memcpy 64 MiB ${memcpy.toFixed(2)} GB/s; Node TCP loopback ${tcp.toFixed(2)} GB/s`);
    console.log(
      `  ratios: PutStream/TCP ${(putGBs / tcp).toFixed(2)}  GetStream/TCP ${(getGBs / tcp).toFixed(2)}  ` +
        `PutStream/memcpy ${(putGBs / memcpy).toFixed(3)}`,
    );
  } finally {
    client.close();
    await daemon.stop();
  }
}

await main();
