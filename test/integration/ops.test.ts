// What an operator sees: health, reflection for grpcurl-style tools, signals, exit codes,
// help text and the seed's mooncake.json.
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import {
  credentials,
  makeGenericClientConstructor,
  Metadata,
  status,
  type ClientReadableStream,
  type ServiceError,
} from "@grpc/grpc-js";
import { service as healthService } from "grpc-health-check";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { spawnDaemon } from "../../src/launch/spawn-daemon.js";
import { startEtcd } from "../helpers/etcd-server.js";
import { findGrpcurl, GRPCURL_VERSION } from "../helpers/grpcurl.js";
import { UCX_BUILT } from "../helpers/transfer.js";
import { freePorts } from "../helpers/ports.js";
import { readmeSection, shellBlocks, shellCommands } from "../helpers/readme.js";
import type { KvferryClient } from "../../src/client/client.js";
import { GetStreamRequest, PutStreamRequest, type GetStreamResponse } from "../../src/gen/kvferry/v1/kvferry.js";
import {
  MiB,
  REPO,
  expectSameBytes,
  pattern,
  rawPutStream,
  runCli,
  sha256,
  sleep,
  startDaemon,
  type TestDaemon,
} from "../helpers/daemon.js";

const BUF = join(REPO, "node_modules/.bin/buf");
const SEED = join(REPO, "test/fixtures/config/mooncake.json");
const DAEMON_FLAGS = ["--config", "--listen", "--kv-buffer-size", "--kv-transfer-config", "--log-level"];

let d: TestDaemon;
let dir: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "kvferry-ops-"));
  d = await startDaemon(["--kv-buffer-size", "8MiB"]);
});

afterAll(async () => {
  expect(await d?.stop()).toBe(0);
  rmSync(dir, { recursive: true, force: true });
});

/** Whether a fresh TCP connection to the port is accepted. */
function tcpConnect(port: number): Promise<"connected" | string> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve("connected");
    });
    socket.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

/** Polls until fresh connections to the port are refused (the listener closed), up to timeoutMs. */
async function refusedWithin(port: number, timeoutMs: number): Promise<string> {
  const until = Date.now() + timeoutMs;
  let last = await tcpConnect(port);
  // ECONNRESET: the kernel queued the connection just before the listener closed.
  while ((last === "connected" || last === "ECONNRESET") && Date.now() < until) {
    await sleep(20);
    last = await tcpConnect(port);
  }
  return last;
}

describe("health", () => {
  const Health = makeGenericClientConstructor(healthService, "Health");
  type CheckFn = (req: { service: string }, md: Metadata, opts: object, cb: (e: ServiceError | null, r: { status: string }) => void) => void;

  async function check(service: string): Promise<{ status?: string; code?: string }> {
    const client = new Health(d.address, credentials.createInsecure());
    try {
      return await new Promise((resolve) =>
        (client as unknown as { check: CheckFn }).check({ service }, new Metadata(), { deadline: Date.now() + 5000 }, (err, res) =>
          resolve(err ? { code: status[err.code] } : { status: res.status }),
        ),
      );
    } finally {
      client.close();
    }
  }

  it('reports SERVING for the server as a whole ("")', async () => {
    expect(await check("")).toEqual({ status: "SERVING" });
  });

  it("reports SERVING for kvferry.v1.KvFerry", async () => {
    expect(await check("kvferry.v1.KvFerry")).toEqual({ status: "SERVING" });
  });

  it("answers NOT_FOUND for a service it does not have", async () => {
    expect(await check("no.such.Service")).toEqual({ code: "NOT_FOUND" });
  });
});

