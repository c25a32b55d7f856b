// README.md's "The seed's setup, step by step", run as written: its ```sh blocks are cut into
// commands and pasted, one by one, into one bash with job control (as a terminal has), from
// the repository root. The only change: `npx kvferry` runs this checkout's bin/kvferry.js
// (what npx resolves to here, without npm's start-up). etcd is the real one (Debian's
// etcd-server), started by the recipe itself. The recipe's ports are fixed (2379, 8000, …):
// the test fails, naming the port, if one stays taken for 30 s; no other test names them.
import { execFile } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import { spawnSimulator } from "../../src/simulator/spawn.js";
import { BIN, REPO, sleep } from "../helpers/daemon.js";
import { ETCD_BINARY, ETCDCTL_BINARY } from "../helpers/etcd-server.js";
import { readmeSection, shellBlocks, shellCommands, type ShellCommand } from "../helpers/readme.js";
import { groupAlive, startShell, type ShellSession } from "../helpers/shell-session.js";

const HEADING = "The seed's setup, step by step";
const MODEL = "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4";
/** How long one pasted command may take (a `ready` line waits up to 60 s itself). */
const COMMAND_MS = 90_000;

function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once("error", () => resolve(false));
    probe.listen(port, "127.0.0.1", () => probe.close(() => resolve(true)));
  });
}

/**
 * Every port the recipe binds: those it names on 127.0.0.1, and the peer API (data + 1) and
 * the consumer's ports (+ 100, + 101) of the data address in its mooncake.json.
 */
function recipePorts(text: string): number[] {
  const ports = new Set<number>();
  for (const m of text.matchAll(/127\.0\.0\.1:(\d+)/g)) ports.add(Number(m[1]));
  const data = /"prefill_url":\s*"127\.0\.0\.1:(\d+)"/.exec(text);
  if (data) for (const offset of [1, 100, 101]) ports.add(Number(data[1]) + offset);
  return [...ports].sort((a, b) => a - b);
}

/** The command as this checkout runs it: `npx kvferry` is its bin/kvferry.js. */
function asRun(command: ShellCommand): string {
  return command.text.replaceAll("npx kvferry", `node '${BIN}'`);
}

const section = readmeSection(HEADING);
const commands = shellBlocks(section).flatMap(shellCommands);
const ports = recipePorts(section);

let shell: ShellSession | undefined;

// After a failure half-way: the jobs still running are killed and the recipe's files removed.
afterAll(async () => {
  if (shell === undefined) return;
  const dir = await shell.run('echo "$RECIPE"', 5000).then((r) => r.stdout.trim(), () => "");
  await shell.close();
  if (dir.startsWith("/tmp/") || dir.startsWith(tmpdir())) rmSync(dir, { recursive: true, force: true });
});

describe(`README.md: "${HEADING}"`, () => {
  it("is a recipe of etcd, two daemons with the seed's kv-transfer-config, two simulators, the proxy on :8000, the seed's curl and a stop", () => {
    const text = commands.map((c) => c.text).join("\n");
    expect(text).toContain('"metadata_server": "etcd://127.0.0.1:2379"');
    expect(commands.filter((c) => c.background).map((c) => c.text.split(/\s+/).slice(0, 3).join(" "))).toEqual([
      expect.stringMatching(/^etcd /),
      expect.stringMatching(/^MOONCAKE_CONFIG_PATH=\S+ npx kvferry$/),
      expect.stringMatching(/^MOONCAKE_CONFIG_PATH=\S+ npx kvferry$/),
      "npx kvferry simulate",
      "npx kvferry simulate",
      "npx kvferry proxy",
    ]);
    expect(text).toContain('"kv_role":"kv_producer"');
    expect(text).toContain('"kv_role":"kv_consumer"');
    expect(text.match(new RegExp(`--model ${MODEL.replace(/[.]/g, "\\.")}`, "g"))).toHaveLength(2);
    expect(text).toContain("--listen 127.0.0.1:8000");
    expect(commands.find((c) => c.text.startsWith("curl "))?.text).toContain(`"model": "${MODEL}"`);
    expect(commands.at(-1)?.text).toMatch(/^rm -rf "\$RECIPE"$/);
    expect(ports).toEqual(expect.arrayContaining([2379, 2380, 8000, 8100, 8200, 13003, 13004, 13103, 13104, 50051, 50052]));
  });

  it("runs as written: the seed's curl gets a real completion through the proxy, the KV moved between the daemons, and the stop leaves nothing running", async () => {
    if (!existsSync(ETCD_BINARY)) throw new Error(`${ETCD_BINARY} is missing: install etcd-server (npm test does it through scripts/setup.mjs --test)`);
    // 50051 and 50052 lie in Linux's ephemeral range, where another test's port-0 listener
    // may sit for a while: wait up to 30 s for the ports to be free.
    let taken: number[] = [];
    for (const until = Date.now() + 30_000; ; await sleep(500)) {
      taken = [];
      for (const port of ports) if (!(await portIsFree(port))) taken.push(port);
      if (taken.length === 0 || Date.now() > until) break;
    }
    if (taken.length > 0) {
      throw new Error(`the README recipe binds fixed ports and 127.0.0.1:${taken.join(", 127.0.0.1:")} ${taken.length > 1 ? "are" : "is"} taken: stop what listens there (e.g. \`ss -ltnp\`) and run again`);
    }

    const sh = (shell = startShell({ cwd: REPO }));
    let completion: string | undefined;
    for (const command of commands) {
      const r = await sh.run(asRun(command), COMMAND_MS, { background: command.background });
      expect(r.code, `${command.text}\nstdout: ${r.stdout}\nstderr: ${sh.stderr().slice(-3000)}`).toBe(0);
      if (command.background) {
        expect(r.jobPid, command.text).toBeGreaterThan(0);
      }
      if (command.text.startsWith("curl ")) {
        completion = r.stdout;
        await checkWhileRunning(sh, completion);
      }
    }
    expect(completion, "the recipe ran no curl").toBeDefined();

    // The stop: every job's process group is gone, every port free, the files removed.
    expect(sh.jobs).toHaveLength(6);
    for (const pgid of sh.jobs) expect(groupAlive(pgid), `process group ${pgid} still runs after the stop`).toBe(false);
    const recipeDir = await sh.run('echo "$RECIPE"', 5000);
    expect(recipeDir.stdout.trim()).toMatch(/^\/.+/);
    expect(existsSync(recipeDir.stdout.trim())).toBe(false);
    for (const port of ports) expect(await portIsFree(port), `127.0.0.1:${port} still taken after the stop`).toBe(true);
  }, 360_000);
});

