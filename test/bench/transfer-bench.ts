// Benchmark of the data plane between two daemons on loopback (not part of npm test).
//
//   npm run bench:transfer     (or: node --import tsx test/bench/transfer-bench.ts)
//
// Three shapes, each one BatchTransfer: 64 × 16 MiB, 256 × 1 MiB and 4096 × 64 KiB. In
// the same run, over 127.0.0.1: iperf3 single stream (the reference), kvferry PUSH and
// PULL between two daemons, and Mooncake's Transfer Engine (its TCP transport, two engines
// each in a Python process running mooncake-transfer.py, in the venv that
// scripts/mooncake-venv.sh makes) writing the same shapes with one
// batch_transfer_sync_write. Each figure comes with its CPU-seconds per GB moved: the
// utime + stime that the sending and the receiving processes spent (iperf3's client and
// server, the two daemons, the two Mooncake engines), from /proc/PID/stat.
//
// Every shape is warmed up once, then ROUNDS rounds each run everything (iperf3, then per
// shape PUSH, PULL, Mooncake), so that all figures of a round share the machine's state;
// printed: medians of the rounds, ratios to iperf3 and to Mooncake. Targets: issue 14.
// If Mooncake cannot be installed or started, one line says why and the rest runs.
//
// A second reference, per shape: raw loopback TCP moving the shape's bytes from one
// memfd region to another of the same size (native/test/bench/raw_stream.cc, built here
// with g++), the fastest of 1, 2 and 4 streams. iperf3 resends one 1 MiB buffer, so its
// bytes never leave the CPU's caches; a transfer of 256 MiB – 1 GiB reads and writes
// memory that is not cached, which on a small machine costs the kernel about twice the
// CPU per byte. kvferry can at best match this reference; it is printed beside iperf3's.
//
// Then, with 1,000 idle authenticated connections held on the target's data port, the
// 16 MiB PUSH and PULL again (issue 14: they cost no thread each; the transfer keeps its target).
//
// BENCH_ROUNDS (default 3), BENCH_CONNS (--connections-per-peer), BENCH_IPERF_SECONDS
// (default 3, per round), BENCH_LIMIT_S (default 600: the whole run, then it gives up).
import { execFile, execFileSync, spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname } from "node:path";
import { availableParallelism } from "node:os";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { KvferryClient } from "../../src/client/client.js";
import { spawnDaemon, type SpawnedDaemon } from "../../src/launch/spawn-daemon.js";
import { jsonLines } from "../helpers/json-lines.js";
import { mooncakePython } from "../helpers/mooncake.js";
import { FrameType, RawDataConnection, authenticate } from "../helpers/wire.js";

const KiB = 1 << 10;
const MiB = 1 << 20;
const TOKEN = "bench-token";
const IPERF_PORT = 15201;
const ROUNDS = Math.min(Math.max(Number(process.env.BENCH_ROUNDS ?? 3), 1), 9);
const IPERF_SECONDS = Math.min(Math.max(Number(process.env.BENCH_IPERF_SECONDS ?? 3), 1), 30);
const LIMIT_S = Number(process.env.BENCH_LIMIT_S ?? 600);
/** A BatchTransfer's deadline. */
const TRANSFER_DEADLINE_MS = 60_000;
/** Puts in flight while the entries are loaded (setup, not measured). */
const PUT_CONCURRENCY = 8;
/** One answer of a Mooncake engine (its start included). */
const MOONCAKE_ANSWER_MS = 60_000;
/**
 * BENCH_PROTOCOL=rdma (npm run bench:ucx): the daemons run the UCX transport, over what
 * UCX_TLS / UCX_NET_DEVICES name (default tcp on lo), and the third reference is
 * ucx_perftest's ucp_am_bw on the same transport (one message per entry, the shape's
 * count of them) instead of Mooncake; the idle-connections run (TCP's data port) is skipped.
 */
