// The demo's requests: deterministic prompts of mixed lengths, completions and chat,
// some streamed; each sent over HTTP with its time to first byte and its generated text
// (from the JSON, or from the Server-Sent Events of a stream).

export interface DemoRequest {
  index: number;
  path: "/v1/completions" | "/v1/chat/completions";
  body: Record<string, unknown>;
  stream: boolean;
  /** Words in the prompt (≈ tokens). */
  words: number;
}

export interface DemoResult {
  request: DemoRequest;
  ok: boolean;
  status: number;
  /** Milliseconds to the first body byte. */
  ttfbMs: number;
  totalMs: number;
  text: string;
  error?: string;
}

const WORDS = (
  "the a river carries boats of cargo between cities while engineers measure every current and " +
  "record how bytes cross the network from one node to another without loss or delay in time"
).split(" ");

/** A small seeded generator: the same demo sends the same prompts every run. */
function random(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

/** `count` requests: prompt lengths from ~16 to ~`maxWords` words, a third chat, every other one streamed. */
export function makeRequests(count: number, maxWords: number, model: string): DemoRequest[] {
  const rnd = random(0x6b76);
  return Array.from({ length: count }, (_, index) => {
    // Lengths spread over a log scale, as real prompts are.
    const words = Math.round(16 * (maxWords / 16) ** rnd());
    const prompt = Array.from({ length: words }, () => WORDS[Math.floor(rnd() * WORDS.length)]).join(" ");
    const stream = index % 2 === 1;
    const maxTokens = 8 + (index % 5) * 4;
    const chat = index % 3 === 2;
    const body = chat
      ? { model, messages: [{ role: "user", content: prompt }], max_tokens: maxTokens, stream }
      : { model, prompt, max_tokens: maxTokens, stream };
    return { index, path: chat ? "/v1/chat/completions" : "/v1/completions", body, stream, words };
  });
}

/** Sends one request to `baseUrl`; never throws (a failure is a result with ok: false). */
export async function send(baseUrl: string, request: DemoRequest, timeoutMs = 120_000): Promise<DemoResult> {
  const t0 = performance.now();
  let ttfbMs = 0;
  try {
    const res = await fetch(`${baseUrl}${request.path}`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-request-id": `demo-${request.index}` },
      body: JSON.stringify(request.body),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const reader = res.body!.getReader();
    const chunks: Uint8Array[] = [];
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (chunks.length === 0) ttfbMs = performance.now() - t0;
      chunks.push(value);
    }
    const raw = Buffer.concat(chunks).toString("utf8");
    const totalMs = performance.now() - t0;
    if (!res.ok) return { request, ok: false, status: res.status, ttfbMs, totalMs, text: "", error: raw.slice(0, 300) };
    return { request, ok: true, status: res.status, ttfbMs, totalMs, text: request.stream ? textOfStream(raw) : textOfJson(raw) };
  } catch (err) {
    return { request, ok: false, status: 0, ttfbMs, totalMs: performance.now() - t0, text: "", error: (err as Error).message };
  }
}

function textOfJson(raw: string): string {
  const choice = JSON.parse(raw).choices?.[0] ?? {};
  return choice.text ?? choice.message?.content ?? "";
}

/** The generated text of an OpenAI SSE stream; an `error` event makes it throw. */
function textOfStream(raw: string): string {
  let text = "";
  for (const line of raw.split("\n")) {
    if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
    const event = JSON.parse(line.slice(6));
    if (event.error) throw new Error(event.error.message ?? JSON.stringify(event.error));
    const choice = event.choices?.[0] ?? {};
    text += choice.text ?? choice.delta?.content ?? "";
  }
  return text;
}

/** Runs `requests` against `baseUrl`, `concurrency` at a time, calling `progress` after each. */
export async function runAll(
  baseUrl: string,
  requests: DemoRequest[],
  concurrency: number,
  progress: (done: number) => void = () => {},
): Promise<DemoResult[]> {
  const results: DemoResult[] = new Array(requests.length);
  let next = 0;
  let done = 0;
  const worker = async () => {
    while (next < requests.length) {
      const request = requests[next++]!;
      results[request.index] = await send(baseUrl, request);
      progress(++done);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, requests.length) }, worker));
  return results;
}