describe("reflection through buf curl", () => {
  const run = promisify(execFile);
  async function bufCurl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    try {
      const { stdout, stderr } = await run(BUF, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", ...args], {
        timeout: 15_000,
      });
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code?: number; stdout?: string; stderr?: string };
      return { code: typeof e.code === "number" ? e.code : -1, stdout: e.stdout ?? "", stderr: e.stderr ?? String(err) };
    }
  }
  const url = (method = "") => `http://${d.address}${method}`;

  it("lists kvferry.v1.KvFerry and grpc.health.v1.Health", async () => {
    const r = await bufCurl(["--list-services", url()]);
    expect(r.code, r.stderr).toBe(0);
    const services = r.stdout.trim().split("\n");
    expect(services).toContain("kvferry.v1.KvFerry");
    expect(services).toContain("grpc.health.v1.Health");
  });

  it("lists every method of kvferry.v1.KvFerry", async () => {
    const r = await bufCurl(["--list-methods", url()]);
    expect(r.code, r.stderr).toBe(0);
    for (const m of ["Put", "PutStream", "Seal", "Release", "Stat", "List", "Get", "GetStream", "GetServerInfo"]) {
      expect(r.stdout).toContain(`kvferry.v1.KvFerry/${m}\n`);
    }
  });

  it("calls GetServerInfo with a schema resolved over reflection", async () => {
    const r = await bufCurl(["-d", "{}", url("/kvferry.v1.KvFerry/GetServerInfo")]);
    expect(r.code, r.stderr).toBe(0);
    const info = JSON.parse(r.stdout);
    expect(Number(info.poolCapacity)).toBe(8 * MiB);
    expect(info.version).toMatch(/^\d+\.\d+\.\d+/);
    expect(info.nodeId).toMatch(new RegExp(`:${d.port}$`));
  });

  it("calls grpc.health.v1.Health/Check", async () => {
    for (const body of ["{}", '{"service":"kvferry.v1.KvFerry"}']) {
      const r = await bufCurl(["-d", body, url("/grpc.health.v1.Health/Check")]);
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toEqual({ status: "SERVING" });
    }
  });

  it("puts through buf curl what the TypeScript client reads back, and reports NOT_FOUND", async () => {
    const put = await bufCurl([
      "-d",
      JSON.stringify({ transfer_id: "from-buf-curl", part: "layer.0", data: Buffer.from("hello").toString("base64"), seal: true }),
      url("/kvferry.v1.KvFerry/Put"),
    ]);
    expect(put.code, put.stderr).toBe(0);
    expect(JSON.parse(put.stdout).entry).toMatchObject({ transferId: "from-buf-curl", state: "ENTRY_STATE_SEALED" });
    const got = await d.client.get("from-buf-curl", { waitMs: 0 });
    expect(got.parts.get("layer.0")?.toString()).toBe("hello");

    const missing = await bufCurl(["-d", '{"transferId":"no-such-entry"}', url("/kvferry.v1.KvFerry/Stat")]);
    expect(missing.code).not.toBe(0);
    expect(missing.stdout + missing.stderr).toMatch(/not_found/);
  });
});

// grpcurl (Go, `go install`) is the tool users elsewhere point at the daemon; scripts/setup.mjs
// --test installs it when Go is present. Without either, these tests are skipped, saying why.
const GRPCURL = findGrpcurl();
if (GRPCURL === undefined) {
  console.warn(`grpcurl not found (PATH, $KVFERRY_GRPCURL, $(go env GOPATH)/bin): its tests are skipped; go install github.com/fullstorydev/grpcurl/cmd/grpcurl@${GRPCURL_VERSION}`);
}