const PROTOCOL = process.env.BENCH_PROTOCOL === "rdma" ? "rdma" : "tcp";
const UCX_ENV = { UCX_TLS: process.env.UCX_TLS ?? "tcp", UCX_NET_DEVICES: process.env.UCX_NET_DEVICES ?? "lo", UCX_WARN_UNUSED_ENV_VARS: "n" };
const OTHER = PROTOCOL === "tcp" ? "Mooncake" : "ucx_perftest";
const PERFTEST_PORT = 15299;
const RAW_SOURCE = fileURLToPath(new URL("../../native/test/bench/raw_stream.cc", import.meta.url));
const RAW_BINARY = fileURLToPath(new URL("../../native/build/raw_stream", import.meta.url));
/** Streams tried for the raw reference (the daemon's default is 4 connections per peer). */
const RAW_STREAMS = [1, 2, 4];
const MOONCAKE_SCRIPT = fileURLToPath(new URL("./mooncake-transfer.py", import.meta.url));
const CLK_TCK = Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout?.trim()) || 100;

interface Shape {
  readonly count: number;
  readonly size: number;
  readonly label: string;
  /** Issue 14's target for kvferry, × iperf3. */
  readonly target: number;
}

const SHAPES: readonly Shape[] = [
  { count: 64, size: 16 * MiB, label: "64 × 16 MiB", target: 0.95 },
  { count: 256, size: MiB, label: "256 × 1 MiB", target: 0.9 },
  { count: 4096, size: 64 * KiB, label: "4096 × 64 KiB", target: 0.6 },
];
/** Issue 14: kvferry's CPU per GB at 16 MiB at most this × iperf3's; every shape ≥ this × Mooncake. */
const CPU_TARGET = 1.3;
const MOONCAKE_TARGET = 2;
const SPAN = Math.max(...SHAPES.map((s) => s.count * s.size));
const BATCH_MAX = Math.max(...SHAPES.map((s) => s.count));
/** Mooncake's TCP transport refuses a batch of more requests per peer than this (default 1024). */
const MOONCAKE_QUEUE = BATCH_MAX;

/** Connections held open (authenticated, idle) on the target while a shape is pushed. */
const IDLE_CONNECTIONS = 1000;

/** Threads of a process now. */
function threadsOf(pid: number): number {
  return readdirSync(`/proc/${pid}/task`).length;
}

/** `n` connections to a data port, each authenticated (the bench's token) and then silent. */
async function idleConnections(address: string, n: number): Promise<RawDataConnection[]> {
  const out: RawDataConnection[] = [];
  for (let i = 0; i < n; i += 50) {
    const group = await Promise.all(Array.from({ length: Math.min(50, n - i) }, () => RawDataConnection.open(address)));
    out.push(...group);
    for (const { verdict } of await Promise.all(group.map((c) => authenticate(c, TOKEN)))) {
      if (verdict === "closed" || verdict.type !== FrameType.HELLO_OK) throw new Error("an idle connection was refused its handshake");
    }
  }
  return out;
}

/** One measured run: GB/s and CPU-seconds per GB (1e9 bytes). */
interface Sample {
  readonly gbs: number;
  readonly cpuPerGB: number;
}

// ---------------------------------------------------------------------------------------
// CPU time from /proc

/** Fields 14–17 of /proc/PID/stat in seconds: utime + stime (all threads), cutime + cstime (waited-for children). */
function procCpu(stat: string): { self: number; children: number } {
  // The command name (field 2) may hold spaces and parentheses: count from after its ")".
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" "); // f[0] is field 3
  return { self: (Number(f[11]) + Number(f[12])) / CLK_TCK, children: (Number(f[13]) + Number(f[14])) / CLK_TCK };
}

/** CPU-seconds the live processes `pids` have spent so far, together. */
const cpuSeconds = (pids: readonly number[]) =>
  pids.reduce((sum, pid) => sum + procCpu(readFileSync(`/proc/${pid}/stat`, "utf8")).self, 0);

/** Runs `run` and returns its wall seconds (or the ones it reports) with the CPU-seconds `pids` spent meanwhile. */
async function sampled(pids: readonly number[], bytes: number, run: () => Promise<number | void>): Promise<Sample> {
  const cpu = cpuSeconds(pids);
  const t = performance.now();
  const reported = await run();
  const seconds = reported ?? (performance.now() - t) / 1e3;
  return { gbs: bytes / seconds / 1e9, cpuPerGB: (cpuSeconds(pids) - cpu) / (bytes / 1e9) };
}

