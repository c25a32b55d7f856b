// The OpenAI wire format as the simulator speaks it: request parsing and validation,
// response bodies, streamed chunks, and errors.
//
// Only what a proxy and a benchmark need is modelled: `POST /v1/completions` (a prompt
// string, or an array of one string) and `POST /v1/chat/completions` (messages of text),
// `max_tokens` (chat: `max_completion_tokens` first), `stream`, `stream_options.include_usage`,
// `n: 1`, and vLLM's `kv_transfer_params`. Sampling fields (temperature, top_p, stop, …)
// are accepted and ignored: the simulated model is deterministic. Every refusal names the
// field at fault, in `param` and at the start of the message.
import { chatPrompt, type ChatMessage } from "./tokenizer.js";

/**
 * An error answered to the HTTP client as `{"error": {message, type, param, code}}`. `code` is
 * OpenAI's string (`invalid_value`, …), or a number where vLLM answers its HTTP status there.
 */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string = status >= 500 ? "server_error" : "invalid_request_error",
    readonly param: string | null = null,
    readonly code: string | number | null = null,
  ) {
    super(message);
    this.name = "ApiError";
  }

  body(): { error: { message: string; type: string; param: string | null; code: string | number | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** A 400 about one request field; the message starts with the field's name. */
export function invalidField(param: string, message: string): ApiError {
  return new ApiError(400, `${param}: ${message}`, "invalid_request_error", param, "invalid_value");
}

export type Endpoint = "completions" | "chat";

/** The default of max_tokens (and max_completion_tokens). */
export const DEFAULT_MAX_TOKENS = 16;
/** The most tokens one request may ask for. */
export const MAX_TOKENS_LIMIT = 65536;
/**
 * The simulated model's context length: prompt and completion tokens together. It bounds
 * the KV one request makes (32768 tokens × 128 KiB = 4 GiB with the default layout).
 */
export const MAX_MODEL_LEN = 32768;

/** Refuses a request whose prompt and completion would not fit the context, as vLLM does. */
export function checkContext(endpoint: Endpoint, promptTokens: number, maxTokens: number): void {
  if (promptTokens + maxTokens <= MAX_MODEL_LEN) return;
  const field = endpoint === "chat" ? "messages" : "prompt";
  throw new ApiError(
    400,
    `${field}: this model's maximum context length is ${MAX_MODEL_LEN} tokens; the request has ${promptTokens} prompt tokens ` +
      `and asks for ${maxTokens} more`,
    "invalid_request_error",
    field,
    "context_length_exceeded",
  );
}

/** A completion request, validated and reduced to what the simulator uses. */
export interface CompletionRequest {
  endpoint: Endpoint;
  /** The text the tokenizer sees (for chat, the templated messages). */
  prompt: string;
  /** Chat only: the messages, for the record. */
  messages?: ChatMessage[];
  maxTokens: number;
  stream: boolean;
  includeUsage: boolean;
  /** vLLM's disaggregation parameters, as sent (absent when the request had none). */
  kvTransferParams?: Record<string, unknown>;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

const ROLE = /^[a-z_]{1,32}$/;

function parseMessages(raw: unknown): ChatMessage[] {
  if (raw === undefined) throw invalidField("messages", "required: a non-empty array of {role, content}");
  if (!Array.isArray(raw) || raw.length === 0) {
    throw invalidField("messages", "expected a non-empty array of {role, content}");
  }
  return raw.map((m, i) => {
    const where = `messages[${i}]`;
    if (!isObject(m)) throw invalidField(where, "expected an object {role, content}");
    if (typeof m.role !== "string" || !ROLE.test(m.role)) {
      throw invalidField(`${where}.role`, `expected a role such as "system", "user" or "assistant", got ${JSON.stringify(m.role)}`);
    }
    return { role: m.role, content: messageContent(m.content, `${where}.content`) };
  });
}

/** A message's text: a string, null (empty), or an array of `{type: "text", text}` parts. */
function messageContent(raw: unknown, where: string): string {
  if (typeof raw === "string") return raw;
  if (raw === null || raw === undefined) return "";
  if (Array.isArray(raw)) {
    return raw
      .map((part, j) => {
        if (isObject(part) && part.type === "text" && typeof part.text === "string") return part.text;
        throw invalidField(`${where}[${j}]`, 'the simulator understands only text parts {"type": "text", "text": "..."}');
      })
      .join("\n");
  }
  throw invalidField(where, "expected a string or an array of text parts");
}

function parsePrompt(raw: unknown): string {
  if (raw === undefined) throw invalidField("prompt", "required: a string (or an array of one string)");
  if (typeof raw === "string") return raw;
  if (Array.isArray(raw) && raw.length === 1 && typeof raw[0] === "string") return raw[0];
  throw invalidField("prompt", "expected a string or an array of one string (batches and token ids are not simulated)");
}

function parseMaxTokens(body: Record<string, unknown>, endpoint: Endpoint): number {
  const field = endpoint === "chat" && body.max_completion_tokens != null ? "max_completion_tokens" : "max_tokens";
  const raw = body[field];
  if (raw === undefined || raw === null) return DEFAULT_MAX_TOKENS;
  if (typeof raw !== "number" || !Number.isInteger(raw) || raw < 1 || raw > MAX_TOKENS_LIMIT) {
    throw invalidField(field, `expected an integer from 1 to ${MAX_TOKENS_LIMIT}, got ${JSON.stringify(raw)}`);
  }
  return raw;
}

/**
 * The model check, as vLLM (0.33) makes it: a request naming no model gets the served one; a
 * request naming another is a 404 with vLLM's body (`type` "NotFoundError", `param` "model",
 * `code` 404), the message naming the field first as every refusal here does.
 */
function checkModel(requested: unknown, served: string): void {
  if (requested === undefined || requested === null || requested === "") return;
  if (typeof requested !== "string") throw invalidField("model", "expected a string");
  if (requested === served) return;
  throw new ApiError(
    404,
    `model: the model ${JSON.stringify(requested)} does not exist; this simulator serves ${JSON.stringify(served)} (start it with --model NAME to serve another)`,
    "NotFoundError",
    "model",
    404,
  );
}

/** Validates a request body for `endpoint`. `model` is the served model's name (see checkModel). */
export function parseRequest(endpoint: Endpoint, body: unknown, model: string): CompletionRequest {
  if (!isObject(body)) throw invalidField("body", "expected a JSON object");
  checkModel(body.model, model);
  let prompt: string;
  let messages: ChatMessage[] | undefined;
  if (endpoint === "chat") {
    messages = parseMessages(body.messages);
    prompt = chatPrompt(messages);
  } else {
    prompt = parsePrompt(body.prompt);
  }
  const maxTokens = parseMaxTokens(body, endpoint);
  if (body.stream !== undefined && body.stream !== null && typeof body.stream !== "boolean") {
    throw invalidField("stream", "expected true or false");
  }
  let includeUsage = false;
  if (body.stream_options !== undefined && body.stream_options !== null) {
    if (!isObject(body.stream_options)) throw invalidField("stream_options", "expected an object");
    const iu = body.stream_options.include_usage;
    if (iu !== undefined && iu !== null && typeof iu !== "boolean") {
      throw invalidField("stream_options.include_usage", "expected true or false");
    }
    includeUsage = iu === true;
  }
  if (body.n !== undefined && body.n !== null && body.n !== 1) {
    throw invalidField("n", `only n = 1 is simulated, got ${JSON.stringify(body.n)}`);
  }
  const kvp = body.kv_transfer_params;
  if (kvp !== undefined && kvp !== null && !isObject(kvp)) throw invalidField("kv_transfer_params", "expected an object");
  return {
    endpoint,
    prompt,
    messages,
    maxTokens,
    stream: body.stream === true,
    includeUsage,
    kvTransferParams: isObject(kvp) ? kvp : undefined,
  };
}

/** What every response and chunk of one request shares. */
export interface ResponseMeta {
  id: string;
  endpoint: Endpoint;
  /** Unix seconds. */
  created: number;
  model: string;
  /** Returned by a prefill instance for the decode instance. */
  kvTransferParams?: Record<string, unknown>;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export function usage(promptTokens: number, completionTokens: number): Usage {
  return { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens };
}

/** The non-streamed answer. */
export function completionBody(meta: ResponseMeta, text: string, finishReason: string, u: Usage): Record<string, unknown> {
  const choice =
    meta.endpoint === "chat"
      ? { index: 0, message: { role: "assistant", content: text }, logprobs: null, finish_reason: finishReason }
      : { index: 0, text, logprobs: null, finish_reason: finishReason };
  return {
    id: meta.id,
    object: meta.endpoint === "chat" ? "chat.completion" : "text_completion",
    created: meta.created,
    model: meta.model,
    choices: [choice],
    usage: u,
    ...(meta.kvTransferParams ? { kv_transfer_params: meta.kvTransferParams } : {}),
  };
}

/**
 * One streamed chunk. `piece.role` opens a chat stream (delta {role, content: ""});
 * `piece.text` carries a token; `finishReason` closes the choice. With include_usage every
 * chunk carries `usage: null`, as OpenAI's do; the usage chunk comes last.
 */
export function chunkBody(
  meta: ResponseMeta,
  piece: { role?: true; text?: string; finishReason: string | null },
  includeUsage: boolean,
): Record<string, unknown> {
  let choice: Record<string, unknown>;
  if (meta.endpoint === "chat") {
    const delta = piece.role ? { role: "assistant", content: "" } : piece.text !== undefined ? { content: piece.text } : {};
    choice = { index: 0, delta, logprobs: null, finish_reason: piece.finishReason };
  } else {
    choice = { index: 0, text: piece.text ?? "", logprobs: null, finish_reason: piece.finishReason };
  }
  return {
    id: meta.id,
    object: meta.endpoint === "chat" ? "chat.completion.chunk" : "text_completion",
    created: meta.created,
    model: meta.model,
    choices: [choice],
    ...(includeUsage ? { usage: null } : {}),
  };
}

/** The last chunk of a stream with include_usage: no choices, the usage. */
export function usageChunkBody(meta: ResponseMeta, u: Usage): Record<string, unknown> {
  return {
    id: meta.id,
    object: meta.endpoint === "chat" ? "chat.completion.chunk" : "text_completion",
    created: meta.created,
    model: meta.model,
    choices: [],
    usage: u,
  };
}
