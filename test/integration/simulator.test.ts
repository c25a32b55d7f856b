// `kvferry simulate`, the engine simulator, as real processes in front of real daemons:
// a prefill → decode pair through a daemon writes exactly what a `both` instance writes;
// the KV lands in the daemon as documented; a missing or wrong KV fails loudly; the
// OpenAI wire format (JSON and Server-Sent Events) and its errors; aborted streams.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EntryState } from "../../src/gen/kvferry/v1/kvferry.js";
import { NotFoundError } from "../../src/errors.js";
import { DEFAULT_LAYOUT, layerBytes, layerSize, partName, tokenLayerBytes } from "../../src/simulator/kv.js";
import { spawnSimulator, type SpawnedSimulator } from "../../src/simulator/spawn.js";
import { chatPrompt, tokenize } from "../../src/simulator/tokenizer.js";
import { expectSameBytes, rejection, runCli, sleep, startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { startPeerDaemon, type PeerDaemon } from "../helpers/transfer.js";

const KV_WAIT_MS = 1500;
const LAYERS = DEFAULT_LAYOUT.layers;

type Json = Record<string, any>;

interface Reply {
  status: number;
  headers: Headers;
  json: Json;
}

async function post(sim: SpawnedSimulator, path: string, body: unknown, headers: Record<string, string> = {}): Promise<Reply> {
  const res = await fetch(`${sim.url}${path}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(20_000),
  });
  const text = await res.text();
  let json: Json;
  try {
    json = JSON.parse(text);
  } catch {
    throw new Error(`${path}: status ${res.status}, not JSON: ${text.slice(0, 300)}`);
  }
  return { status: res.status, headers: res.headers, json };
}

async function getJson(sim: SpawnedSimulator, path: string, method = "GET"): Promise<Reply> {
  const res = await fetch(`${sim.url}${path}`, { method, signal: AbortSignal.timeout(10_000) });
  const text = await res.text();
  return { status: res.status, headers: res.headers, json: text.startsWith("{") ? JSON.parse(text) : { text } };
}

/**
 * Reads a Server-Sent Events body chunk by chunk as it arrives: every event must be one
 * `data: …` line followed by a blank line; returns the parsed JSON events and whether the
 * stream ended with `data: [DONE]` (and nothing after it).
 */
async function readSse(res: Response, stopAfter = Infinity): Promise<{ events: Json[]; done: boolean }> {
  expect(res.headers.get("content-type")).toMatch(/^text\/event-stream/);
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  const events: Json[] = [];
  let buffer = "";
  let done = false;
  for (;;) {
    const { value, done: ended } = await reader.read();
    if (ended) break;
    buffer += decoder.decode(value, { stream: true });
    let end: number;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      expect(done, `an event after [DONE]: ${event}`).toBe(false);
      expect(event, "an SSE event is one data line").toMatch(/^data: [^\n]*$/);
      const data = event.slice("data: ".length);
      if (data === "[DONE]") done = true;
      else events.push(JSON.parse(data));
      if (events.length >= stopAfter) {
        await reader.cancel();
        return { events, done };
      }
    }
  }
  expect(buffer, "bytes after the last event").toBe("");
  return { events, done };
}

async function postStream(sim: SpawnedSimulator, path: string, body: Json, signal?: AbortSignal): Promise<Response> {
  const res = await fetch(`${sim.url}${path}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...body, stream: true }),
    signal: signal ?? AbortSignal.timeout(20_000),
  });
  if (res.status !== 200) throw new Error(`${path}: status ${res.status}: ${await res.text()}`);
  return res;
}

/** The generated text of a completion or chat answer, streamed or not. */
async function completionText(sim: SpawnedSimulator, path: string, body: Json, stream: boolean): Promise<{ text: string; json: Json }> {
  if (!stream) {
    const r = await post(sim, path, body);
    if (r.status !== 200) throw new Error(`${path} on ${sim.address}: ${r.status} ${JSON.stringify(r.json)}`);
    const choice = r.json.choices[0];
    return { text: choice.text ?? choice.message.content, json: r.json };
  }
  const { events, done } = await readSse(await postStream(sim, path, body));
  expect(done).toBe(true);
  const text = events.map((e) => e.choices[0]?.text ?? e.choices[0]?.delta?.content ?? "").join("");
  return { text, json: events[0]! };
}