// ---------------------------------------------------------------------------------------
// iperf3

/** Whether `tool` is here, installing Debian's `pkg` (apt) when it is not and this runs as root. */
function ensureTool(tool: string, pkg: string): boolean {
  if (spawnSync("sh", ["-c", `command -v ${tool}`]).status === 0) return true;
  if (process.getuid?.() === 0) {
    console.log(`installing ${pkg} (${tool}, apt) ...`);
    execFileSync("apt-get", ["install", "-y", "-qq", pkg], { stdio: "inherit", timeout: 300_000 });
    return true;
  }
  console.log(`${tool} is missing: \`sudo apt-get install ${pkg}\`, then run again`);
  return false;
}

/** An iperf3 server on 127.0.0.1 for the whole run (each round's client connects to it). */
async function startIperf3Server(): Promise<ChildProcess> {
  const server = spawn("iperf3", ["-s", "-B", "127.0.0.1", "-p", String(IPERF_PORT)], { stdio: "ignore" });
  await new Promise((r) => setTimeout(r, 300));
  if (server.exitCode !== null) throw new Error(`iperf3 -s exited (${server.exitCode}): is port ${IPERF_PORT} taken?`);
  return server;
}

/** One iperf3 single-stream run, 1 MiB writes: GB/s received, CPU of client + server per GB. */
async function iperf3Round(server: ChildProcess): Promise<Sample> {
  // The client's own /proc entry is gone once it exits, so it runs under sh, whose
  // cutime + cstime (/proc/$$/stat, read after the client has been waited for) are the
  // client's CPU time: its only waited-for child (if sh execs cat in place, the pid and
  // its counters stay).
  const client = `iperf3 -c 127.0.0.1 -p ${IPERF_PORT} -t ${IPERF_SECONDS} -l 1M -J && cat /proc/$$/stat >&2`;
  const serverCpu = cpuSeconds([server.pid!]);
  const { stdout, stderr } = await promisify(execFile)("sh", ["-c", client], { timeout: (IPERF_SECONDS + 30) * 1000 });
  const serverSeconds = cpuSeconds([server.pid!]) - serverCpu;
  const received = JSON.parse(stdout).end.sum_received as { bytes: number; seconds: number };
  const clientSeconds = procCpu(stderr.trim().split("\n").at(-1)!).children;
  return { gbs: received.bytes / received.seconds / 1e9, cpuPerGB: (clientSeconds + serverSeconds) / (received.bytes / 1e9) };
}

// ---------------------------------------------------------------------------------------
// raw TCP over the same bytes

/** Builds raw_stream when it is missing or older than its source; false (and why, once) when it cannot. */
function ensureRawStream(): boolean {
  try {
    if (existsSync(RAW_BINARY) && statSync(RAW_BINARY).mtimeMs >= statSync(RAW_SOURCE).mtimeMs) return true;
    mkdirSync(dirname(RAW_BINARY), { recursive: true });
    execFileSync("g++", ["-O2", "-std=c++17", "-pthread", "-o", RAW_BINARY, RAW_SOURCE], { stdio: "inherit", timeout: 120_000 });
    return true;
  } catch (err) {
    console.log(`raw TCP reference: cannot build ${RAW_SOURCE} (${(err as Error).message.split("\n")[0]}): not measured`);
    return false;
  }
}

/** The fastest of RAW_STREAMS raw_stream runs over the shape's footprint. */
async function rawRound(shape: Shape): Promise<Sample> {
  let best: Sample | undefined;
  for (const streams of RAW_STREAMS) {
    const { stdout } = await promisify(execFile)(RAW_BINARY, [String((shape.count * shape.size) / MiB), String(streams)], { timeout: 120_000 });
    const sample = JSON.parse(stdout) as Sample;
    if (best === undefined || sample.gbs > best.gbs) best = sample;
  }
  return best!;
}

// ---------------------------------------------------------------------------------------
// ucx_perftest (rdma mode)

/**
 * One ucp_am_bw run of the shape (its entry size, count messages) between a ucx_perftest
 * server and client on 127.0.0.1, each under sh so that its CPU time can be read after it
 * exits (as iperf3's client). Bandwidth: the client's "overall" MB/s (MiB/s in ucx_perftest).
 */
