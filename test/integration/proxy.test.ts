// `kvferry proxy` in front of simulated engines, every part a real process on 127.0.0.1:
// kvferry daemons (one per node), `kvferry simulate` prefill / decode instances on them, a
// `--role both` instance as the non-disaggregated reference, and the proxy. What must
// hold: the text a client gets through prefill → KV transfer → decode is exactly the
// reference's; upstream errors pass through with their bodies; a decode that dies, a
// client that leaves, an instance that is not there end cleanly (502/503/504 or an SSE
// error event, never an empty 200) and leave no entry behind on any daemon.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import { connect, type AddressInfo, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NotFoundError } from "../../src/errors.js";
import { loadProxyConfig, parseInstance } from "../../src/proxy/config.js";
import { LeastOutstanding, RoundRobin } from "../../src/proxy/policies.js";
import { spawnSimulator, type SpawnedSimulator } from "../../src/simulator/spawn.js";
import { rejection, runCli, sleep } from "../helpers/daemon.js";
import { freePort } from "../helpers/ports.js";
import { startPeerDaemon, type PeerDaemon } from "../helpers/transfer.js";
import {
  SMALL_LAYOUT,
  eventually,
  generatedText,
  mapConcurrent,
  metricValue,
  mixedCases,
  pathOf,
  post,
  sendCase,
  spawnProxy,
  sseData,
  startNode,
  startReference,
  stopNodes,
  type CompletionCase,
  type SimNode,
  type SpawnedProxy,
} from "../helpers/proxy.js";

const MODEL = "kvferry-sim-7b";

/** The reference's text for each case. */
async function referenceTexts(reference: SpawnedSimulator, cases: CompletionCase[]): Promise<string[]> {
  return mapConcurrent(cases, 8, async (c) => generatedText(c.endpoint, c.body.stream === true, await sendCase(reference.url, c)));
}

/** Entries the daemons of these nodes hold now. */
async function entryCounts(nodes: SimNode[]): Promise<number[]> {
  return Promise.all(nodes.map(async (n) => (await n.daemon.client.serverInfo()).entries));
}

/** Waits (bounded) until none of the nodes' daemons holds an entry; asserts it. */
async function expectNoEntries(nodes: SimNode[], timeoutMs = 10_000): Promise<void> {
  await eventually(async () => (await entryCounts(nodes)).every((n) => n === 0), timeoutMs);
  expect(await entryCounts(nodes)).toEqual(nodes.map(() => 0));
}

