// `kvferry demo` end to end, as a user runs it (smaller): every request answered with the
// reference's output, the summary printed, and no process left behind.
import { spawn, spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { BIN, runCli, sleep } from "../helpers/daemon.js";

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function childrenOf(pid: number): number[] {
  const r = spawnSync("pgrep", ["-P", String(pid)], { encoding: "utf8" });
  return r.stdout.split("\n").filter(Boolean).map(Number);
}

describe("kvferry demo", () => {
  it("serves every request through the proxy with the reference's output, prints the summary, exits 0 and leaves no process behind", async () => {
    const child = spawn(process.execPath, [BIN, "demo", "--requests", "12", "--concurrency", "3", "--max-prompt-words", "96", "--kv-buffer-size", "256MiB"], {
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
    const deadline = Date.now() + 90_000;
    while (!done && Date.now() < deadline) {
      for (const pid of childrenOf(child.pid!)) seen.add(pid);
      await sleep(100);
    }
    const code = await exited;
    expect(code, stdout).toBe(0);
    expect(stdout).toContain("demo: OK");
    expect(stdout).toMatch(/requests ok\s+12\/12\s+12\/12/);
    expect(stdout).toMatch(/output identical to the reference\s+12\/12/);
    expect(stdout).toMatch(/KV bytes moved between daemons\s+\d/);
    expect(stdout).toMatch(/time to first byte p99\s+[\d.]+ ms\s+[\d.]+ ms/);
    expect(stdout).toContain("entries left in the daemons: 0");
    expect(stdout).toMatch(/stopped 6 processes: .*proxy 0/);
    expect(seen.size, "the demo's child processes were observed").toBeGreaterThanOrEqual(6);
    await sleep(200);
    expect([...seen].filter(alive), "processes left behind").toEqual([]);
  }, 120_000);

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
      expect([...seen].filter(alive), `processes left behind after ${signal} at ${afterMs} ms`).toEqual([]);
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