async function perftestRound(shape: Shape): Promise<Sample> {
  const options = { env: { ...process.env, ...UCX_ENV }, timeout: 120_000 };
  const cpuOf = (stderr: string) => procCpu(stderr.trim().split("\n").at(-1)!).children;
  const server = promisify(execFile)("sh", ["-c", `ucx_perftest -p ${PERFTEST_PORT} >/dev/null && cat /proc/$$/stat >&2`], options);
  await new Promise((r) => setTimeout(r, 500));
  const warmup = Math.max(8, shape.count >> 3);
  const { stdout, stderr } = await promisify(execFile)(
    "sh", ["-c", `ucx_perftest 127.0.0.1 -p ${PERFTEST_PORT} -t ucp_am_bw -s ${shape.size} -n ${shape.count} -w ${warmup} && cat /proc/$$/stat >&2`],
    options,
  );
  const serverCpu = cpuOf((await server).stderr);
  const final = stdout.split("\n").find((l) => l.startsWith("Final:"))?.trim().split(/\s+/);
  if (final === undefined) throw new Error(`ucx_perftest printed no Final line: ${stdout.slice(-300)}`);
  const gbs = (Number(final[6]) * MiB) / 1e9;
  const bytes = (shape.count + warmup) * shape.size;
  return { gbs, cpuPerGB: (cpuOf(stderr) + serverCpu) / (bytes / 1e9) };
}

// ---------------------------------------------------------------------------------------
// kvferry

const idsOf = (shape: Shape) => Array.from({ length: shape.count }, (_, i) => `${shape.size}-${i}`);

/** Puts every shape's entries on `daemon`, PUT_CONCURRENCY at a time (setup). */
async function loadEntries(daemon: SpawnedDaemon): Promise<void> {
  const client = new KvferryClient(daemon.address);
  try {
    for (const shape of SHAPES) {
      const data = randomBytes(shape.size);
      const ids = idsOf(shape);
      let next = 0;
      const worker = async () => {
        while (next < ids.length) await client.put(ids[next++]!, "kv", data, { seal: true });
      };
      await Promise.all(Array.from({ length: PUT_CONCURRENCY }, worker));
    }
  } finally {
    client.close();
  }
}

/**
 * One BatchTransfer of the shape's entries between the two daemons, started by `a`. The
 * entries live on `a` between runs: PUSH moves them to `b`, and the PULL after it (a
 * pulling from b) moves them back, so neither copy is kept and nothing is put again.
 */
async function kvferryRun(client: KvferryClient, a: SpawnedDaemon, b: SpawnedDaemon, shape: Shape, mode: "push" | "pull"): Promise<Sample> {
  let failed: string | undefined;
  const sample = await sampled([a.child.pid!, b.child.pid!], shape.count * shape.size, async () => {
    const response = await client.batchTransfer(idsOf(shape), b.peerAddress, mode, { deadlineMs: TRANSFER_DEADLINE_MS });
    const bad = response.results.filter((r) => r.code !== 0);
    if (bad.length > 0) failed = `${bad.length} of ${shape.count} failed, first: ${bad[0]!.message}`;
  });
  if (failed !== undefined) throw new Error(`kvferry ${mode.toUpperCase()} ${shape.label}: ${failed}`);
  return sample;
}

// ---------------------------------------------------------------------------------------
// Mooncake

/** One Mooncake engine: a mooncake-transfer.py process. */
class MooncakeEngine {
  readonly segment: string;
  readonly buffer: string;
  readonly version: string;

