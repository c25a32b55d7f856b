// Benchmark of the data plane between two daemons on loopback (not part of npm test).
//
//   npm run bench:transfer     (or: node --import tsx test/bench/transfer-bench.ts)
//
// PUSH of 64 × 16 MiB and of 4096 × 64 KiB entries through BatchTransfer, printed
// beside iperf3 single-stream throughput on the same loopback in the same run.
// Targets (issue 3): ≥ 0.9 × iperf3 at 16 MiB, ≥ 0.6 × at 64 KiB.
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { KvferryClient } from "../../src/client/client.js";
import { spawnDaemon, type SpawnedDaemon } from "../../src/launch/spawn-daemon.js";

const MiB = 1 << 20;
const TOKEN = "bench-token";
const IPERF_PORT = 15201;
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);

function ensureIperf3(): boolean {
  if (spawnSync("sh", ["-c", "command -v iperf3"]).status === 0) return true;
  if (process.getuid?.() === 0) {
    console.log("installing iperf3 (apt) ...");
    execFileSync("apt-get", ["install", "-y", "-qq", "iperf3"], { stdio: "inherit" });
    return true;
  }
  console.log("iperf3 is missing: `sudo apt-get install iperf3`, then run again");
  return false;
}

/** iperf3 single stream over 127.0.0.1, 1 MiB writes, 5 s: GB/s received. */
async function iperf3GBs(): Promise<number> {
  const server = spawn("iperf3", ["-s", "-1", "-B", "127.0.0.1", "-p", String(IPERF_PORT)], { stdio: "ignore" });
  await new Promise((r) => setTimeout(r, 300));
  try {
    const out = execFileSync("iperf3", ["-c", "127.0.0.1", "-p", String(IPERF_PORT), "-t", "5", "-l", "1M", "-J"], {
      encoding: "utf8",
    });
    return JSON.parse(out).end.sum_received.bits_per_second / 8 / 1e9;
  } finally {
    server.kill();
  }
}

/** GB/s of one PUSH of `count` entries of `size` bytes in batches of `batch` ids. */
async function pushRun(
  a: SpawnedDaemon, b: SpawnedDaemon, count: number, size: number, label: string, batch: number,
): Promise<number> {
  const ca = new KvferryClient(a.address);
  const ids = Array.from({ length: count }, (_, i) => `${label}-${i}`);
  const data = randomBytes(size);
  for (const id of ids) await ca.put(id, "kv", data, { seal: true });
  const t = performance.now();
  const calls = [];
  for (let i = 0; i < ids.length; i += batch) calls.push(ca.batchTransfer(ids.slice(i, i + batch), b.peerAddress, "push"));
  const responses = await Promise.all(calls);
  const seconds = (performance.now() - t) / 1e3;
  const failed = responses.flatMap((r) => r.results).filter((r) => r.code !== 0);
  if (failed.length > 0) throw new Error(`${failed.length} transfers failed: ${failed[0]!.message}`);
  // Free the target for the next run.
  const cb = new KvferryClient(b.address);
  for (const id of ids) await cb.release(id);
  cb.close();
  ca.close();
  return (count * size) / seconds / 1e9;
}

/** A warm-up run, then ROUNDS measured runs: [median, best] GB/s. */
async function measure(a: SpawnedDaemon, b: SpawnedDaemon, count: number, size: number, label: string): Promise<[number, number]> {
  await pushRun(a, b, count, size, `${label}-warm`, count);
  const runs: number[] = [];
  for (let r = 0; r < ROUNDS; r++) runs.push(await pushRun(a, b, count, size, `${label}-${r}`, count));
  runs.sort((x, y) => x - y);
  return [runs[Math.floor(runs.length / 2)]!, runs[runs.length - 1]!];
}

async function main() {
  const args = [
    "--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0",
    "--cluster-token", TOKEN, "--kv-buffer-size", "1280MiB", ...(process.env.BENCH_CONNS ? ["--connections-per-peer", process.env.BENCH_CONNS] : []),
  ];
  const iperf = ensureIperf3() ? await iperf3GBs() : NaN;
  const a = await spawnDaemon(args);
  const b = await spawnDaemon(args);
  try {
    const [big, bigBest] = await measure(a, b, 64, 16 * MiB, "big");
    const [small, smallBest] = await measure(a, b, 4096, 64 * 1024, "small");
    const row = (what: string, median: number, best: number, target: number) =>
      console.log(
        `  ${what.padEnd(34)} median ${median.toFixed(2)} GB/s (best ${best.toFixed(2)})   ` +
          `ratio ${(median / iperf).toFixed(2)}  (target ≥ ${target})`,
      );
    console.log(`kvferry transfer bench (two daemons, 127.0.0.1, TCP engine, ${ROUNDS} rounds after a warm-up)`);
    console.log(`  iperf3 single stream, 1 MiB writes:  ${iperf.toFixed(2)} GB/s`);
    row("PUSH 64 × 16 MiB (one batch)", big, bigBest, 0.9);
    row("PUSH 4096 × 64 KiB (one batch)", small, smallBest, 0.6);
  } finally {
    await a.stop();
    await b.stop();
  }
}

await main();