/**
 * Checks, while everything still runs, what the curl printed: a completion of the seed's
 * model that equals what a non-disaggregated simulator answers (so the decode generated from
 * the prompt's KV, moved by the daemons), and the two daemons registered in etcd.
 */
async function checkWhileRunning(sh: ShellSession, stdout: string): Promise<void> {
  let answer: any;
  try {
    answer = JSON.parse(stdout);
  } catch {
    throw new Error(`the seed's curl printed no JSON: ${stdout.slice(0, 1000)}\nshell stderr: ${sh.stderr().slice(-3000)}`);
  }
  expect(answer, stdout.slice(0, 1000)).toMatchObject({ object: "text_completion", model: MODEL });
  expect(answer.choices).toHaveLength(1);
  expect(answer.choices[0].finish_reason).toBe("length");
  expect(answer.usage.completion_tokens).toBe(1000);

  const curl = commands.find((c) => c.text.startsWith("curl "))!.text;
  const body = JSON.parse(/-d '([\s\S]*)'/.exec(curl)![1]);
  const reference = await spawnSimulator(["--listen", "127.0.0.1:0", "--role", "both", "--model", MODEL, "--token-ms", "0"]);
  try {
    const res = await fetch(`${reference.url}/v1/completions`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(30_000),
    });
    expect(res.status).toBe(200);
    const expected = (await res.json()) as any;
    expect(answer.choices[0].text).toBe(expected.choices[0].text);
    expect(answer.usage).toEqual(expected.usage);
  } finally {
    await reference.stop(10_000);
  }

  // Both daemons' records are in etcd (the recipe's metadata_server).
  const run = promisify(execFile);
  const { stdout: keys } = await run(
    ETCDCTL_BINARY,
    ["--endpoints=127.0.0.1:2379", "--dial-timeout=2s", "--command-timeout=5s", "get", "--prefix", "kvferry/v1/nodes/", "--keys-only"],
    { env: { ...process.env, ETCDCTL_API: "3" }, timeout: 10_000 },
  );
  expect(keys.split("\n").filter((k) => k.trim() !== "")).toHaveLength(2);
  // The producer pushed the KV to the consumer: the proxy counts what it moved.
  const metrics = await (await fetch("http://127.0.0.1:8000/metrics", { signal: AbortSignal.timeout(10_000) })).text();
  const pushed = /^kvferry_proxy_kv_transfers_total\{(?=[^}]*mode="push")(?=[^}]*code="OK")[^}]*\} (\d+)/m.exec(metrics);
  expect(pushed?.[1], metrics.slice(0, 3000)).toBe("1");

  // A request naming another model gets the simulators' 404, vLLM's body, through the proxy.
  const other = await fetch("http://127.0.0.1:8000/v1/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...body, model: "gpt-4" }),
    signal: AbortSignal.timeout(30_000),
  });
  expect(other.status).toBe(404);
  expect(((await other.json()) as any).error).toMatchObject({ type: "NotFoundError", param: "model", code: 404 });
}