  private constructor(
    private readonly child: ChildProcess,
    private readonly next: (what: string) => Promise<Record<string, unknown>>,
    ready: Record<string, unknown>,
  ) {
    this.segment = String(ready.segment);
    this.buffer = String(ready.buffer); // an address: passed on as Python printed it
    this.version = String(ready.version);
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Starts one engine with a buffer of SPAN bytes; throws with its stderr's tail if it does not come up. */
  static async start(python: string): Promise<MooncakeEngine> {
    const child = spawn(python, [MOONCAKE_SCRIPT, String(SPAN)], {
      stdio: ["pipe", "pipe", "pipe"],
      env: {
        ...process.env,
        PYTHONUNBUFFERED: "1",
        MC_TCP_BIND_ADDRESS: "127.0.0.1",
        MC_TCP_MAX_QUEUED_TRANSFERS_PER_PEER: String(MOONCAKE_QUEUE),
      },
    });
    let stderr = "";
    child.stderr!.on("data", (d) => (stderr = (stderr + d).slice(-4000)));
    const tail = () => stderr.trim().split("\n").at(-1) ?? "";
    const read = jsonLines(child.stdout!, MOONCAKE_ANSWER_MS, (why, what) =>
      why === "exited before answering" ? `${what}: the engine exited (${child.exitCode ?? child.signalCode}): ${tail()}` : `${what}: ${why}: ${tail()}`,
    );
    // An {"error": ...} answer throws.
    const next = async (what: string) => {
      const answer = await read(what);
      if ("error" in answer) throw new Error(`${what}: ${String(answer.error)}`);
      return answer;
    };
    try {
      return new MooncakeEngine(child, next, await next("start"));
    } catch (err) {
      child.kill("SIGKILL");
      throw err;
    }
  }

  ask(command: string): Promise<Record<string, unknown>> {
    this.child.stdin!.write(`${command}\n`);
    return this.next(command.split(" ")[0]!);
  }

  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
  }
}

/** Mooncake's engine.so loads libibverbs.so.1 even for TCP: installed as iperf3 is, when missing and root. */
function ensureLibibverbs(): void {
  if (/libibverbs\.so\.1\b/.test(spawnSync("ldconfig", ["-p"], { encoding: "utf8" }).stdout ?? "")) return;
  if (process.getuid?.() !== 0) return; // mooncake-venv.sh then says what to install
  console.log("installing libibverbs1 for Mooncake (apt) ...");
  spawnSync("apt-get", ["install", "-y", "-qq", "libibverbs1"], { stdio: "inherit", timeout: 300_000 });
}

/** The two engines, or why there are none (one line). */
async function startMooncake(): Promise<{ engines: [MooncakeEngine, MooncakeEngine] } | { why: string }> {
  ensureLibibverbs();
  const found = await mooncakePython();
  if ("skip" in found) return { why: `cannot be installed: ${found.skip}` };
  if ("error" in found) return { why: found.error.trim().split("\n").slice(-2).join(" ").replace(/\s+/g, " ") };
  const engines: MooncakeEngine[] = [];
  try {
    for (let i = 0; i < 2; i++) engines.push(await MooncakeEngine.start(found.python));
    return { engines: engines as [MooncakeEngine, MooncakeEngine] };
  } catch (err) {
    for (const engine of engines) engine.kill();
    return { why: `did not start: ${(err as Error).message}` };
  }
}

/**
 * One batch_transfer_sync_write of the shape from `from`'s buffer into `to`'s, timed around
 * the call in its Python process (kvferry's BatchTransfer is timed from this process, one
 * gRPC round trip more; the address lists are built outside the timing, inside the CPU's).
 */
async function mooncakeRun(from: MooncakeEngine, to: MooncakeEngine, shape: Shape): Promise<Sample> {
  return sampled([from.pid, to.pid], shape.count * shape.size, async () => {
    const answer = await from.ask(`write ${to.segment} ${to.buffer} ${shape.count} ${shape.size}`);
    if (answer.rc !== 0) throw new Error(`batch_transfer_sync_write of ${shape.label} returned ${String(answer.rc)}`);
    return Number(answer.seconds);
  });
}

/** The warm-up write of a shape, checked: the receiver's bytes, cleared before, equal the sender's after. */
async function mooncakeWarmUp(from: MooncakeEngine, to: MooncakeEngine, shape: Shape): Promise<void> {
  const region = `${shape.count} ${shape.size}`;
  await to.ask(`clear ${region}`);
  await mooncakeRun(from, to, shape);
  const [sent, landed] = await Promise.all([from.ask(`sha256 ${region}`), to.ask(`sha256 ${region}`)]);
  if (sent.sha256 !== landed.sha256) throw new Error(`${shape.label}: the bytes that landed differ from the ones sent`);
}

