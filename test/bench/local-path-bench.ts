// Benchmark of the local path against the inline gRPC path (not part of npm test).
//
//   npm run bench:local      (or: node --import tsx test/bench/local-path-bench.ts)
//
// One daemon on loopback; entries of 64 MiB (BENCH_LOCAL_MIB) in 32 parts of 2 MiB (a
// layer each), written and read back ROUNDS times each way: inline (PutStream per part,
// GetStream) and local (Reserve, copy into the mapped pool, Commit; Lend, read the views,
// ReturnLoan). Beside them, memcpy of the same bytes in this process: the local path's
// floor is one copy. Medians of the rounds.
import { randomBytes } from "node:crypto";
import { KvferryClient } from "../../src/client/client.js";
import { spawnDaemon } from "../../src/launch/spawn-daemon.js";

const MiB = 1 << 20;
const ENTRY = Number(process.env.BENCH_LOCAL_MIB ?? 64) * MiB;
const PARTS = 32;
const ROUNDS = Number(process.env.BENCH_LOCAL_ROUNDS ?? 5);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const gbs = (ms: number) => ENTRY / (ms / 1e3) / 1e9;

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t = performance.now();
  await fn();
  return performance.now() - t;
}

const daemon = await spawnDaemon(["--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0", "--kv-buffer-size", `${4 * ENTRY}`]);
const client = new KvferryClient(daemon.address);
try {
  const partSize = ENTRY / PARTS;
  const parts = new Map(Array.from({ length: PARTS }, (_, i) => [`layer.${i}`, randomBytes(partSize)] as const));
  const sink = Buffer.allocUnsafe(partSize);
  const times = { memcpy: [] as number[], putInline: [] as number[], getInline: [] as number[], putLocal: [] as number[], getLocal: [] as number[] };
  await client.localPool(); // mapped once, as an engine does at start
  for (let r = 0; r < ROUNDS + 1; r++) {
    const keep = r > 0; // round 0 warms up
    const m = await timed(async () => {
      for (const data of parts.values()) data.copy(sink);
    });
    const pi = await timed(async () => {
      let i = 0;
      for (const [name, data] of parts) await client.putStream(`in-${r}`, name, data, { seal: ++i === PARTS });
    });
    const gi = await timed(() => client.getStream(`in-${r}`, { consume: true }));
    const pl = await timed(() => client.putLocal(`lo-${r}`, parts, { seal: true }));
    const gl = await timed(async () => {
      const loan = await client.getLocal(`lo-${r}`, { consume: true });
      for (const name of parts.keys()) for (const v of loan.parts.get(name)!) v.copy(sink, 0, 0, Math.min(v.length, sink.length));
      await loan.return();
    });
    if (keep) {
      times.memcpy.push(m);
      times.putInline.push(pi);
      times.getInline.push(gi);
      times.putLocal.push(pl);
      times.getLocal.push(gl);
    }
  }
  const ref = median(times.memcpy);
  console.log(`local path vs inline gRPC: ${ENTRY / MiB} MiB entries of ${PARTS} parts, median of ${ROUNDS} rounds, one daemon on 127.0.0.1`);
  const row = (label: string, ms: number) => console.log(`  ${label.padEnd(34)} ${ms.toFixed(1).padStart(8)} ms  ${gbs(ms).toFixed(2).padStart(6)} GB/s  ${(ref / ms).toFixed(2)}× memcpy`);
  row("memcpy in this process (reference)", ref);
  row("put inline (PutStream per part)", median(times.putInline));
  row("put local (reserve, copy, commit)", median(times.putLocal));
  row("get inline (GetStream, consume)", median(times.getInline));
  row("get local (lend, read, return)", median(times.getLocal));
  console.log(`  local / inline: put ${(median(times.putInline) / median(times.putLocal)).toFixed(1)}× faster, get ${(median(times.getInline) / median(times.getLocal)).toFixed(1)}× faster`);
} finally {
  client.close();
  await daemon.stop();
}