/** Metric value by name and label fragment, from /metrics text. */
async function metric(sim: SpawnedSimulator, name: string, labels = ""): Promise<number> {
  const { json } = await getJson(sim, "/metrics");
  const line = (json.text as string).split("\n").find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line === undefined ? 0 : Number(line.split(" ").pop());
}

const PROMPTS = [
  "",
  "Hello",
  "The quick brown fox jumps over the lazy dog, twice.",
  Array.from({ length: 300 }, (_, i) => `word${i % 37}`).join(" "),
];
const CHATS = [
  [{ role: "user", content: "Hi there!" }],
  [
    { role: "system", content: "You are a ferry." },
    { role: "user", content: "Where do you go?" },
    { role: "assistant", content: "Across." },
    { role: "user", content: "And back?" },
  ],
];

describe("kvferry simulate", () => {
  let daemon: TestDaemon;
  let nodeId: string;
  let prefill: SpawnedSimulator;
  let decode: SpawnedSimulator;
  let both: SpawnedSimulator;
  let seq = 0;
  const transferId = (label: string) => `sim-it-${label}-${++seq}`;

  beforeAll(async () => {
    daemon = await startDaemon(["--kv-buffer-size", "512MiB"]);
    nodeId = (await daemon.client.serverInfo()).nodeId;
    const common = ["--listen", "127.0.0.1:0", "--log-level", "info"];
    [prefill, decode, both] = await Promise.all([
      spawnSimulator([...common, "--role", "prefill", "--daemon", daemon.address]),
      spawnSimulator([...common, "--role", "decode", "--daemon", daemon.address, "--kv-wait-ms", String(KV_WAIT_MS)]),
      spawnSimulator([...common, "--role", "both"]),
    ]);
  });

  afterAll(async () => {
    await Promise.all([prefill?.stop(5000), decode?.stop(5000), both?.stop(5000)]);
    await daemon?.stop();
  });

  /** Prefill on `prefill`, then decode on `decodeSim` with what the prefill answered. */
  async function disaggregated(path: string, body: Json, stream: boolean, decodeSim = decode) {
    const id = transferId("pd");
    const p = await post(prefill, path, { ...body, max_tokens: 1, kv_transfer_params: { do_remote_decode: true, transfer_id: id } });
    expect(p.status, JSON.stringify(p.json)).toBe(200);
    const d = await completionText(decodeSim, path, { ...body, kv_transfer_params: p.json.kv_transfer_params }, stream);
    return { id, prefill: p.json, decode: d };
  }

  it("a decode after a prefill writes exactly what a both instance writes (completions and chat, streamed or not)", async () => {
    const outputs = new Set<string>();
    const cases: { path: string; body: Json }[] = [
      ...PROMPTS.map((prompt) => ({ path: "/v1/completions", body: { prompt, max_tokens: 12 } })),
      ...CHATS.map((messages) => ({ path: "/v1/chat/completions", body: { messages, max_completion_tokens: 12 } })),
    ];
    for (const { path, body } of cases) {
      for (const stream of [false, true]) {
        const reference = await completionText(both, path, body, stream);
        const pd = await disaggregated(path, body, stream);
        const label = `${path} ${JSON.stringify(body).slice(0, 60)} stream=${stream}`;
        expect(pd.decode.text, label).toBe(reference.text);
        expect(reference.text.split(" ").length - 1, `${label}: 12 tokens`).toBe(12);
        // The prefill's single token is the first of the same generation.
        const first = pd.prefill.choices[0].text ?? pd.prefill.choices[0].message.content;
        expect(pd.prefill.usage.completion_tokens, label).toBe(1);
        expect(reference.text.startsWith(first), `${label}: prefill token ${JSON.stringify(first)}`).toBe(true);
        expect(pd.prefill.kv_transfer_params, label).toMatchObject({
          transfer_id: pd.id, do_remote_prefill: true, do_remote_decode: false, remote_node: nodeId,
        });
        // The decode consumed the entry.
        const gone = await rejection(daemon.client.stat(pd.id));
        expect(gone).toBeInstanceOf(NotFoundError);
        expect((gone as unknown as NotFoundError).reason).toBe("consumed");
        outputs.add(reference.text);
      }
    }
    // Different prompts say different things (the generation is not a constant).
    expect(outputs.size).toBe(cases.length);
  });

  it("puts the prompt's KV as one sealed entry with a part layer.N of tokens × 2 × kv_heads × head_dim × dtype bytes per layer", async () => {
    const id = transferId("layout");
    const prompt = "Layer by layer, the ferry carries the cache across.";
    const r = await post(prefill, "/v1/completions", { prompt, max_tokens: 1, kv_transfer_params: { do_remote_decode: true, transfer_id: id, extra_field: 7 } });
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    expect(r.json.kv_transfer_params.extra_field, "fields the simulator does not know are kept").toBe(7);
    const tokens = tokenize(prompt);
    expect(r.json.usage.prompt_tokens).toBe(tokens.length);
    const perLayer = tokens.length * 2 * DEFAULT_LAYOUT.kvHeads * DEFAULT_LAYOUT.headDim * DEFAULT_LAYOUT.dtypeBytes;
    expect(perLayer).toBe(tokens.length * 4096);
    const info = await daemon.client.stat(id);
    expect(info.state).toBe(EntryState.ENTRY_STATE_SEALED);
    expect([...info.parts].sort((a, b) => a.name.localeCompare(b.name, "en", { numeric: true }))).toEqual(
      Array.from({ length: LAYERS }, (_, i) => ({ name: `layer.${i}`, size: perLayer, complete: true })),
    );
    expect(info.bytes).toBe(LAYERS * perLayer);
    // Every byte is the documented function of (token ids, layer).
    const got = await daemon.client.getStream(id, { waitMs: 0 });
    for (const i of [0, 17, LAYERS - 1]) expectSameBytes(got.parts.get(`layer.${i}`), layerBytes(DEFAULT_LAYOUT, tokens, i), `layer.${i}`);
    expect(Buffer.compare(got.parts.get("layer.0")!, got.parts.get("layer.1")!)).not.toBe(0);
    expect(await metric(prefill, "kvferry_simulator_kv_bytes_put_total")).toBeGreaterThanOrEqual(LAYERS * perLayer);
    await daemon.client.release(id);
  });

  it("a decode whose KV never arrives answers 504 within --kv-wait-ms, naming the transfer id", async () => {
    const id = transferId("late");
    const started = Date.now();
    const r = await post(decode, "/v1/completions", { prompt: "Nobody prefilled this.", kv_transfer_params: { do_remote_prefill: true, transfer_id: id } });
    const elapsed = Date.now() - started;
    expect(r.status, JSON.stringify(r.json)).toBe(504);
    expect(r.json.error.message).toContain(id);
    expect(r.json.error.message).toMatch(/did not arrive within 1500 ms/);
    expect(r.json.error.code).toBe("kv_timeout");
    expect(elapsed).toBeGreaterThanOrEqual(KV_WAIT_MS - 50);
    expect(elapsed).toBeLessThan(KV_WAIT_MS + 3000);
    // And an error in the decode's log (the line may trail the response by a moment).
    const logged = () => decode.logs.some((l) => l.level === 50 && l.msg === "KV transfer failed" && String(l.err).includes(id));
    for (const until = Date.now() + 2000; !logged() && Date.now() < until; ) await sleep(20);
    expect(logged()).toBe(true);
  });

  it("a decode whose KV is wrong answers 500 naming the transfer id, the layer and the offset", async () => {
    const prompt = "A corrupted cache must never pass unnoticed.";
    const tokens = tokenize(prompt);
    const request = (id: string) =>
      post(decode, "/v1/completions", { prompt, kv_transfer_params: { do_remote_prefill: true, transfer_id: id } });

    // One flipped byte in layer 7.
    const flipped = transferId("flipped");
    for (let i = 0; i < LAYERS; i++) {
      const bytes = layerBytes(DEFAULT_LAYOUT, tokens, i);
      if (i === 7) bytes[5000] ^= 0x40;
      await daemon.client.put(flipped, partName(i), bytes, { seal: i === LAYERS - 1 });
    }
    let r = await request(flipped);
    expect(r.status, JSON.stringify(r.json)).toBe(500);
    expect(r.json.error.message).toContain(flipped);
    expect(r.json.error.message).toMatch(/layer 7 \(part layer\.7\) differs .* at byte offset 5000 \(token 1,/);
    expect(r.json.error.code).toBe("kv_mismatch");

    // The KV of another prompt: every layer has the wrong size.
    const other = transferId("other");
    const otherTokens = tokenize("Another prompt entirely, longer than the first one.");
    for (let i = 0; i < LAYERS; i++) {
      await daemon.client.put(other, partName(i), layerBytes(DEFAULT_LAYOUT, otherTokens, i), { seal: i === LAYERS - 1 });
    }
    r = await request(other);
    expect(r.status).toBe(500);
    expect(r.json.error.message).toContain(other);
    expect(r.json.error.message).toMatch(/layer 0 \(part layer\.0\) is \d+ bytes, expected \d+/);

    // A layer missing.
    const short = transferId("short");
    for (let i = 0; i < LAYERS - 1; i++) {
      await daemon.client.put(short, partName(i), layerBytes(DEFAULT_LAYOUT, tokens, i), { seal: i === LAYERS - 2 });
    }
    r = await request(short);
    expect(r.status).toBe(500);
    expect(r.json.error.message).toContain(short);
    expect(r.json.error.message).toContain(`missing layer.${LAYERS - 1}`);

    // The same prompt's exact KV, put by hand, is accepted: the check is not refusing everything.
    const exact = transferId("exact");
    for (let i = 0; i < LAYERS; i++) {
      await daemon.client.put(exact, partName(i), layerBytes(DEFAULT_LAYOUT, tokens, i), { seal: i === LAYERS - 1 });
    }
    r = await request(exact);
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    expect(r.json.choices[0].text).toBe((await completionText(both, "/v1/completions", { prompt }, false)).text);
    expect(await metric(decode, "kvferry_simulator_requests_total", 'outcome="failed"')).toBeGreaterThanOrEqual(3);
  });

  it("prefill and decode instances refuse requests without kv_transfer_params with 400, explaining their role", async () => {
    const p = await post(prefill, "/v1/completions", { prompt: "Hi" });
    expect(p.status).toBe(400);
    expect(p.json.error.param).toBe("kv_transfer_params");
    expect(p.json.error.message).toMatch(/prefill instance.*only computes KV/);
    const d = await post(decode, "/v1/chat/completions", { messages: [{ role: "user", content: "Hi" }] });
    expect(d.status).toBe(400);
    expect(d.json.error.message).toMatch(/decode instance/);
    const wrongWay = await post(prefill, "/v1/completions", { prompt: "Hi", kv_transfer_params: { do_remote_prefill: true, transfer_id: "x" } });
    expect(wrongWay.status).toBe(400);
    expect(wrongWay.json.error.param).toBe("kv_transfer_params.do_remote_decode");
    const noId = await post(decode, "/v1/completions", { prompt: "Hi", kv_transfer_params: { do_remote_prefill: true } });
    expect(noId.status).toBe(400);
    expect(noId.json.error.param).toBe("kv_transfer_params.transfer_id");
  });

  it("a prefill that names no transfer id uses its request id, which the decode can use", async () => {
    const body = { prompt: "No id given by the proxy.", max_tokens: 5 };
    const p = await post(prefill, "/v1/completions", { ...body, kv_transfer_params: { do_remote_decode: true } });
    expect(p.status, JSON.stringify(p.json)).toBe(200);
    expect(p.json.kv_transfer_params.transfer_id).toBe(p.json.id);
    const d = await post(decode, "/v1/completions", { ...body, kv_transfer_params: p.json.kv_transfer_params });
    expect(d.json.choices[0].text).toBe((await completionText(both, "/v1/completions", body, false)).text);
  });

  it("answers OpenAI-style errors: 400 bad JSON, missing prompt, bad max_tokens; 404 unknown path or model; 405; 413", async () => {
    const cases: [Promise<Reply>, number, string | null, RegExp][] = [
      [post(both, "/v1/completions", "{not json"), 400, null, /not valid JSON/],
      [post(both, "/v1/completions", { max_tokens: 3 }), 400, "prompt", /^prompt: required/],
      [post(both, "/v1/chat/completions", { prompt: "x" }), 400, "messages", /^messages: required/],
      [post(both, "/v1/completions", { prompt: "x", max_tokens: -1 }), 400, "max_tokens", /max_tokens: expected an integer/],
      [post(both, "/v1/completions", { prompt: "x", max_tokens: "5" }), 400, "max_tokens", /max_tokens/],
      [post(both, "/v1/chat/completions", { messages: [{ role: "user", content: "x" }], max_completion_tokens: 1.5 }), 400, "max_completion_tokens", /max_completion_tokens/],
      [post(both, "/v1/completions", { prompt: ["a", "b"] }), 400, "prompt", /array of one string/],
      [post(both, "/v1/completions", { prompt: "x", model: "gpt-4" }), 404, "model", /"gpt-4" does not exist/],
      [post(both, "/v1/embeddings", { input: "x" }), 404, null, /no such endpoint/],
      [getJson(both, "/v1/chat/completions"), 405, null, /use POST/],
      [getJson(both, "/v1/models", "POST"), 405, null, /use GET/],
      [post(both, "/v1/completions", { prompt: "x".repeat(5 << 20) }), 413, null, /larger than .* 4194304 bytes/],
      [post(both, "/v1/completions", { prompt: "a ".repeat(40_000) }), 400, "prompt", /maximum context length is 32768 tokens/],
    ];
    for (const [reply, status, param, message] of cases) {
      const r = await reply;
      expect(r.status, JSON.stringify(r.json)).toBe(status);
      expect(Object.keys(r.json.error).sort()).toEqual(["code", "message", "param", "type"]);
      expect(r.json.error.param).toBe(param);
      expect(r.json.error.message).toMatch(message);
    }
    // The model named is accepted, and the simulator still serves after all that.
    const ok = await post(both, "/v1/completions", { prompt: "x", model: "kvferry-sim-7b", max_tokens: 2 });
    expect(ok.status).toBe(200);
    expect(ok.json.model).toBe("kvferry-sim-7b");
  });

  it("streams Server-Sent Events in OpenAI's format, chunk by chunk, ending in [DONE]", async () => {
    // Completions: one chunk per token, finish_reason on the last, usage chunk when asked.
    const res = await postStream(both, "/v1/completions", { prompt: "Stream me", max_tokens: 5, stream_options: { include_usage: true } });
    const { events, done } = await readSse(res);
    expect(done).toBe(true);
    expect(events).toHaveLength(6);
    const id = events[0]!.id;
    expect(id).toMatch(/^cmpl-[0-9a-f]{32}$/);
    for (const [i, e] of events.slice(0, 5).entries()) {
      expect(e).toMatchObject({ id, object: "text_completion", model: "kvferry-sim-7b", usage: null });
      expect(typeof e.created).toBe("number");
      expect(e.choices).toHaveLength(1);
      expect(e.choices[0]).toMatchObject({ index: 0, finish_reason: i === 4 ? "length" : null });
      expect(e.choices[0].text).toMatch(/^ \S+$/);
    }
    expect(events[5]).toMatchObject({ id, choices: [], usage: { prompt_tokens: 3, completion_tokens: 5, total_tokens: 8 } });

    // Chat: a role chunk, one delta per token, a closing chunk with finish_reason; no usage unless asked.
    const chat = await readSse(await postStream(both, "/v1/chat/completions", { messages: [{ role: "user", content: "Hi" }], max_tokens: 3 }));
    expect(chat.done).toBe(true);
    expect(chat.events).toHaveLength(5);
    expect(chat.events[0]!.id).toMatch(/^chatcmpl-[0-9a-f]{32}$/);
    expect(chat.events.every((e) => e.object === "chat.completion.chunk" && e.id === chat.events[0]!.id && !("usage" in e))).toBe(true);
    expect(chat.events[0]!.choices[0]).toMatchObject({ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null });
    for (const e of chat.events.slice(1, 4)) expect(e.choices[0].delta.content).toMatch(/^ \S+$/);
    expect(chat.events[4]!.choices[0]).toEqual({ index: 0, delta: {}, logprobs: null, finish_reason: "length" });
    // The same text as the non-streamed answer.
    const whole = await post(both, "/v1/chat/completions", { messages: [{ role: "user", content: "Hi" }], max_tokens: 3 });
    expect(chat.events.slice(1, 4).map((e) => e.choices[0].delta.content).join("")).toBe(whole.json.choices[0].message.content);
    expect(whole.json.usage).toEqual({ prompt_tokens: tokenize(chatPrompt([{ role: "user", content: "Hi" }])).length, completion_tokens: 3, total_tokens: tokenize(chatPrompt([{ role: "user", content: "Hi" }])).length + 3 });
  });

  it("a client that aborts mid-stream stops the generation and leaves the simulator serving", async () => {
    const slow = await spawnSimulator(["--listen", "127.0.0.1:0", "--role", "both", "--token-ms", "50"]);
    try {
      const controller = new AbortController();
      const timeout = setTimeout(() => controller.abort(), 15_000);
      const res = await postStream(slow, "/v1/completions", { prompt: "A long answer", max_tokens: 400 }, controller.signal);
      const { events } = await readSse(res, 3);
      expect(events).toHaveLength(3);
      controller.abort();
      clearTimeout(timeout);
      // The server notices, counts the request as aborted and stops generating.
      const until = Date.now() + 5000;
      while ((await metric(slow, "kvferry_simulator_requests_total", 'outcome="aborted"')) < 1 && Date.now() < until) await sleep(50);
      expect(await metric(slow, "kvferry_simulator_requests_total", 'outcome="aborted"')).toBe(1);
      const generated = await metric(slow, "kvferry_simulator_tokens_generated_total");
      expect(generated).toBeGreaterThanOrEqual(3);
      expect(generated).toBeLessThan(20);
      await sleep(300);
      expect(await metric(slow, "kvferry_simulator_tokens_generated_total")).toBe(generated);
      // Still serving.
      expect((await getJson(slow, "/health")).json).toEqual({ status: "ok" });
      const after = await post(slow, "/v1/completions", { prompt: "Still there?", max_tokens: 2 });
      expect(after.status).toBe(200);
      expect(slow.child.exitCode).toBeNull();
    } finally {
      expect(await slow.stop(5000)).toBe(0);
    }
  });

  it("serves the model it is started with (--model): listed in /v1/models, answered by name or with none, any other a 404 as vLLM answers", async () => {
    const name = "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4";
    const sim = await spawnSimulator(["--listen", "127.0.0.1:0", "--role", "both", "--model", name]);
    try {
      const models = await getJson(sim, "/v1/models");
      expect(models.json.data.map((m: Json) => m.id)).toEqual([name]);
      const body = { prompt: "San Francisco is a", max_tokens: 3 };
      const named = await post(sim, "/v1/completions", { ...body, model: name });
      const unnamed = await post(sim, "/v1/completions", body);
      expect(named.status, JSON.stringify(named.json)).toBe(200);
      expect(unnamed.status, JSON.stringify(unnamed.json)).toBe(200);
      expect(named.json.model).toBe(name);
      expect(unnamed.json.model).toBe(name);
      expect(unnamed.json.choices[0].text).toBe(named.json.choices[0].text);
      // vLLM 0.33's body for an unknown model: 404, type NotFoundError, param model, code 404.
      for (const [endpoint, other] of [["/v1/completions", { ...body, model: "kvferry-sim-7b" }], ["/v1/chat/completions", { model: "Qwen/Qwen2.5-7B", messages: [{ role: "user", content: "hi" }] }]] as const) {
        const r = await post(sim, endpoint, other);
        expect(r.status, JSON.stringify(r.json)).toBe(404);
        expect(r.json.error).toEqual({
          message: `model: the model ${JSON.stringify(other.model)} does not exist; this simulator serves ${JSON.stringify(name)} (start it with --model NAME to serve another)`,
          type: "NotFoundError",
          param: "model",
          code: 404,
        });
      }
    } finally {
      expect(await sim.stop(5000)).toBe(0);
    }
  });

  it("serves /v1/models owned by kvferry-simulator, /health, and echoes X-Request-Id", async () => {
    const models = await getJson(both, "/v1/models");
    expect(models.json).toMatchObject({ object: "list", data: [{ id: "kvferry-sim-7b", object: "model", owned_by: "kvferry-simulator" }] });
    expect((await getJson(decode, "/health")).json).toEqual({ status: "ok" });
    const r = await post(both, "/v1/completions", { prompt: "echo", max_tokens: 1 }, { "X-Request-Id": "req-42" });
    expect(r.headers.get("x-request-id")).toBe("req-42");
    const e = await post(both, "/v1/nope", {}, { "X-Request-Id": "req-43" });
    expect(e.headers.get("x-request-id")).toBe("req-43");
    expect(both.logs[0]).toMatchObject({ name: "kvferry-simulator" });
  });

  it("a decode on another node pulls the KV from the prefill's node through the daemons", async () => {
    let a: PeerDaemon | undefined;
    let b: PeerDaemon | undefined;
    const sims: SpawnedSimulator[] = [];
    try {
      [a, b] = await Promise.all([startPeerDaemon({ bufferSize: "256MiB" }), startPeerDaemon({ bufferSize: "256MiB" })]);
      const [p, d] = await Promise.all([
        spawnSimulator(["--listen", "127.0.0.1:0", "--role", "prefill", "--daemon", a.address]),
        spawnSimulator(["--listen", "127.0.0.1:0", "--role", "decode", "--daemon", b.address, "--kv-wait-ms", "5000"]),
      ]);
      sims.push(p, d);
      const body = { prompt: "Across the river, from node A to node B.", max_tokens: 10 };
      const id = transferId("remote");
      const pr = await post(p, "/v1/completions", { ...body, kv_transfer_params: { do_remote_decode: true, transfer_id: id } });
      expect(pr.status, JSON.stringify(pr.json)).toBe(200);
      expect(pr.json.kv_transfer_params.remote_peer_address).toBe(a.peerAddress);
      const dr = await post(d, "/v1/completions", { ...body, kv_transfer_params: pr.json.kv_transfer_params });
      expect(dr.status, JSON.stringify(dr.json)).toBe(200);
      expect(dr.json.choices[0].text).toBe((await completionText(both, "/v1/completions", body, false)).text);
      const tokens = tokenize(body.prompt).length;
      expect(await metric(d, "kvferry_simulator_kv_bytes_got_total")).toBe(LAYERS * layerSize(DEFAULT_LAYOUT, tokens));
      expect(LAYERS * tokens * tokenLayerBytes(DEFAULT_LAYOUT)).toBe(tokens * 128 * 1024);
      // Moved, then consumed: on neither daemon any more.
      expect(await rejection(a.client.stat(id))).toBeInstanceOf(NotFoundError);
      expect(await rejection(b.client.stat(id))).toBeInstanceOf(NotFoundError);
    } finally {
      await Promise.all(sims.map((s) => s.stop(5000)));
      await Promise.all([a?.stop(), b?.stop()]);
    }
  });

  it("on SIGTERM lets a stream in flight finish, refuses new connections, and exits 0", async () => {
    const sim = await spawnSimulator(["--listen", "127.0.0.1:0", "--role", "both", "--token-ms", "20"]);
    try {
      const res = await postStream(sim, "/v1/completions", { prompt: "Finish what you started", max_tokens: 25 });
      const reading = readSse(res);
      await sleep(100);
      sim.child.kill("SIGTERM");
      const { events, done } = await reading;
      expect(done).toBe(true);
      expect(events.map((e) => e.choices[0].text).join("")).toBe(
        (await completionText(both, "/v1/completions", { prompt: "Finish what you started", max_tokens: 25 }, false)).text,
      );
      expect(await sim.exited).toBe(0);
      await expect(fetch(`${sim.url}/health`, { signal: AbortSignal.timeout(2000) })).rejects.toThrow();
      expect(sim.logs.map((l) => l.msg)).toEqual(expect.arrayContaining(["shutting down", "draining", "stopped"]));
    } finally {
      await sim.stop(5000);
    }
  });

  it("exits 2 on a bad flag naming the flag, the value and the expectation, and 0 on SIGTERM", async () => {
    const bad = await runCli(["simulate", "--role", "both", "--kv-heads", "zero"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--kv-heads: got "zero", expected an integer from 1 to 1024');
    const noDaemon = await runCli(["simulate", "--role", "prefill"]);
    expect(noDaemon.code).toBe(2);
    expect(noDaemon.stderr).toMatch(/--daemon: got nothing, expected .*required with --role prefill/);
    const help = await runCli(["simulate", "--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/SIMULATOR/);
    const sim = await spawnSimulator(["--listen", "127.0.0.1:0", "--role", "both"]);
    expect(await sim.stop(5000)).toBe(0);
    expect(sim.logs.some((l) => l.msg === "stopped")).toBe(true);
  });
});
