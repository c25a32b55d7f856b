// Helpers of the proxy tests: `kvferry proxy` and `kvferry simulate` as real processes,
// daemons for their nodes, OpenAI requests, and the generated text of an answer (JSON or
// a Server-Sent Events stream) so that two answers can be compared.
import { expect } from "vitest";
import { spawnProxy as spawnProxyProcess, type SpawnedProxy } from "../../src/proxy/spawn.js";
import { spawnSimulator, type SpawnedSimulator } from "../../src/simulator/spawn.js";
import { sleep } from "./daemon.js";
import { startPeerDaemon, type PeerDaemon } from "./transfer.js";

export type { SpawnedProxy };

/** Runs `kvferry proxy --listen 127.0.0.1:0 ...args` and waits for its readiness line. */
export function spawnProxy(args: string[]): Promise<SpawnedProxy> {
  return spawnProxyProcess(["--listen", "127.0.0.1:0", ...args]);
}

/** A small KV layout (4 KiB per token) for tests that need many requests more than big KV. */
export const SMALL_LAYOUT = ["--layers", "8", "--kv-heads", "2", "--head-dim", "64"];

/** One simulated node: its daemon and the simulator on it. */
export interface SimNode {
  readonly daemon: PeerDaemon;
  readonly sim: SpawnedSimulator;
  /** What --prefill / --decode take: URL=DAEMON. */
  readonly flag: string;
}

/** A daemon and a `kvferry simulate --role ROLE` that uses it. */
export async function startNode(role: "prefill" | "decode", simArgs: string[] = [], daemonArgs: string[] = []): Promise<SimNode> {
  const daemon = await startPeerDaemon({ bufferSize: "256MiB", args: daemonArgs });
  try {
    const sim = await spawnSimulator(["--role", role, "--listen", "127.0.0.1:0", "--daemon", daemon.address, ...simArgs]);
    return { daemon, sim, flag: `${sim.url}=${daemon.address}` };
  } catch (err) {
    await daemon.stop();
    throw err;
  }
}

/** The non-disaggregated reference. */
export function startReference(simArgs: string[] = []): Promise<SpawnedSimulator> {
  return spawnSimulator(["--role", "both", "--listen", "127.0.0.1:0", ...simArgs]);
}

/** Stops nodes in parallel; returns every exit code (simulators, then daemons). */
export async function stopNodes(nodes: (SimNode | undefined)[]): Promise<(number | null)[]> {
  const live = nodes.filter((n): n is SimNode => n !== undefined);
  const sims = await Promise.all(live.map((n) => n.sim.stop()));
  const daemons = await Promise.all(live.map((n) => n.daemon.stop()));
  return [...sims, ...daemons];
}

export type Endpoint = "completions" | "chat";

/** A request to send, and where. */
export interface CompletionCase {
  endpoint: Endpoint;
  body: Record<string, unknown>;
}

export function pathOf(endpoint: Endpoint): string {
  return endpoint === "chat" ? "/v1/chat/completions" : "/v1/completions";
}

export interface Answer {
  status: number;
  headers: Headers;
  text: string;
}

/** POSTs JSON and reads the whole answer (bounded by timeoutMs). */
export async function post(
  base: string, path: string, body: unknown, headers: Record<string, string> = {}, timeoutMs = 30_000,
): Promise<Answer> {
  const res = await fetch(base + path, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  return { status: res.status, headers: res.headers, text: await res.text() };
}

export function sendCase(base: string, c: CompletionCase, headers: Record<string, string> = {}): Promise<Answer> {
  return post(base, pathOf(c.endpoint), c.body, headers);
}

/** The data payloads of an event stream, in order ("[DONE]" included). */
export function sseData(text: string): string[] {
  return text
    .split(/\r?\n\r?\n/)
    .map((event) => event.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n"))
    .filter((d) => d !== "");
}

/**
 * The generated text of a successful answer: choices[0].text or .message.content (JSON),
 * or the concatenated text / delta.content of a stream that ended with [DONE].
 */
export function generatedText(endpoint: Endpoint, stream: boolean, answer: Answer): string {
  expect(answer.status, answer.text.slice(0, 500)).toBe(200);
  if (!stream) {
    const choice = JSON.parse(answer.text).choices[0];
    return endpoint === "chat" ? choice.message.content : choice.text;
  }
  const events = sseData(answer.text);
  expect(events.at(-1), `stream did not end with [DONE]: ${answer.text.slice(-300)}`).toBe("[DONE]");
  let out = "";
  for (const data of events.slice(0, -1)) {
    const chunk = JSON.parse(data);
    expect(chunk.error, data).toBeUndefined();
    const choice = chunk.choices?.[0];
    if (choice === undefined) continue;
    out += endpoint === "chat" ? (choice.delta?.content ?? "") : (choice.text ?? "");
  }
  return out;
}

const WORDS = ["ferry", "river", "cache", "layer", "prompt", "token", "harbour", "light", "morning", "node", "memory", "quiet"];

/**
 * `count` different requests: completions and chat, streamed or not (some with
 * include_usage), prompts of 1 to ~60 words, 1 to 40 tokens asked.
 */
export function mixedCases(count: number, seed = 1): CompletionCase[] {
  const cases: CompletionCase[] = [];
  for (let i = 0; i < count; i++) {
    const n = 1 + ((i * 7 + seed * 13) % 60);
    const words = Array.from({ length: n }, (_, k) => WORDS[(i + k * 5 + seed) % WORDS.length]).join(" ");
    const prompt = `request ${seed}.${i}: ${words}`;
    const endpoint: Endpoint = i % 2 === 0 ? "completions" : "chat";
    const stream = i % 4 >= 2;
    const maxTokens = 1 + ((i * 11 + seed) % 40);
    const body: Record<string, unknown> =
      endpoint === "chat"
        ? { model: "kvferry-sim-7b", messages: [{ role: "system", content: "be brief" }, { role: "user", content: prompt }] }
        : { model: "kvferry-sim-7b", prompt };
    if (endpoint === "chat" && i % 3 === 0) body.max_completion_tokens = maxTokens;
    else body.max_tokens = maxTokens;
    if (stream) {
      body.stream = true;
      if (i % 8 >= 6) body.stream_options = { include_usage: true };
    }
    cases.push({ endpoint, body });
  }
  return cases;
}

/** Runs `fn` over the items with at most `concurrency` at once; results in item order. */
export async function mapConcurrent<T, R>(items: T[], concurrency: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!, i);
      }
    }),
  );
  return out;
}

/** Polls `check` every 50 ms until it returns true or `timeoutMs` passes; returns its last value. */
export async function eventually(check: () => Promise<boolean> | boolean, timeoutMs = 10_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > deadline) return false;
    await sleep(50);
  }
}

/** One sample of a Prometheus text exposition (the first series whose line starts with `prefix`). */
export function metricValue(text: string, prefix: string): number | undefined {
  const line = text.split("\n").find((l) => l.startsWith(prefix));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(" ") + 1));
}