describe.skipIf(GRPCURL === undefined)("reflection through grpcurl", () => {
  const run = promisify(execFile);
  async function grpcurl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    try {
      const { stdout, stderr } = await run(GRPCURL!, ["-plaintext", ...args], { timeout: 15_000 });
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code?: number; stdout?: string; stderr?: string };
      return { code: typeof e.code === "number" ? e.code : -1, stdout: e.stdout ?? "", stderr: e.stderr ?? String(err) };
    }
  }

  it("lists kvferry.v1.KvFerry and grpc.health.v1.Health, and every method of kvferry.v1.KvFerry", async () => {
    const services = await grpcurl([d.address, "list"]);
    expect(services.code, services.stderr).toBe(0);
    expect(services.stdout.trim().split("\n")).toEqual(expect.arrayContaining(["kvferry.v1.KvFerry", "grpc.health.v1.Health"]));
    const methods = await grpcurl([d.address, "list", "kvferry.v1.KvFerry"]);
    expect(methods.code, methods.stderr).toBe(0);
    for (const m of ["Put", "PutStream", "Seal", "Release", "Stat", "List", "Get", "GetStream", "ConfirmConsume", "GetServerInfo", "BatchTransfer", "ListNodes"]) {
      expect(methods.stdout).toContain(`kvferry.v1.KvFerry.${m}\n`);
    }
  });

  it("puts, stats and lists through grpcurl what the TypeScript client reads back, and reports NotFound", async () => {
    const put = await grpcurl([
      "-d",
      JSON.stringify({ transfer_id: "from-grpcurl", part: "layer.0", data: Buffer.from("hello").toString("base64"), seal: true }),
      d.address,
      "kvferry.v1.KvFerry/Put",
    ]);
    expect(put.code, put.stderr).toBe(0);
    expect(JSON.parse(put.stdout).entry).toMatchObject({ transfer_id: "from-grpcurl", state: "ENTRY_STATE_SEALED" });
    const stat = await grpcurl(["-d", '{"transfer_id":"from-grpcurl"}', d.address, "kvferry.v1.KvFerry/Stat"]);
    expect(stat.code, stat.stderr).toBe(0);
    expect(JSON.parse(stat.stdout).entry).toMatchObject({ transfer_id: "from-grpcurl", bytes: "5", parts: [{ name: "layer.0", size: "5" }] });
    const list = await grpcurl(["-d", '{"page_size":1000}', d.address, "kvferry.v1.KvFerry/List"]);
    expect(list.code, list.stderr).toBe(0);
    expect(JSON.parse(list.stdout).entries.map((e: { transfer_id: string }) => e.transfer_id)).toContain("from-grpcurl");
    const got = await d.client.get("from-grpcurl", { waitMs: 0 });
    expect(got.parts.get("layer.0")?.toString()).toBe("hello");

    const missing = await grpcurl(["-d", '{"transfer_id":"no-such-entry"}', d.address, "kvferry.v1.KvFerry/Stat"]);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toMatch(/Code: NotFound/);
  });

  it("runs the README's buf curl and grpcurl examples as written, against this daemon", async () => {
    // buf curl answers in JSON names (transferId), grpcurl in the proto's (transfer_id).
    const named = (o: Record<string, unknown>, name: string) => o[name] ?? o[name.replace(/_(\w)/g, (_, c: string) => c.toUpperCase())];
    const block = shellBlocks(readmeSection("From the command line: buf curl and grpcurl"));
    expect(block).toHaveLength(1);
    const commands = shellCommands(block[0]);
    expect(commands.filter((c) => c.text.startsWith("grpcurl ")).map((c) => / kvferry\.v1\.KvFerry\/(\w+)$/.exec(c.text)?.[1])).toEqual(
      expect.arrayContaining(["Put", "Stat", "List", "Get", "ListNodes", "GetServerInfo"]),
    );
    for (const command of commands) {
      // The only changes: this daemon's address, and the tools' paths.
      const text = command.text.replaceAll("127.0.0.1:50051", d.address).replace(/^npx buf /, `'${BUF}' `).replace(/^grpcurl /, `'${GRPCURL}' `);
      const r = await run("bash", ["-c", text], { timeout: 15_000 }).then(
        ({ stdout }) => ({ code: 0, stdout, stderr: "" }),
        (err: { code?: number; stdout?: string; stderr?: string }) => ({ code: err.code ?? -1, stdout: err.stdout ?? "", stderr: err.stderr ?? "" }),
      );
      expect(r.code, `${command.text}\n${r.stderr}`).toBe(0);
      const method = /\/(\w+)$/.exec(command.text)?.[1];
      const answer = r.stdout.trim().startsWith("{") ? JSON.parse(r.stdout) : undefined;
      if (method === "Put") expect(answer.entry.state).toBe("ENTRY_STATE_SEALED");
      if (method === "Stat") expect(answer.entry.parts).toEqual([expect.objectContaining({ name: "layer.0", size: "5" })]);
      if (method === "List") expect(answer.entries.map((e: Record<string, unknown>) => named(e, "transfer_id"))).toEqual(expect.arrayContaining(["t1", "t2"]));
      if (method === "Get") expect(answer.parts).toEqual([expect.objectContaining({ name: "layer.0", data: "aGVsbG8=" })]);
      if (method === "ListNodes") {
        expect(answer.backend).toBe("embedded");
        expect(answer.nodes.map((n: Record<string, unknown>) => named(n, "node_id"))).toEqual([expect.stringMatching(new RegExp(`:${d.port}$`))]);
      }
      if (method === "Check") expect(answer).toEqual({ status: "SERVING" });
    }
  });
});