async function metricsOf(base: string): Promise<string> {
  return (await fetch(`${base}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
}

/** A raw connection to an http://HOST:PORT base, connected. */
async function rawConnection(base: string): Promise<Socket> {
  const { hostname, port } = new URL(base);
  const socket = connect(Number(port), hostname);
  await new Promise<void>((resolve, reject) => socket.once("connect", resolve).once("error", reject));
  return socket;
}

/** Writes `text` (the rest of a request) and reads until the server closes: status, headers, body. */
async function rawAnswer(socket: Socket, text: string): Promise<{ status: number; head: string; body: string }> {
  let raw = "";
  socket.on("data", (d) => (raw += d));
  const ended = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  socket.write(text);
  await Promise.race([ended, sleep(10_000)]);
  socket.destroy();
  const at = raw.indexOf("\r\n\r\n");
  const head = at < 0 ? raw : raw.slice(0, at);
  return { status: Number(head.split(" ")[1]), head: head.toLowerCase(), body: at < 0 ? "" : raw.slice(at + 4) };
}

/** Every `data:` line of an event stream is JSON or [DONE] (a client parses each one). */
function expectParsableEvents(text: string): void {
  for (const line of text.split(/\r?\n/).filter((l) => l.startsWith("data:"))) {
    const data = line.slice(5).trim();
    if (data === "[DONE]") continue;
    expect(() => JSON.parse(data), `unparsable event line: ${line}`).not.toThrow();
  }
}

describe("policies and instance flags (in process)", () => {
  const pickNames = (policy: RoundRobin | LeastOutstanding, candidates: { name: string; outstanding: number }[], times: number) =>
    Array.from({ length: times }, () => policy.pick(candidates)?.name);

  it("round-robin takes each healthy candidate in turn; none when there is none", () => {
    const rr = new RoundRobin();
    const abc = ["a", "b", "c"].map((name) => ({ name, outstanding: 0 }));
    expect(pickNames(rr, abc, 7)).toEqual(["a", "b", "c", "a", "b", "c", "a"]);
    expect(rr.pick([])).toBeUndefined();
  });

  it("least-outstanding takes the fewest in flight, and takes ties in turn", () => {
    const lo = new LeastOutstanding();
    const busy = [{ name: "a", outstanding: 2 }, { name: "b", outstanding: 0 }, { name: "c", outstanding: 1 }];
    expect(pickNames(lo, busy, 3)).toEqual(["b", "b", "b"]);
    const tied = [{ name: "a", outstanding: 1 }, { name: "b", outstanding: 0 }, { name: "c", outstanding: 0 }];
    expect(new Set(pickNames(lo, tied, 4))).toEqual(new Set(["b", "c"]));
    expect(lo.pick([])).toBeUndefined();
  });

  it("parses URL[=DAEMON] and the defaults", () => {
    expect(parseInstance("decode", "http://10.0.0.5:8200/engine/=10.0.0.5:50051")).toEqual({
      role: "decode", url: "http://10.0.0.5:8200/engine", daemon: "10.0.0.5:50051",
    });
    expect(parseInstance("prefill", "https://h.example:443")).toEqual({ role: "prefill", url: "https://h.example", daemon: undefined });
    for (const bad of ["h:1", "http://h:1?x=1", "http://u:p@h:1", "http://h:1=nope", "http://h:1=h:99999", "ws://h:1"]) {
      expect(parseInstance("prefill", bad), bad).toBeUndefined();
    }
    const c = loadProxyConfig({ prefill: ["http://p:1=127.0.0.1:2"], decode: ["http://d:1=127.0.0.1:3"] });
    expect(c).toMatchObject({
      listen: { host: "127.0.0.1", port: 8000 }, policy: "least-outstanding", transfer: "push", healthIntervalMs: 2000,
      forwardAuthorization: false,
    });
  });
});

describe("kvferry proxy --config", () => {
  it("reads the instance lists and settings from a JSON file, lets flags override it, and names the file and key of a bad value", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kvferry-proxy-"));
    const file = join(dir, "proxy.json");
    writeFileSync(file, JSON.stringify({
      prefill: ["http://p1:8100=127.0.0.1:50051", "http://p2:8100=127.0.0.1:50052"], decode: ["http://d1:8200=127.0.0.1:50061"],
      policy: "round-robin", health_interval_ms: 500, forward_authorization: true,
    }));
    const c = loadProxyConfig({ policy: "least-outstanding" }, file);
    expect(c.prefill.map((i) => i.url)).toEqual(["http://p1:8100", "http://p2:8100"]);
    expect(c.decode).toEqual([{ role: "decode", url: "http://d1:8200", daemon: "127.0.0.1:50061" }]);
    expect(c).toMatchObject({ policy: "least-outstanding", healthIntervalMs: 500, forwardAuthorization: true });
    expect(loadProxyConfig({ decode: ["http://d9:1=127.0.0.1:9"] }, file).decode.map((i) => i.url)).toEqual(["http://d9:1"]);

    const bad = join(dir, "bad.json");
    writeFileSync(bad, JSON.stringify({ prefill: ["http://p1:8100"], decode: ["http://d1:8200=127.0.0.1:1"] }));
    const r = await runCli(["proxy", "--config", bad]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`${bad}: prefill: got "http://p1:8100", expected URL=DAEMON: --transfer push needs`);
    writeFileSync(bad, JSON.stringify({ prefil: [] }));
    expect(() => loadProxyConfig({}, bad)).toThrow(/bad\.json: prefil: got \[\], expected one of the keys listen, prefill, decode/);
    writeFileSync(bad, JSON.stringify({ prefill: ["http://p:1=127.0.0.1:2"], decode: ["http://d:1=127.0.0.1:3"], drain_ms: "soon" }));
    expect(() => loadProxyConfig({}, bad)).toThrow(/bad\.json: drain_ms: got "soon", expected a whole number of milliseconds/);
    rmSync(dir, { recursive: true, force: true });
  });
});

describe("kvferry proxy flags", () => {
  it("refuses a missing daemon under push/pull, an invalid URL and an empty list with exit 2, naming the flag", async () => {
    const push = await runCli(["proxy", "--prefill", "http://127.0.0.1:9001", "--decode", "http://127.0.0.1:9002=127.0.0.1:50051"]);
    expect(push.code).toBe(2);
    expect(push.stderr).toMatch(/--prefill: .*"http:\/\/127\.0\.0\.1:9001".*--transfer push needs the kvferry daemon/);
    const pull = await runCli(["proxy", "--transfer", "pull", "--prefill", "http://h:1=127.0.0.1:5", "--decode", "http://h:2"]);
    expect(pull.code).toBe(2);
    expect(pull.stderr).toMatch(/--decode: .*--transfer pull needs/);
    const url = await runCli(["proxy", "--transfer", "none", "--prefill", "127.0.0.1:9001", "--decode", "http://h:2"]);
    expect(url.code).toBe(2);
    expect(url.stderr).toMatch(/--prefill: prefill: got "127\.0\.0\.1:9001", expected URL\[=DAEMON\]/);
    const empty = await runCli(["proxy", "--transfer", "none", "--prefill", "http://h:1"]);
    expect(empty.code).toBe(2);
    expect(empty.stderr).toMatch(/--decode: decode: got nothing, expected at least one decode instance/);
    const policy = await runCli(["proxy", "--transfer", "none", "--prefill", "http://h:1", "--decode", "http://h:2", "--policy", "random"]);
    expect(policy.code).toBe(2);
    expect(policy.stderr).toMatch(/--policy: .*round-robin \| least-outstanding/);
    const often = await runCli(["proxy", "--transfer", "none", "--prefill", "http://h:1", "--decode", "http://h:2", "--health-interval-ms", "99"]);
    expect(often.code).toBe(2);
    expect(often.stderr).toMatch(/--health-interval-ms: .*got "99", expected a whole number of milliseconds from 100/);
  });
});

describe("one prefill, one decode (default KV layout: 128 KiB per token)", () => {
  let prefill: SimNode;
  let decode: SimNode;
  let reference: SpawnedSimulator;
  const cases = mixedCases(100);
  let expected: string[];

  beforeAll(async () => {
    [prefill, decode, reference] = await Promise.all([startNode("prefill"), startNode("decode"), startReference()]);
    expected = await referenceTexts(reference, cases);
    // A reference that says nothing would make every comparison pass.
    expect(expected.filter((t) => t.length > 0).length).toBe(100);
  });

  afterAll(async () => {
    const codes = await Promise.all([stopNodes([prefill, decode]), reference?.stop()]);
    expect(codes.flat()).toEqual([0, 0, 0, 0, 0]);
  });

  for (const transfer of ["push", "pull"] as const) {
    it(`serves 100 mixed requests (--transfer ${transfer}) with exactly the text of a --role both instance`, async () => {
      const proxy = await spawnProxy(["--transfer", transfer, "--prefill", prefill.flag, "--decode", decode.flag]);
      try {
        const started = performance.now();
        const got = await mapConcurrent(cases, 8, async (c) => generatedText(c.endpoint, c.body.stream === true, await sendCase(proxy.url, c)));
        const seconds = (performance.now() - started) / 1000;
        for (let i = 0; i < cases.length; i++) expect(got[i], `case ${i}: ${JSON.stringify(cases[i])}`).toBe(expected[i]);
        await expectNoEntries([prefill, decode]);
        const metrics = await metricsOf(proxy.url);
        expect(metricValue(metrics, 'kvferry_proxy_requests_total{outcome="ok",route="completions",status="200"}')).toBe(50);
        expect(metricValue(metrics, 'kvferry_proxy_requests_total{outcome="ok",route="chat",status="200"}')).toBe(50);
        const pushed = metricValue(metrics, 'kvferry_proxy_kv_transfer_bytes_total{mode="push"}');
        if (transfer === "push") expect(pushed).toBeGreaterThan(100 * 128 * 1024);
        else expect(pushed).toBeUndefined();
        console.log(`1P1D ${transfer}: 100 requests in ${seconds.toFixed(2)} s (8 at a time); pushed ${pushed ?? 0} bytes`);
      } finally {
        expect(await proxy.stop()).toBe(0);
      }
    });
  }

  it("moves no KV when the prefill and decode daemons are one node named two ways (127.0.0.1:P and localhost:P)", async () => {
    // A decode instance on the prefill's node, its daemon named by another address.
    const local = await spawnSimulator(["--role", "decode", "--listen", "127.0.0.1:0", "--daemon", prefill.daemon.address]);
    const port = prefill.daemon.address.slice(prefill.daemon.address.lastIndexOf(":") + 1);
    let proxy: SpawnedProxy | undefined;
    try {
      for (const transfer of ["push", "pull"]) {
        proxy = await spawnProxy(["--transfer", transfer, "--prefill", prefill.flag, "--decode", `${local.url}=localhost:${port}`]);
        const some = cases.slice(0, 8);
        const got = await mapConcurrent(some, 4, async (c) => generatedText(c.endpoint, c.body.stream === true, await sendCase(proxy!.url, c)));
        expect(got, transfer).toEqual(expected.slice(0, 8));
        // No push was asked for: the daemon was never told to send an entry to itself.
        expect(await metricsOf(proxy.url)).not.toMatch(/^kvferry_proxy_kv_transfers_total\{/m);
        await expectNoEntries([prefill]);
        expect(await proxy.stop()).toBe(0);
        proxy = undefined;
      }
    } finally {
      await proxy?.stop();
      expect(await local.stop()).toBe(0);
    }
  });

  it("passes a prefill's 400 and its body through unchanged, and a decode's, and releases what the prefill stored", async () => {
    const proxy = await spawnProxy(["--prefill", prefill.flag, "--decode", decode.flag]);
    try {
      // n = 2 is refused by the prefill instance (the decode is never asked).
      const refused = { model: MODEL, prompt: "two answers please", max_tokens: 4, n: 2 };
      const direct = await post(reference.url, "/v1/completions", refused);
      const viaProxy = await post(proxy.url, "/v1/completions", refused);
      expect(direct.status).toBe(400);
      expect(viaProxy.status).toBe(400);
      expect(viaProxy.text).toBe(direct.text);
      expect(JSON.parse(viaProxy.text).error.param).toBe("n");
      expect(viaProxy.headers.get("content-type")).toBe("application/json");
      // The prefill stored nothing: no release is asked for.
      await sleep(300);
      expect(metricValue(await metricsOf(proxy.url), "kvferry_proxy_kv_releases_total{")).toBeUndefined();

      // An invalid max_tokens: the prefill is sent max_tokens 1 and stores the KV; the
      // decode refuses the original request. The client gets the decode's 400, and the
      // entry pushed to the decode node is released.
      const badMax = { model: MODEL, prompt: "how many tokens?", max_tokens: 0 };
      const refusedDirect = await post(reference.url, "/v1/completions", badMax);
      const refusedProxy = await post(proxy.url, "/v1/completions", badMax);
      expect(refusedProxy.status).toBe(400);
      expect(refusedProxy.text).toBe(refusedDirect.text);
      expect(JSON.parse(refusedProxy.text).error.param).toBe("max_tokens");
      await expectNoEntries([prefill, decode]);
      const metrics = await metricsOf(proxy.url);
      expect(metricValue(metrics, 'kvferry_proxy_requests_total{outcome="upstream_status",route="completions",status="400"}')).toBe(2);
      expect(metricValue(metrics, 'kvferry_proxy_kv_releases_total{after="failed",result="released"}')).toBeGreaterThanOrEqual(1);
    } finally {
      expect(await proxy.stop()).toBe(0);
    }
  });

  it("echoes X-Request-Id, mints one when none is given, and answers its own errors in OpenAI's shape", async () => {
    const proxy = await spawnProxy(["--prefill", prefill.flag, "--decode", decode.flag, "--max-body-bytes", "1KiB"]);
    try {
      const c = cases[0]!;
      const given = await sendCase(proxy.url, c, { "x-request-id": "client-req-42" });
      expect(given.status).toBe(200);
      expect(given.headers.get("x-request-id")).toBe("client-req-42");
      const [a, b] = await Promise.all([sendCase(proxy.url, c), sendCase(proxy.url, c)]);
      const minted = [a.headers.get("x-request-id"), b.headers.get("x-request-id")];
      expect(minted[0]).toMatch(/^req-[0-9a-f-]{36}$/);
      expect(minted[1]).toMatch(/^req-[0-9a-f-]{36}$/);
      expect(minted[0]).not.toBe(minted[1]);

      const errorOf = (text: string) => JSON.parse(text).error as { message: string; type: string; param: unknown; code: string };
      const badJson = await post(proxy.url, "/v1/completions", "{not json", { "x-request-id": "bad-1" });
      expect([badJson.status, errorOf(badJson.text).code, badJson.headers.get("x-request-id")]).toEqual([400, "invalid_json", "bad-1"]);
      const empty = await post(proxy.url, "/v1/chat/completions", "");
      expect([empty.status, errorOf(empty.text).code]).toEqual([400, "missing_body"]);
      const array = await post(proxy.url, "/v1/completions", "[1,2]");
      expect([array.status, errorOf(array.text).code]).toEqual([400, "invalid_json"]);
      const big = await post(proxy.url, "/v1/completions", { model: MODEL, prompt: "x".repeat(2000) });
      expect([big.status, errorOf(big.text).code]).toEqual([413, "body_too_large"]);
      const unknown = await post(proxy.url, "/v1/embeddings", { input: "x" });
      expect([unknown.status, errorOf(unknown.text).code]).toEqual([404, "not_found"]);
      const wrongMethod = await fetch(`${proxy.url}/v1/completions`, { signal: AbortSignal.timeout(5000) });
      expect(wrongMethod.status).toBe(405);
      expect(wrongMethod.headers.get("allow")).toBe("POST");
      expect(errorOf(await wrongMethod.text()).type).toBe("invalid_request_error");

      const models = await (await fetch(`${proxy.url}/v1/models`, { signal: AbortSignal.timeout(5000) })).json();
      expect(models.object).toBe("list");
      expect(models.data.map((m: { id: string }) => m.id)).toEqual([MODEL]);
      const health = await fetch(`${proxy.url}/health`, { signal: AbortSignal.timeout(5000) });
      expect(health.status).toBe(200);
      const report = await health.json();
      expect(report.prefill[0]).toMatchObject({ url: prefill.sim.url, health: "healthy", daemon: prefill.daemon.address, peerAddress: prefill.daemon.peerAddress });
      expect(report.decode[0]).toMatchObject({ url: decode.sim.url, health: "healthy", peerAddress: decode.daemon.peerAddress });
      // The proxy did not crash on any of it.
      expect((await sendCase(proxy.url, c)).status).toBe(200);
    } finally {
      expect(await proxy.stop()).toBe(0);
    }
  });

  it("answers 504 when the decode sends nothing within --decode-timeout-ms, and frees nothing it should keep", async () => {
    const proxy = await spawnProxy(["--prefill", prefill.flag, "--decode", decode.flag, "--decode-timeout-ms", "1000"]);
    try {
      // 5000 tokens at 2 ms each: the decode's non-streamed answer comes after ~10 s.
      const slow = await post(proxy.url, "/v1/completions", { model: MODEL, prompt: "a long story", max_tokens: 5000 });
      expect(slow.status).toBe(504);
      expect(JSON.parse(slow.text).error).toMatchObject({ type: "timeout_error", code: "upstream_timeout" });
      // A timeout is not a dead instance: the next request is served.
      const c = cases[0]!;
      expect(generatedText(c.endpoint, false, await sendCase(proxy.url, c))).toBe(expected[0]);
      await expectNoEntries([prefill, decode]);
    } finally {
      expect(await proxy.stop()).toBe(0);
    }
  });

  it("a client aborting mid-stream stops the decode's generation and leaves no entry on either daemon", async () => {
    const proxy = await spawnProxy(["--prefill", prefill.flag, "--decode", decode.flag]);
    const abortedOnDecode = async () =>
      metricValue(await metricsOf(decode.sim.url), 'kvferry_simulator_requests_total{role="decode",endpoint="completions",outcome="aborted"}') ?? 0;
    try {
      const before = await abortedOnDecode();
      const controller = new AbortController();
      const res = await fetch(`${proxy.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: MODEL, prompt: "never finish this", max_tokens: 5000, stream: true }),
        signal: controller.signal,
      });
      expect(res.status).toBe(200);
      const reader = res.body!.getReader();
      const first = await reader.read();
      expect(new TextDecoder().decode(first.value)).toMatch(/^data: /);
      controller.abort();
      await rejection(reader.read());
      // The decode saw its client (the proxy) go away and stopped generating.
      await eventually(async () => (await abortedOnDecode()) === before + 1, 5000);
      expect(await abortedOnDecode()).toBe(before + 1);
      await eventually(async () => metricValue(await metricsOf(proxy.url), 'kvferry_proxy_requests_total{outcome="aborted",route="completions",status="499"}') === 1, 5000);
      expect(metricValue(await metricsOf(proxy.url), 'kvferry_proxy_requests_total{outcome="aborted",route="completions",status="499"}')).toBe(1);
      await expectNoEntries([prefill, decode]);
    } finally {
      expect(await proxy.stop()).toBe(0);
    }
  });
});