// ---------------------------------------------------------------------------------------
// Idle connections (tcp)

/**
 * Issue 14: with IDLE_CONNECTIONS authenticated connections held on `b`'s data port, the
 * 16 MiB shape again; they cost no thread each, and the transfer keeps its target. Returns
 * the report, given iperf3's figure.
 */
async function idleConnectionsRun(
  client: KvferryClient, a: SpawnedDaemon, b: SpawnedDaemon, progress: (what: string) => void,
): Promise<(iperf: Series) => string> {
  progress(`${IDLE_CONNECTIONS} idle authenticated connections on the second daemon's data port`);
  const threadsBefore = threadsOf(b.child.pid!);
  const idle = await idleConnections(b.dataAddress, IDLE_CONNECTIONS);
  const threadsIdle = threadsOf(b.child.pid!);
  const withIdle = { push: new Series(), pull: new Series() };
  for (let round = 0; round < ROUNDS; round++) {
    for (const mode of ["push", "pull"] as const) withIdle[mode].samples.push(await kvferryRun(client, a, b, SHAPES[0]!, mode));
  }
  const stillOpen = idle.filter((c) => !c.isClosed).length;
  idle.forEach((c) => c.destroy());
  return (iperf) => {
    const figure = (mode: "push" | "pull") => {
      const gbs = withIdle[mode].gbs;
      const ok = gbs >= SHAPES[0]!.target * iperf.gbs ? "✓" : "✗";
      return `${mode.toUpperCase()} ${fixed(gbs)} GB/s = ${fixed(gbs / iperf.gbs)}× iperf3 (target ${SHAPES[0]!.target}× ${ok})`;
    };
    return (
      `\nwith ${IDLE_CONNECTIONS} idle authenticated connections on the target's data port (${stillOpen} still open after), ` +
      `${SHAPES[0]!.label}: ${figure("push")}, ${figure("pull")}; the target daemon's threads: ${threadsIdle} with them, ${threadsBefore} before`
    );
  };
}

// ---------------------------------------------------------------------------------------
// The run