describe("SIGTERM", () => {
  let waiting: TestDaemon;
  let streaming: TestDaemon;

  beforeAll(async () => {
    [waiting, streaming] = await Promise.all([
      startDaemon(["--kv-buffer-size", "16MiB"]),
      startDaemon(["--kv-buffer-size", "32MiB"]),
    ]);
  });

  afterAll(async () => {
    await Promise.all([waiting?.stop(), streaming?.stop()]);
  });

  it("finishes a Get waiting on a part that arrives 300 ms after SIGTERM, refuses new connections meanwhile, and exits 0", async () => {
    const reader = waiting.newClient();
    const writer = waiting.newClient();
    await Promise.all([reader.waitForReady(), writer.waitForReady()]);
    await writer.put("drain", "layer.0", pattern(1000, 1));
    // The writer's PutStream is in flight (header sent) before the signal; its bytes come later.
    let finishPut!: () => void;
    const putDone = new Promise<Awaited<ReturnType<typeof rawPutStream>>>((resolve) => {
      const stream = writer.raw.putStream(new Metadata(), { deadline: Date.now() + 10_000 }, (err, res) =>
        resolve(err ? { ok: false, error: err } : { ok: true, value: res }),
      );
      stream.write(PutStreamRequest.create({ header: { transferId: "drain", part: "layer.1", size: 4096, seal: true } }));
      finishPut = () => {
        stream.write({ chunk: pattern(4096, 2) });
        stream.end();
      };
    });
    const named = reader.get("drain", { parts: ["layer.1"], waitMs: 8000 });
    const all = reader.get("drain", { waitMs: 8000 });
    await sleep(100);

    waiting.proc.child.kill("SIGTERM");
    const signalled = Date.now();
    expect(await refusedWithin(waiting.port, 3000)).toBe("ECONNREFUSED");
    await sleep(300 - (Date.now() - signalled));
    expect(waiting.proc.child.exitCode, "the daemon waits for the calls in flight").toBe(null);
    finishPut();

    expect((await putDone).ok).toBe(true);
    expectSameBytes((await named).parts.get("layer.1"), pattern(4096, 2));
    expect([...(await all).parts.keys()].sort()).toEqual(["layer.0", "layer.1"]);
    expect(await waiting.proc.exited).toBe(0);
    expect(waiting.proc.logs.map((l) => l.msg)).toEqual(expect.arrayContaining(["draining", "stopped"]));
  });

  it("finishes a slowly read GetStream in flight at SIGTERM with every byte, then exits 0", async () => {
    const c: KvferryClient = streaming.client;
    const data = pattern(16 * MiB, 5);
    await c.put("slow", "kv", data, { seal: true });
    const stream: ClientReadableStream<GetStreamResponse> = c.raw.getStream(
      GetStreamRequest.create({ transferId: "slow", waitMs: 0, chunkSize: 256 * 1024 }),
      new Metadata(),
      { deadline: Date.now() + 20_000 },
    );
    const chunks: Buffer[] = [];
    let paused!: () => void;
    const firstChunk = new Promise<void>((resolve) => (paused = resolve));
    const ended = new Promise<void>((resolve, reject) => {
      stream.on("data", (m: GetStreamResponse) => {
        chunks.push(m.chunk);
        if (chunks.length === 1) {
          stream.pause();
          paused();
        }
      });
      stream.on("error", reject);
      stream.on("end", resolve);
    });
    await firstChunk;

    streaming.proc.child.kill("SIGTERM");
    const signalled = Date.now();
    expect(await refusedWithin(streaming.port, 3000)).toBe("ECONNREFUSED");
    await sleep(300 - (Date.now() - signalled));
    expect(streaming.proc.child.exitCode, "the daemon waits for the stream").toBe(null);
    stream.resume();
    await ended;
    expect(sha256(Buffer.concat(chunks))).toBe(sha256(data));
    expect(await streaming.proc.exited).toBe(0);
  });
});

