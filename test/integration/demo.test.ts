// `kvferry demo` end to end, as a user runs it (smaller): every request answered with the
// reference's output, the summary printed, and no process left behind.
import { spawn, spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { BIN, processAlive, runCli, sleep } from "../helpers/daemon.js";

function childrenOf(pid: number): number[] {
  const r = spawnSync("pgrep", ["-P", String(pid)], { encoding: "utf8" });
  return r.stdout.split("\n").filter(Boolean).map(Number);
}

/** Runs `kvferry demo ...args` to its end; its stdout, exit code, and the child processes seen while it ran. */
async function demo(args: string[], limitMs: number): Promise<{ code: number | null; stdout: string; seen: Set<number> }> {
  const child = spawn(process.execPath, [BIN, "demo", ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, NO_COLOR: "1" },
  });
  let stdout = "";
  child.stdout.on("data", (d) => (stdout += d));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  // The demo's children (daemons, simulators, proxy), seen while it runs.
  const seen = new Set<number>();
  let done = false;
  void exited.then(() => (done = true));
  const deadline = Date.now() + limitMs;
  while (!done && Date.now() < deadline) {
    for (const pid of childrenOf(child.pid!)) seen.add(pid);
    await sleep(100);
  }
  if (!done) child.kill("SIGTERM");
  return { code: await exited, stdout, seen };
}

function expectSuccess(r: { code: number | null; stdout: string; seen: Set<number> }, requests: number): void {
  expect(r.code, r.stdout).toBe(0);
  expect(r.stdout).toContain("demo: OK");
  expect(r.stdout).toMatch(new RegExp(`requests ok\\s+${requests}/${requests}\\s+${requests}/${requests}`));
  expect(r.stdout).toMatch(new RegExp(`output identical to the reference\\s+${requests}/${requests}`));
  expect(r.stdout).toMatch(/KV bytes moved between daemons\s+\d/);
  expect(r.stdout).toMatch(/time to first byte p99\s+[\d.]+ ms\s+[\d.]+ ms/);
  expect(r.stdout).toContain("entries left in the daemons: 0");
  expect(r.stdout).toMatch(/stopped 6 processes: prefill daemon 0, decode daemon 0, .*proxy 0\n/);
  expect(r.seen.size, "the demo's child processes were observed").toBeGreaterThanOrEqual(6);
}

describe("kvferry demo", () => {
  it("serves every request through the proxy with the reference's output, prints the summary, exits 0 and leaves no process behind", async () => {
    const r = await demo(["--requests", "12", "--concurrency", "3", "--max-prompt-words", "96", "--kv-buffer-size", "256MiB"], 90_000);
    expectSuccess(r, 12);
    await sleep(200);
    expect([...r.seen].filter(processAlive), "processes left behind").toEqual([]);
  }, 120_000);

  it("succeeds with its default 1 GiB pools while a CPU-bound load that the test starts occupies both cores", async () => {
    // Two processes that spin for at most five minutes, killed when the test ends either way.
    const spin = "const end = Date.now() + 300000; while (Date.now() < end);";
    const load = [0, 1].map(() => spawn(process.execPath, ["-e", spin], { stdio: "ignore" }));
    try {
      const r = await demo(["--requests", "8", "--concurrency", "2", "--max-prompt-words", "64"], 280_000);
      expectSuccess(r, 8);
      expect(r.stdout).toMatch(/daemons .* 1GiB pools/);
      await sleep(200);
      expect([...r.seen].filter(processAlive), "processes left behind").toEqual([]);
    } finally {
      for (const p of load) p.kill("SIGKILL");
    }
  }, 300_000);

  it.each(["SIGTERM", "SIGINT"] as const)("stopped by %s mid-run (or during start-up), stops every child it started", async (signal) => {
    for (const afterMs of [300, 4_000]) {
      const child = spawn(process.execPath, [BIN, "demo", "--requests", "400", "--kv-buffer-size", "256MiB"], { stdio: ["ignore", "pipe", "pipe"] });
      // Before Node has run the demo's first line (a loaded machine, 300 ms) the signal's default
      // action ends it: killed by that signal, which a shell reports as the same 128 + n.
      const exited = new Promise<number | null>((resolve) =>
        child.once("exit", (code, killedBy) => resolve(killedBy === signal ? (signal === "SIGINT" ? 130 : 143) : code)),
      );
      const seen = new Set<number>();
      const t0 = Date.now();
      while (Date.now() - t0 < afterMs) {
        for (const pid of childrenOf(child.pid!)) seen.add(pid);
        await sleep(50);
      }
      child.kill(signal);
      let done = false;
      void exited.then(() => (done = true));
      const deadline = Date.now() + 30_000;
      while (!done && Date.now() < deadline) {
        for (const pid of childrenOf(child.pid!)) seen.add(pid);
        await sleep(50);
      }
      expect(await exited, `exit after ${signal} at ${afterMs} ms`).toBe(signal === "SIGINT" ? 130 : 143);
      await sleep(200);
      expect([...seen].filter(processAlive), `processes left behind after ${signal} at ${afterMs} ms`).toEqual([]);
    }
  }, 90_000);

  it("refuses a bad flag with exit 2, naming it", async () => {
    const r = await runCli(["demo", "--requests", "0"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("--requests");
    expect(r.stderr).toContain("an integer from 1 to 10000");
    const size = await runCli(["demo", "--kv-buffer-size", "lots"]);
    expect(size.code).toBe(2);
    expect(size.stderr).toContain("--kv-buffer-size");
  });
});