const median = (xs: readonly number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
/** x with two decimals, right-aligned in `width`; "—" for a figure not measured. */
const fixed = (x: number, width = 0) => (Number.isFinite(x) ? x.toFixed(2) : "—").padStart(width);

/** The rounds' samples of one system (on one shape), and their medians. */
class Series {
  readonly samples: Sample[] = [];
  get gbs(): number {
    return this.samples.length > 0 ? median(this.samples.map((s) => s.gbs)) : NaN;
  }
  get best(): number {
    return Math.max(...this.samples.map((s) => s.gbs));
  }
  get cpuPerGB(): number {
    return this.samples.length > 0 ? median(this.samples.map((s) => s.cpuPerGB)) : NaN;
  }
}

/** `other`: Mooncake's Transfer Engine over tcp, ucx_perftest over rdma (OTHER). */
type Row = { readonly push: Series; readonly pull: Series; readonly raw: Series; readonly other: Series };

function printTable(iperf: Series, rows: ReadonlyMap<Shape, Row>): void {
  const check = (ok: boolean) => (ok ? "✓" : "✗");
  console.log(
    `\n${"shape".padEnd(15)}${"system".padEnd(22)}${"GB/s".padStart(6)}${"(best)".padStart(8)}${"× iperf3".padStart(10)}` +
      `${"× raw".padStart(8)}${`× ${OTHER}`.padStart(16)}${"CPU-s/GB".padStart(10)}${"CPU × iperf3".padStart(14)}${"CPU × raw".padStart(11)}` +
      "   target (issue 14)",
  );
  for (const [shape, row] of rows) {
    const measured = row.other.samples.length > 0 && PROTOCOL === "tcp";
    // kvferry's targets: × iperf3, CPU per GB at 16 MiB, × Mooncake.
    const targets = (s: Series) => {
      const parts = [`≥ ${shape.target}× iperf3 ${check(s.gbs >= shape.target * iperf.gbs)}`];
      if (shape === SHAPES[0]) parts.push(`CPU ≤ ${CPU_TARGET}× ${check(s.cpuPerGB <= CPU_TARGET * iperf.cpuPerGB)}`);
      if (measured) parts.push(`≥ ${MOONCAKE_TARGET}× Mooncake ${check(s.gbs >= MOONCAKE_TARGET * row.other.gbs)}`);
      return `   ${parts.join(", ")}`;
    };
    const line = (label: string, what: string, s: Series, target = "") =>
      console.log(
        `${label.padEnd(15)}${what.padEnd(22)}${fixed(s.gbs, 6)}${`(${fixed(s.best)})`.padStart(8)}${fixed(s.gbs / iperf.gbs, 10)}` +
          `${fixed(s.gbs / row.raw.gbs, 8)}${fixed(s.gbs / row.other.gbs, 16)}${fixed(s.cpuPerGB, 10)}` +
          `${fixed(s.cpuPerGB / iperf.cpuPerGB, 14)}${fixed(s.cpuPerGB / row.raw.cpuPerGB, 11)}${target}`,
      );
    line(shape.label, "kvferry PUSH", row.push, PROTOCOL === "tcp" ? targets(row.push) : "");
    line("", "kvferry PULL", row.pull, PROTOCOL === "tcp" ? targets(row.pull) : "");
    if (row.raw.samples.length > 0) line("", "raw TCP, same bytes", row.raw);
    if (row.other.samples.length > 0) line("", PROTOCOL === "tcp" ? "Mooncake write" : "ucx_perftest am_bw", row.other);
  }
  console.log(
    "CPU-s/GB: utime + stime per GB moved of the sending and the receiving processes together (iperf3 client + server, " +
      `the two daemons, the two Mooncake engines, raw_stream), /proc/PID/stat in 1/${CLK_TCK} s ticks; the bench's own gRPC client is not counted.`,
  );
  console.log(
    `raw TCP, same bytes: loopback TCP from one memfd region of the shape's size to another (raw_stream.cc), the fastest of ${RAW_STREAMS.join(", ")} streams: ` +
      "the kernel's cost for bytes that, like a transfer's, are not in the CPU's caches (iperf3 resends one cached 1 MiB buffer).",
  );
}

async function main() {
  const cleanups: (() => unknown)[] = [];
  const cleanUp = async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await Promise.resolve(cleanup()).catch(() => {});
  };
  const watchdog = setTimeout(() => {
    console.error(`transfer bench: still running after ${LIMIT_S} s (BENCH_LIMIT_S): giving up`);
    void cleanUp().finally(() => process.exit(2));
  }, LIMIT_S * 1000);
  watchdog.unref();
  const progress = (what: string) => console.error(`transfer bench: ${what}`);
  try {
    const args = [
      "--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0", "--cluster-token", TOKEN,
      // Room for every shape's entries at once (they all live on one daemon between runs),
      // and leases that outlast the run.
      "--kv-buffer-size", `${Math.ceil((SHAPES.reduce((n, s) => n + s.count * s.size, 0) * 1.25) / MiB)}MiB`,
      "--lease-ttl-ms", String(2 * LIMIT_S * 1000),
      ...(process.env.BENCH_CONNS ? ["--connections-per-peer", process.env.BENCH_CONNS] : []),
      ...(PROTOCOL === "rdma" ? ["--protocol", "rdma"] : []),
    ];
    const daemonEnv = PROTOCOL === "rdma" ? { env: UCX_ENV } : {};
    const iperfServer = ensureTool("iperf3", "iperf3") ? await startIperf3Server() : undefined;
    const raw = ensureRawStream();
    if (iperfServer) cleanups.push(() => iperfServer.kill());
    const a = await spawnDaemon(args, daemonEnv);
    cleanups.push(() => a.stop());
    const b = await spawnDaemon(args, daemonEnv);
    cleanups.push(() => b.stop());
    const client = new KvferryClient(a.address);
    cleanups.push(() => client.close());

    if (PROTOCOL === "tcp") progress("starting Mooncake (its venv is made once: a few minutes the first time)");
    const perftest = PROTOCOL === "rdma" && ensureTool("ucx_perftest", "ucx-utils");
    const mooncake = PROTOCOL === "tcp" ? await startMooncake() : { why: "not run over rdma (ucx_perftest is the reference there)" };
    let mooncakeWhy = "why" in mooncake ? mooncake.why : undefined;
    const [mcFrom, mcTo] = "engines" in mooncake ? mooncake.engines : [];
    cleanups.push(() => [mcFrom, mcTo].forEach((e) => e?.kill()));

    const iperf = new Series();
    const rows = new Map<Shape, Row>(SHAPES.map((s) => [s, { push: new Series(), pull: new Series(), raw: new Series(), other: new Series() }]));
    /** Runs one Mooncake step; a failure drops Mooncake (all its figures) from the run, saying why. */
    const withMooncake = async (step: (from: MooncakeEngine, to: MooncakeEngine) => Promise<void>) => {
      if (mooncakeWhy !== undefined || !mcFrom || !mcTo) return;
      try {
        await step(mcFrom, mcTo);
      } catch (err) {
        mooncakeWhy = `failed: ${(err as Error).message}`;
        for (const row of rows.values()) row.other.samples.length = 0;
        mcFrom.kill();
        mcTo.kill();
      }
    };

    progress("loading the entries, warming up");
    await loadEntries(a);
    for (const shape of SHAPES) {
      await kvferryRun(client, a, b, shape, "push");
      await kvferryRun(client, a, b, shape, "pull");
      await withMooncake((from, to) => mooncakeWarmUp(from, to, shape));
    }
    for (let round = 0; round < ROUNDS; round++) {
      progress(`round ${round + 1} of ${ROUNDS}`);
      if (iperfServer) iperf.samples.push(await iperf3Round(iperfServer));
      for (const [shape, row] of rows) {
        row.push.samples.push(await kvferryRun(client, a, b, shape, "push"));
        row.pull.samples.push(await kvferryRun(client, a, b, shape, "pull"));
        if (raw) row.raw.samples.push(await rawRound(shape));
        await withMooncake(async (from, to) => void row.other.samples.push(await mooncakeRun(from, to, shape)));
        if (perftest) row.other.samples.push(await perftestRound(shape));
      }
    }

    const idleReport = PROTOCOL === "tcp" ? await idleConnectionsRun(client, a, b, progress) : undefined;

    console.log(`kvferry transfer bench: 127.0.0.1, ${availableParallelism()} cores; medians of ${ROUNDS} rounds after a warm-up, every system on every shape in each round`);
    console.log(
      `  iperf3 single stream, 1 MiB writes, ${IPERF_SECONDS} s a round: ${fixed(iperf.gbs)} GB/s (best ${fixed(iperf.best)}), ` +
        `${fixed(iperf.cpuPerGB)} CPU-s/GB (client + server)`,
    );
    console.log(
      `  kvferry: two daemons (${PROTOCOL === "tcp" ? "native TCP engine" : `UCX transport, UCX_TLS=${UCX_ENV.UCX_TLS} UCX_NET_DEVICES=${UCX_ENV.UCX_NET_DEVICES}`}); ` +
        "each shape one BatchTransfer by the first daemon: PUSH to the second, then PULL back from it",
    );
    if (PROTOCOL === "rdma") {
      console.log(`  ucx_perftest ucp_am_bw on the same UCX transport: one message per entry (the shape's size), the shape's count of them, hot buffers${perftest ? "" : ": not measured (no ucx_perftest)"}`);
    } else if (mooncakeWhy === undefined && mcFrom) {
      console.log(
        `  Mooncake Transfer Engine ${mcFrom.version} (PyPI mooncake-transfer-engine-non-cuda): TCP transport, P2PHANDSHAKE; each shape ` +
          "one batch_transfer_sync_write between two engines (Python processes; its sync wait spins a core, counted)",
      );
      console.log(`  Mooncake's per-peer queue raised: MC_TCP_MAX_QUEUED_TRANSFERS_PER_PEER=${MOONCAKE_QUEUE} (its default, 1024, refuses the ${BATCH_MAX}-entry batch)`);
    } else {
      console.log(`  Mooncake: not measured, ${mooncakeWhy}`);
    }
    printTable(iperf, rows);
    if (idleReport !== undefined) console.log(idleReport(iperf));
  } finally {
    clearTimeout(watchdog);
    await cleanUp();
  }
}

await main();