describe("configuration errors", () => {
  it("exits 2 naming kv_buffer_size and the flag for --kv-buffer-size abc", async () => {
    const r = await runCli(["daemon", "--listen", "127.0.0.1:0", "--kv-buffer-size", "abc"], {});
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/kv_buffer_size/);
    expect(r.stderr).toMatch(/--kv-buffer-size/);
    expect(r.stderr).toMatch(/abc/);
  });

  it('exits 2 naming protocol and the file for a config file with "protocol": 5', async () => {
    const file = join(dir, "bad-protocol.json");
    writeFileSync(file, JSON.stringify({ protocol: 5 }));
    const r = await runCli(["daemon", "--listen", "127.0.0.1:0", "--config", file], {});
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/protocol/);
    expect(r.stderr).toContain(file);
  });

  it("exits 2 for a file that is not JSON, a bad --listen and an unknown flag", async () => {
    const file = join(dir, "not-json.json");
    writeFileSync(file, "{ protocol: tcp");
    for (const args of [
      ["--config", file],
      ["--listen", "127.0.0.1:99999"],
      ["--listen", "127.0.0.1:0", "--no-such-flag"],
    ]) {
      const r = await runCli(["daemon", ...args], {});
      expect(r.code, args.join(" ")).toBe(2);
      expect(r.stderr.length, args.join(" ")).toBeGreaterThan(0);
    }
  });
});

describe("ports already taken", () => {
  /** Holds `port` on 127.0.0.1 until the test ends. */
  async function occupy(port: number): Promise<void> {
    const holder = createServer();
    await new Promise<void>((resolve) => holder.listen(port, "127.0.0.1", resolve));
    onTestFinished(() => new Promise<void>((resolve) => holder.close(() => resolve())));
  }

  /** The message of the daemon's "cannot start" log line. */
  function fatalMessage(stdout: string): string {
    const fatal = stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l)).find((r) => r.msg === "cannot start");
    return fatal?.err?.message ?? "";
  }

  it("exits 1 naming the data plane's setting, the address and the reason, without a stack trace on stderr", async () => {
    const base = await freePorts([0, 1]);
    await occupy(base);
    const r = await runCli(["daemon", "--listen", "127.0.0.1:0", "--data-listen", `127.0.0.1:${base}`, "--kv-buffer-size", "8MiB"]);
    expect(r.code).toBe(1);
    expect(fatalMessage(r.stdout)).toBe(
      `cannot start the data plane (data_listen, or prefill_url / decode_url by role): cannot listen on 127.0.0.1:${base}: Address already in use`,
    );
    expect(r.stderr).toBe("");
  });

  it("exits 1 naming the peer API's setting, the address and the reason; grpc-js's own \"No address added\" complaint is not shown", async () => {
    const base = await freePorts([0, 1]);
    await occupy(base + 1);
    const r = await runCli(["daemon", "--listen", "127.0.0.1:0", "--data-listen", `127.0.0.1:${base}`, "--kv-buffer-size", "8MiB"]);
    expect(r.code).toBe(1);
    expect(fatalMessage(r.stdout)).toBe(
      `cannot listen for the peer API (peer_listen; by default the data port + 1) on 127.0.0.1:${base + 1}: address already in use (EADDRINUSE)`,
    );
    expect(r.stdout).not.toContain("No address added");
    expect(r.stderr).toBe("");
  });

  it("exits 1 naming the client API's setting, the address and the reason, as its only complaint; grpc-js's own line is left for --log-level debug", async () => {
    const port = await freePorts([0]);
    await occupy(port);
    const args = ["daemon", "--listen", `127.0.0.1:${port}`, "--data-listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0", "--kv-buffer-size", "8MiB"];
    const r = await runCli(args);
    expect(r.code).toBe(1);
    expect(fatalMessage(r.stdout)).toBe(`cannot listen for the client API (listen) on 127.0.0.1:${port}: address already in use (EADDRINUSE)`);
    const complaints = r.stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l)).filter((rec) => rec.level >= 40);
    expect(complaints.filter((rec) => rec.component === "grpc-js")).toEqual([]);
    expect(complaints.at(-1)?.msg).toBe("cannot start");
    expect(r.stdout).not.toContain("No address added");
    expect(r.stderr).toBe("");
    // Not lost: a debug line of grpc-js's, for whoever asks.
    const debug = await runCli([...args, "--log-level", "debug"]);
    expect(debug.code).toBe(1);
    const grpcLine = debug.stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l)).find((rec) => rec.component === "grpc-js");
    expect(grpcLine).toMatchObject({ level: 20, msg: expect.stringContaining("No address added") });
  });

  it("a launcher waiting for the daemon to serve is told at once why it exited, in the daemon's words", async () => {
    const base = await freePorts([0, 1]);
    await occupy(base);
    const t0 = Date.now();
    // A start limit far beyond what the exit takes even on a busy machine: "at once" is long before it.
    const startTimeoutMs = 120_000;
    const err = await spawnDaemon(["--listen", "127.0.0.1:0", "--data-listen", `127.0.0.1:${base}`, "--kv-buffer-size", "8MiB"], { startTimeoutMs }).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err?.message).toContain(`exited with code 1 before serving (cannot start the data plane (data_listen, or prefill_url / decode_url by role): cannot listen on 127.0.0.1:${base}`);
    expect(Date.now() - t0).toBeLessThan(startTimeoutMs / 2);
  });
});