describe("a client leaving while its KV is being pushed", () => {
  const BUFFER = 64 << 20;
  let prefill: SimNode;
  let decode: SimNode;

  beforeAll(async () => {
    [prefill, decode] = await Promise.all([
      startNode("prefill", SMALL_LAYOUT),
      startNode("decode", SMALL_LAYOUT, ["--kv-buffer-size", String(BUFFER), "--put-deadline-ms", "20000"]),
    ]);
  });

  afterAll(async () => {
    expect(await stopNodes([prefill, decode])).toEqual([0, 0, 0, 0]);
  });

  it("waits for the push to land, then releases the transfer id on both daemons (Stat: NotFoundError, released)", async () => {
    const proxy = await spawnProxy(["--prefill", prefill.flag, "--decode", decode.flag]);
    // An unsealed entry fills the decode node's buffer: nothing can evict it, so the
    // push of the next request's KV waits for room until the test frees it.
    await decode.daemon.client.put("blocker", "layer.0", Buffer.alloc(BUFFER), { seal: false });
    let blocked = true;
    try {
      const controller = new AbortController();
      const answer = fetch(`${proxy.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "wait for it" }], stream: true }),
        signal: controller.signal,
      });
      answer.catch(() => {});
      // The prefill stored the entry, and the proxy is pushing it.
      let id: string | undefined;
      await eventually(async () => {
        id = (await prefill.daemon.client.list({})).entries[0]?.transferId;
        return id !== undefined;
      }, 30_000);
      expect(id).toMatch(/^kvf-[0-9a-f-]{36}$/);
      await sleep(300);
      controller.abort();
      await rejection(answer);
      await sleep(300);
      // The push is still waiting for room; now let it land.
      await decode.daemon.client.release("blocker");
      blocked = false;
      let reason: string | undefined;
      await eventually(async () => {
        const err = await decode.daemon.client.stat(id!).then(() => undefined, (e: unknown) => e);
        reason = err instanceof NotFoundError ? err.reason : undefined;
        return reason !== undefined;
      }, 30_000);
      // It reached the decode node (the push completed) and the proxy released it there.
      expect(reason).toBe("released");
      expect(await rejection(prefill.daemon.client.stat(id!))).toBeInstanceOf(NotFoundError);
      // The decode instance was never asked.
      expect(await metricsOf(decode.sim.url)).not.toMatch(/kvferry_simulator_requests_total\{[^}]*endpoint="chat"/);
      await expectNoEntries([prefill, decode]);
      const metrics = await metricsOf(proxy.url);
      expect(metricValue(metrics, 'kvferry_proxy_requests_total{outcome="aborted",route="chat",status="499"}')).toBe(1);
    } finally {
      if (blocked) await decode.daemon.client.release("blocker").catch(() => {});
      expect(await proxy.stop()).toBe(0);
    }
  });
});

describe("two decode instances, one killed with requests in flight on it", () => {
  let prefill: SimNode;
  let d1: SimNode;
  let d2: SimNode;
  let reference: SpawnedSimulator;

  beforeAll(async () => {
    const slow = [...SMALL_LAYOUT, "--token-ms", "30"];
    [prefill, d1, d2, reference] = await Promise.all([
      startNode("prefill", SMALL_LAYOUT), startNode("decode", slow), startNode("decode", slow), startReference(SMALL_LAYOUT),
    ]);
  });

  afterAll(async () => {
    await Promise.all([stopNodes([prefill, d1, d2]), reference?.stop()]);
  });

  it("ends its requests with a 502/503 or an SSE error event, and serves the later ones on the other decode", async () => {
    const proxy = await spawnProxy(["--prefill", prefill.flag, "--decode", d1.flag, "--decode", d2.flag]);
    try {
      // 8 streams and 4 whole answers of 60 tokens (~1.8 s each at 30 ms a token).
      const inFlight = mixedCases(12, 7).map((c, i): CompletionCase => {
        const body: Record<string, unknown> = { ...c.body, max_tokens: 60, stream: i < 8 };
        delete body.max_completion_tokens;
        delete body.stream_options;
        return { endpoint: c.endpoint, body };
      });
      const want = await referenceTexts(reference, inFlight);
      let streaming = 0;
      const results = inFlight.map(async (c) => {
        const res = await fetch(proxy.url + pathOf(c.endpoint), {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(c.body),
          signal: AbortSignal.timeout(30_000),
        });
        if (c.body.stream === true && res.status === 200) streaming++;
        let text = "";
        let cut = false;
        try {
          text = await res.text();
        } catch {
          cut = true;
        }
        return { status: res.status, text, cut };
      });
      expect(await eventually(() => streaming === 8, 10_000)).toBe(true);
      d1.sim.child.kill("SIGKILL");
      const outcomes = await Promise.all(results);

      let complete = 0;
      let errorEvents = 0;
      let refused = 0;
      outcomes.forEach((o, i) => {
        const c = inFlight[i]!;
        const label = `request ${i}: ${o.status} ${o.text.slice(-300)}`;
        expect(o.cut, label).toBe(false);
        if (o.status === 200) {
          const events = c.body.stream === true ? sseData(o.text) : [];
          if (c.body.stream === true) expectParsableEvents(o.text);
          const failure = events.find((d) => d !== "[DONE]" && JSON.parse(d).error !== undefined);
          if (failure !== undefined) {
            // Broken off: an OpenAI-style error event after the last whole event, then [DONE] (as vLLM ends a failed stream).
            expect(JSON.parse(failure).error, label).toMatchObject({ type: "upstream_error", code: "stream_interrupted" });
            expect(events.slice(-2), label).toEqual([failure, "[DONE]"]);
            errorEvents++;
          } else {
            expect(generatedText(c.endpoint, c.body.stream === true, { status: 200, headers: new Headers(), text: o.text }), label).toBe(want[i]);
            complete++;
          }
        } else {
          expect([502, 503], label).toContain(o.status);
          expect(JSON.parse(o.text).error.type, label).toMatch(/upstream_error|service_unavailable_error/);
          refused++;
        }
      });
      console.log(`decode killed: ${complete} completed, ${errorEvents} streams ended with an error event, ${refused} answered 502/503`);
      expect(complete).toBeGreaterThan(0);
      expect(errorEvents).toBeGreaterThan(0);

      // Later requests all go to the surviving decode.
      const later = mixedCases(20, 9).map((c): CompletionCase => ({ endpoint: c.endpoint, body: { ...c.body, max_tokens: 3, max_completion_tokens: undefined } }));
      const laterWant = await referenceTexts(reference, later);
      const laterGot = await mapConcurrent(later, 4, async (c) => generatedText(c.endpoint, c.body.stream === true, await sendCase(proxy.url, c)));
      expect(laterGot).toEqual(laterWant);

      const report = await (await fetch(`${proxy.url}/health`, { signal: AbortSignal.timeout(5000) })).json();
      expect(report.status).toBe("ok");
      // The killed one refuses connections: down (never picked); the other serves.
      expect(report.decode.map((d: { health: string }) => d.health)).toEqual(["down", "healthy"]);
      // KV pushed to the dead decode's node was released; nothing is left anywhere.
      await expectNoEntries([prefill, d1, d2]);
    } finally {
      expect(await proxy.stop()).toBe(0);
    }
  });
  it("drains on SIGTERM: a stream in flight ends whole, new connections are refused, open ones get 503 and are closed, and it exits 0", async () => {
    const proxy = await spawnProxy(["--decode", d2.flag, "--prefill", prefill.flag]);
    const c: CompletionCase = { endpoint: "completions", body: { model: MODEL, prompt: "drain me", max_tokens: 80, stream: true } };
    const [want] = await referenceTexts(reference, [c]);
    const res = await fetch(proxy.url + pathOf(c.endpoint), {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(c.body), signal: AbortSignal.timeout(20_000),
    });
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let text = decoder.decode((await reader.read()).value, { stream: true });
    // Two connections in use when SIGTERM comes (a load balancer's kept-alive ones): their
    // requests' headers are not finished yet, so the drain does not close them as idle.
    const healthCheck = await rawConnection(proxy.url);
    healthCheck.write("GET /health HTTP/1.1\r\nHost: proxy\r\n");
    const completion = await rawConnection(proxy.url);
    completion.write("POST /v1/completions HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n");
    await sleep(100);
    proxy.child.kill("SIGTERM");
    await sleep(200);
    const refused = await rejection(fetch(`${proxy.url}/health`, { signal: AbortSignal.timeout(5000) }));
    expect(String((refused.cause as { code?: string } | undefined)?.code ?? refused.message)).toMatch(/ECONNREFUSED|ECONNRESET|other side closed/);
    // While it drains, /health says 503 (the front door stops sending) and a new completion is refused; both close their connection.
    const health = await rawAnswer(healthCheck, "\r\n");
    expect(health.status, health.head).toBe(503);
    expect(health.head).toContain("connection: close");
    expect(JSON.parse(health.body).status).toBe("draining");
    const body = JSON.stringify({ model: MODEL, prompt: "too late" });
    const late = await rawAnswer(completion, `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    expect(late.status, late.head).toBe(503);
    expect(late.head).toContain("connection: close");
    expect(JSON.parse(late.body).error).toMatchObject({ type: "service_unavailable_error", code: "shutting_down" });
    for (let i = 0; i < 1000; i++) {
      const { done, value } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
    expect(generatedText(c.endpoint, true, { status: res.status, headers: res.headers, text })).toBe(want);
    expect(await proxy.exited).toBe(0);
    expect(proxy.logs.map((l) => l.msg)).toContain("draining");
  });
});

describe("a decode instance that stops taking connections between two health checks", () => {
  let prefill: SimNode;
  let d1: SimNode;
  let d2: SimNode;
  let reference: SpawnedSimulator;

  beforeAll(async () => {
    [prefill, d1, d2, reference] = await Promise.all([
      startNode("prefill", SMALL_LAYOUT), startNode("decode", SMALL_LAYOUT), startNode("decode", SMALL_LAYOUT), startReference(SMALL_LAYOUT),
    ]);
  });

  afterAll(async () => {
    await Promise.all([stopNodes([prefill, d1, d2]), reference?.stop()]);
  });

  it("sends the request and its KV on to the other decode when one refuses the connection, and marks it down", async () => {
    // No health check comes during the test: only requests can find out.
    const proxy = await spawnProxy(["--prefill", prefill.flag, "--decode", d1.flag, "--decode", d2.flag, "--health-interval-ms", "600000"]);
    try {
      d1.sim.child.kill("SIGKILL");
      await d1.sim.exited;
      await sleep(100);
      // Taken one at a time, ties go to each decode in turn: d1 is picked at least once.
      const cases = mixedCases(6, 11);
      const want = await referenceTexts(reference, cases);
      const got = await mapConcurrent(cases, 1, async (c) => generatedText(c.endpoint, c.body.stream === true, await sendCase(proxy.url, c)));
      expect(got).toEqual(want);
      const report = await (await fetch(`${proxy.url}/health`, { signal: AbortSignal.timeout(5000) })).json();
      expect(report.decode.map((d: { health: string }) => d.health)).toEqual(["down", "healthy"]);
      expect(report.decode[0].error).toMatch(/ECONNREFUSED/);
      // The KV pushed to d1's node went on from there to d2's: one push more than requests.
      const metrics = await metricsOf(proxy.url);
      expect(metricValue(metrics, 'kvferry_proxy_kv_transfers_total{code="OK",mode="push"}')).toBe(cases.length + 1);
      await expectNoEntries([prefill, d1, d2]);
    } finally {
      expect(await proxy.stop()).toBe(0);
    }
  });
});

describe("two prefills, two decodes (2P2D)", () => {
  let nodes: SimNode[];
  let reference: SpawnedSimulator;

  beforeAll(async () => {
    const started = await Promise.all([
      startNode("prefill", SMALL_LAYOUT), startNode("prefill", SMALL_LAYOUT),
      startNode("decode", SMALL_LAYOUT), startNode("decode", SMALL_LAYOUT), startReference(SMALL_LAYOUT),
    ]);
    nodes = started.slice(0, 4) as SimNode[];
    reference = started[4] as SpawnedSimulator;
  });

  afterAll(async () => {
    const codes = await Promise.all([stopNodes(nodes ?? []), reference?.stop()]);
    expect(codes.flat()).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0]);
  });

  it("answers 200 concurrent requests correctly, uses every instance, and leaves every daemon empty", async () => {
    const [p1, p2, d1, d2] = nodes as [SimNode, SimNode, SimNode, SimNode];
    const proxy = await spawnProxy(["--prefill", p1.flag, "--prefill", p2.flag, "--decode", d1.flag, "--decode", d2.flag]);
    try {
      const cases = mixedCases(200, 3);
      const want = await referenceTexts(reference, cases);
      const started = performance.now();
      const answers = await Promise.all(cases.map((c) => sendCase(proxy.url, c)));
      const seconds = (performance.now() - started) / 1000;
      const got = answers.map((a, i) => generatedText(cases[i]!.endpoint, cases[i]!.body.stream === true, a));
      expect(got).toEqual(want);
      for (const n of nodes) {
        const served = (await metricsOf(n.sim.url))
          .split("\n")
          .filter((l) => l.startsWith("kvferry_simulator_requests_total{") && l.includes('outcome="ok"'))
          .reduce((sum, l) => sum + Number(l.split(" ").pop()), 0);
        expect(served, `${n.sim.url} served nothing`).toBeGreaterThan(0);
      }
      await expectNoEntries(nodes);
      const metrics = await metricsOf(proxy.url);
      const ok = (metricValue(metrics, 'kvferry_proxy_requests_total{outcome="ok",route="completions",status="200"}') ?? 0) +
        (metricValue(metrics, 'kvferry_proxy_requests_total{outcome="ok",route="chat",status="200"}') ?? 0);
      expect(ok).toBe(200);
      console.log(`2P2D: 200 concurrent requests in ${seconds.toFixed(2)} s`);
    } finally {
      expect(await proxy.stop()).toBe(0);
    }
  });
});

describe("no instance available", () => {
  it("answers 503 with an OpenAI-style error when every instance refuses connections, never an empty 200, and /health says 503", async () => {
    const [p, d] = [await freePort(), await freePort()];
    const proxy = await spawnProxy(["--transfer", "none", "--prefill", `http://127.0.0.1:${p}`, "--decode", `http://127.0.0.1:${d}`]);
    try {
      for (const endpoint of ["completions", "chat"] as const) {
        const body = endpoint === "chat" ? { model: MODEL, messages: [{ role: "user", content: "hi" }] } : { model: MODEL, prompt: "hi" };
        const res = await post(proxy.url, pathOf(endpoint), body);
        expect(res.status).toBe(503);
        expect(res.headers.get("content-type")).toBe("application/json");
        expect(JSON.parse(res.text)).toEqual({
          error: { message: expect.stringMatching(/^no decode instance is available: every one is down \(http:\/\/127\.0\.0\.1:\d+: .*ECONNREFUSED/), type: "service_unavailable_error", param: null, code: "no_healthy_instance" },
        });
      }
      const health = await fetch(`${proxy.url}/health`, { signal: AbortSignal.timeout(5000) });
      expect(health.status).toBe(503);
      const report = await health.json();
      expect(report.status).toBe("unavailable");
      expect(report.prefill[0].health).toBe("down");
      expect(report.prefill[0].error).toMatch(/ECONNREFUSED/);
      const models = await fetch(`${proxy.url}/v1/models`, { signal: AbortSignal.timeout(5000) });
      expect(models.status).toBe(503);
    } finally {
      expect(await proxy.stop()).toBe(0);
    }
  });
});

describe("what the proxy sends upstream (a stub engine that records requests)", () => {
  interface Seen {
    path: string;
    headers: IncomingHttpHeaders;
    body: Record<string, unknown>;
    /** The body as it arrived. */
    raw: string;
  }
  let stub: Server;
  let base: string;
  const seen: Seen[] = [];
  /** The prefill node's daemon (the engines are stubs; the proxy only learns who it is). */
  let daemon: PeerDaemon;
  let nodeId: string;

  beforeAll(async () => {
    daemon = await startPeerDaemon({ bufferSize: "16MiB" });
    nodeId = (await daemon.client.serverInfo()).nodeId;
    // Plays a prefill under /p and a decode under /d, as an engine whose own connector
    // moves the KV (--transfer none).
    stub = createServer((req, res) => {
      let raw = "";
      req.on("data", (d) => (raw += d));
      req.on("end", () => {
        if (req.method === "GET") {
          res.writeHead(200, { "content-type": "application/json" }).end('{"status":"ok"}');
          return;
        }
        const body = JSON.parse(raw);
        seen.push({ path: req.url ?? "", headers: req.headers, body, raw });
        const answer = req.url!.startsWith("/p/")
          ? { choices: [{ text: "a" }], kv_transfer_params: { remote_engine_id: "engine-7", remote_block_ids: [1, 2] } }
          : { choices: [{ text: "decoded" }] };
        res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(answer));
      });
    });
    await new Promise<void>((resolve) => stub.listen(0, "127.0.0.1", resolve));
    base = `http://127.0.0.1:${(stub.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    stub.closeAllConnections();
    await new Promise((resolve) => stub.close(resolve));
    await daemon?.stop();
  });

  async function through(proxy: SpawnedProxy, headers: Record<string, string>): Promise<Seen[]> {
    seen.length = 0;
    const res = await post(proxy.url, "/v1/chat/completions", {
      model: "m", messages: [{ role: "user", content: "hi" }], stream: true, stream_options: { include_usage: true }, max_tokens: 9, min_tokens: 3,
    }, headers);
    expect(res.status).toBe(200);
    expect(JSON.parse(res.text).choices[0].text).toBe("decoded");
    expect(seen.map((s) => s.path)).toEqual(["/p/v1/chat/completions", "/d/v1/chat/completions"]);
    return [...seen];
  }

  it("forwards Authorization only with --forward-authorization, and shapes the prefill and decode requests", async () => {
    const args = ["--transfer", "none", "--prefill", `${base}/p`, "--decode", `${base}/d/`];
    // The prefill instance's node has a daemon: both requests name it as the KV's source.
    const plain = await spawnProxy(["--transfer", "none", "--prefill", `${base}/p=${daemon.address}`, "--decode", `${base}/d/`]);
    const forwarding = await spawnProxy([...args, "--forward-authorization"]);
    try {
      const [pre, dec] = await through(plain, { authorization: "Bearer sk-client", "x-request-id": "rid-1" });
      expect(pre!.headers.authorization).toBeUndefined();
      expect(dec!.headers.authorization).toBeUndefined();
      expect(pre!.headers["x-request-id"]).toBe("rid-1");
      expect(dec!.headers["x-request-id"]).toBe("rid-1");

      // The prefill: one token, not streamed, KV kept for a remote decode.
      const transferId = (pre!.body.kv_transfer_params as { transfer_id: string }).transfer_id;
      expect(transferId).toMatch(/^kvf-[0-9a-f-]{36}$/);
      const source = { source_node: daemon.peerAddress, source_node_id: nodeId };
      expect(pre!.body).toEqual({
        model: "m", messages: [{ role: "user", content: "hi" }], stream: false, max_tokens: 1, max_completion_tokens: 1,
        kv_transfer_params: { transfer_id: transferId, do_remote_decode: true, do_remote_prefill: false, ...source },
      });
      // The decode: the original request, with what the prefill returned, the transfer id and the source node.
      expect(dec!.body).toEqual({
        model: "m", messages: [{ role: "user", content: "hi" }], stream: true, stream_options: { include_usage: true }, max_tokens: 9, min_tokens: 3,
        kv_transfer_params: {
          remote_engine_id: "engine-7", remote_block_ids: [1, 2], transfer_id: transferId, do_remote_prefill: true, do_remote_decode: false,
          ...source,
        },
      });

      const [fpre, fdec] = await through(forwarding, { authorization: "Bearer sk-client" });
      expect(fpre!.headers.authorization).toBe("Bearer sk-client");
      expect(fdec!.headers.authorization).toBe("Bearer sk-client");
      // No daemon given for the prefill instance: no source node to name.
      expect(fpre!.body.kv_transfer_params).toEqual({ transfer_id: expect.any(String), do_remote_decode: true, do_remote_prefill: false });
      expect(Object.keys(fdec!.body.kv_transfer_params as object)).not.toContain("source_node");
      // Forwarding never makes one up.
      const [npre, ndec] = await through(forwarding, {});
      expect(npre!.headers.authorization).toBeUndefined();
      expect(ndec!.headers.authorization).toBeUndefined();
    } finally {
      expect(await Promise.all([plain.stop(), forwarding.stop()])).toEqual([0, 0]);
    }
  });

  it("passes the client's bytes through: only the members it sets are rewritten (a seed above 2^53 and 1.0 arrive as sent)", async () => {
    const proxy = await spawnProxy(["--transfer", "none", "--prefill", `${base}/p`, "--decode", `${base}/d/`]);
    try {
      seen.length = 0;
      const sent = '{"model": "m",  "prompt": "\\u00e9t\\u00e9", "seed": 12345678901234567891, "temperature": 1.0, "top_p": 5e-1, "stream": false, "max_tokens": 4}';
      const res = await post(proxy.url, "/v1/completions", sent);
      expect(res.status, res.text).toBe(200);
      const [pre, dec] = seen;
      const kept = '"model": "m","prompt": "\\u00e9t\\u00e9","seed": 12345678901234567891,"temperature": 1.0,"top_p": 5e-1';
      expect(pre!.raw.startsWith(`{${kept},"stream":false,"max_tokens":1,"kv_transfer_params":{`)).toBe(true);
      expect(dec!.raw.startsWith(`{${kept},"stream": false,"max_tokens": 4,"kv_transfer_params":{`)).toBe(true);
    } finally {
      expect(await proxy.stop()).toBe(0);
    }
  });
});

describe("instances that misbehave once (stub engines)", () => {
  type Trouble = "half-event-then-reset" | "silent";
  let stub: Server;
  let base: string;
  /** What the next decode requests do (one each), before answering normally again. */
  const troubles: Trouble[] = [];
  let prefillRequests = 0;

  beforeAll(async () => {
    // A prefill under /p and a decode under /d (--transfer none). The decode streams two
    // events and [DONE], unless a trouble is queued for it.
    stub = createServer((req, res) => {
      req.resume();
      req.on("end", () => {
        if (req.method === "GET") {
          res.writeHead(200, { "content-type": "application/json" }).end('{"status":"ok"}');
          return;
        }
        if (req.url!.startsWith("/p/")) {
          prefillRequests++;
          res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ choices: [{ text: "a" }], kv_transfer_params: {} }));
          return;
        }
        const trouble = troubles.shift();
        res.writeHead(200, { "content-type": "text/event-stream" });
        res.write('data: {"choices":[{"text":"one"}]}\n\n');
        if (trouble === "half-event-then-reset") {
          res.write('data: {"choices":[{"te');
          setTimeout(() => req.socket.resetAndDestroy(), 200);
        } else if (trouble === undefined) {
          res.end('data: {"choices":[{"text":" two"}]}\n\ndata: [DONE]\n\n');
        }
        // silent: nothing more, until the proxy gives up and closes the connection.
      });
    });
    await new Promise<void>((resolve) => stub.listen(0, "127.0.0.1", resolve));
    base = `http://127.0.0.1:${(stub.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    stub.closeAllConnections();
    await new Promise((resolve) => stub.close(resolve));
  });

  const streamed = { model: MODEL, prompt: "hi", stream: true };

  async function expectServed(proxy: SpawnedProxy): Promise<void> {
    const next = await post(proxy.url, "/v1/completions", streamed);
    expect(next.status, next.text).toBe(200);
    expect(generatedText("completions", true, next)).toBe("one two");
  }

  for (const trouble of ["half-event-then-reset", "silent"] as const) {
    it(`a single decode whose stream breaks off (${trouble}): the client gets whole events, an error event and [DONE]; the next request is served`, async () => {
      const proxy = await spawnProxy(["--transfer", "none", "--prefill", `${base}/p`, "--decode", `${base}/d`, "--decode-timeout-ms", "1000"]);
      try {
        troubles.push(trouble);
        const broken = await post(proxy.url, "/v1/completions", streamed);
        expect(broken.status).toBe(200);
        expectParsableEvents(broken.text);
        const events = sseData(broken.text);
        expect(events.at(-1)).toBe("[DONE]");
        expect(JSON.parse(events[0]!).choices[0].text).toBe("one");
        expect(JSON.parse(events.at(-2)!).error).toMatchObject({ type: "upstream_error", code: "stream_interrupted" });
        expect(events).toHaveLength(3);
        // One broken stream does not take the only decode out of service (no 503).
        await expectServed(proxy);
        await expectServed(proxy);
        const report = await (await fetch(`${proxy.url}/health`, { signal: AbortSignal.timeout(5000) })).json();
        expect(report.decode[0].health).toBe("healthy");
      } finally {
        expect(await proxy.stop()).toBe(0);
      }
    });
  }

  it("answers 503 without a prefill when no decode instance is reachable", async () => {
    const proxy = await spawnProxy(["--transfer", "none", "--prefill", `${base}/p`, "--decode", `http://127.0.0.1:${await freePort()}`]);
    try {
      const before = prefillRequests;
      const res = await post(proxy.url, "/v1/completions", { model: MODEL, prompt: "hi" });
      expect(res.status).toBe(503);
      expect(JSON.parse(res.text).error).toMatchObject({ type: "service_unavailable_error", code: "no_healthy_instance" });
      expect(JSON.parse(res.text).error.message).toMatch(/^no decode instance is available/);
      expect(prefillRequests).toBe(before);
    } finally {
      expect(await proxy.stop()).toBe(0);
    }
  });

  it("refuses JSON nested too deep with 400, and answers a client's oversized headers 431 and a malformed request 400", async () => {
    const proxy = await spawnProxy(["--transfer", "none", "--prefill", `${base}/p`, "--decode", `${base}/d`]);
    try {
      const depth = 200_000;
      const deep = await post(proxy.url, "/v1/completions", `{"model":"m","prompt":${"[".repeat(depth)}${"]".repeat(depth)}}`);
      expect(deep.status, deep.text).toBe(400);
      expect(JSON.parse(deep.text).error).toMatchObject({ type: "invalid_request_error", code: "invalid_json" });
      expect(JSON.parse(deep.text).error.message).toMatch(/nests arrays and objects more than \d+ deep/);
      // Nesting within the bound, and brackets inside strings, are fine.
      const fine = await post(proxy.url, "/v1/completions", { model: "m", prompt: "[[[[{{{{", stream: true, extra: [[[[{ a: [1] }]]]] });
      expect(generatedText("completions", true, fine)).toBe("one two");

      const big = await rawAnswer(await rawConnection(proxy.url), `GET /health HTTP/1.1\r\nHost: proxy\r\nX-Big: ${"a".repeat(64 << 10)}\r\n\r\n`);
      expect(big.status, big.head).toBe(431);
      const garbage = await rawAnswer(await rawConnection(proxy.url), "NOT HTTP AT ALL\r\n\r\n");
      expect(garbage.status, garbage.head).toBe(400);
      // Still serving.
      await expectServed(proxy);
    } finally {
      expect(await proxy.stop()).toBe(0);
    }
  });
});