describe("stopping", () => {
  it.each(["SIGTERM", "SIGINT"] as const)('logs "shutting down" and "stopped" once each on %s, and exits 0', async (signal) => {
    const d = await startDaemon(["--kv-buffer-size", "8MiB"]);
    d.client.close();
    d.proc.child.kill(signal);
    expect(await d.proc.exited).toBe(0);
    const msgs = d.proc.logs.map((l) => l.msg);
    expect(msgs.filter((m) => m === "shutting down")).toHaveLength(1);
    expect(msgs.filter((m) => m === "stopped")).toHaveLength(1);
    expect(msgs.at(-1)).toBe("stopped");
  });
});

describe("version", () => {
  it.each([["--version"], ["version"]])("kvferry %s prints package.json's version and exits 0", async (arg) => {
    const { version } = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as { version: string };
    const r = await runCli([arg]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`kvferry ${version}\n`);
  });
});

describe("help", () => {
  it("kvferry daemon --help exits 0 and documents every flag", async () => {
    const r = await runCli(["daemon", "--help"]);
    expect(r.code).toBe(0);
    for (const flag of DAEMON_FLAGS) expect(r.stdout, flag).toContain(flag);
  });

  it("kvferry --help exits 0 and documents every flag", async () => {
    const r = await runCli(["--help"]);
    expect(r.code).toBe(0);
    const missing = DAEMON_FLAGS.filter((flag) => !r.stdout.includes(flag));
    expect(missing, "flags missing from `kvferry --help`").toEqual([]);
  });
});

describe("the seed's mooncake.json through MOONCAKE_CONFIG_PATH", () => {
  it("refuses the seed's rdma setup at start-up with exit code 2, naming the file and the key: its devices are not on this machine (or UCX is not in this build)", async () => {
    const r = await runCli(["daemon", "--listen", "127.0.0.1:0"], { MOONCAKE_CONFIG_PATH: SEED, KVFERRY_CONFIG: "" });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(SEED);
    if (UCX_BUILT) expect(r.stderr).toMatch(/device_name: got "erdma_0,erdma_1", expected devices of this machine \(erdma_0, erdma_1 are not; it has /);
    else expect(r.stderr).toMatch(/protocol: got "rdma"/);
  });

  it("starts with the same file switched to tcp and serves, registered in etcd (its etcd, data and peer ports moved to loopback)", async () => {
    const file = join(dir, "seed-tcp.json");
    writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(SEED, "utf8")), protocol: "tcp" }));
    // The seed names an etcd on another host: this test's own etcd on loopback stands in
    // for it (the flag overrides the file; metadata_backend "etcd" in the file agrees).
    const etcd = await startEtcd();
    onTestFinished(() => etcd.stop());
    const seeded = await startDaemon(
      ["--data-listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0", "--metadata-server", etcd.endpoint, "--node-id", "seeded"],
      { env: { MOONCAKE_CONFIG_PATH: file, KVFERRY_CONFIG: "" } },
    );
    try {
      const loaded = seeded.proc.logs.find((l) => l.msg === "configuration loaded");
      expect(loaded).toMatchObject({ source: file, protocol: "tcp", metadata: "etcd" });
      expect(await etcd.ctl("get", "--keys-only", "kvferry/v1/nodes/seeded")).toContain("kvferry/v1/nodes/seeded");
      const info = await seeded.client.serverInfo();
      expect(info.poolCapacity).toBe(2 ** 30); // the file sets no buffer size: the default
      await seeded.client.put("seeded", "p", Buffer.from("ok"), { seal: true });
      expect((await seeded.client.get("seeded", { waitMs: 0 })).parts.get("p")?.toString()).toBe("ok");
    } finally {
      expect(await seeded.stop()).toBe(0);
    }
  });
});
