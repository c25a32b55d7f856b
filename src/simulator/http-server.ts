// The simulator's HTTP server (node:http, no framework): OpenAI's completion endpoints
// in front of a role, plus /v1/models, /health and /metrics.
//
// Lifecycle: starting → serving → draining → stopped. Draining (SIGTERM) stops accepting
// connections, answers /health with 503 on the ones still open, lets requests in flight
// finish up to a grace period, then closes whatever is left.
//
// One request: read the body (bounded), validate it, tokenize the prompt, let the role
// come by the KV (compute, put, or get and verify), then generate: as one JSON answer, or
// as Server-Sent Events, one chunk per token, paced by --token-ms. The stream honours
// back-pressure (a full socket pauses generation until 'drain'), and a client that goes
// away stops the generation at the next token. Errors before the first byte are
// OpenAI-style JSON with their status; nothing a client sends can crash the process.
import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Logger } from "pino";
import { formatHostPort, type HostPort } from "../config/config.js";
import { sendMetrics } from "../metrics/registry.js";
import { generate } from "./generation.js";
import type { KvLayout } from "./kv.js";
import { outcomeOf, type SimulatorMetrics } from "./metrics.js";
import {
  ApiError,
  checkContext,
  chunkBody,
  completionBody,
  parseRequest,
  usage,
  usageChunkBody,
  type CompletionRequest,
  type Endpoint,
  type ResponseMeta,
} from "./openai.js";
import type { Role } from "./roles.js";
import { tokenize } from "./tokenizer.js";

/** Largest request body; a larger one answers 413. */
export const MAX_BODY_BYTES = 4 << 20;
/** An oversized body is read and dropped up to this much (so the client sees the 413), then cut. */
const MAX_DRAIN_BYTES = 64 << 20;
/** Who owns the served model, in /v1/models: never mistaken for a real engine. */
export const OWNED_BY = "kvferry-simulator";

export type SimulatorState = "starting" | "serving" | "draining" | "stopped";

export interface SimulatorServerOptions {
  role: Role;
  listen: HostPort;
  model: string;
  layout: KvLayout;
  /** Delay per generated token, ms. */
  tokenMs: number;
  metrics: SimulatorMetrics;
  log: Logger;
  maxBodyBytes?: number;
}

const ROUTES: Record<string, { method: string; endpoint?: Endpoint }> = {
  "/v1/completions": { method: "POST", endpoint: "completions" },
  "/v1/chat/completions": { method: "POST", endpoint: "chat" },
  "/v1/models": { method: "GET" },
  "/health": { method: "GET" },
  "/metrics": { method: "GET" },
};

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (ms <= 0 || signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/** Writes `text`; when the socket is full, waits for 'drain' (or the end of the response). */
function write(res: ServerResponse, text: string): Promise<void> {
  if (res.destroyed || res.write(text)) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      res.off("drain", done);
      res.off("close", done);
      resolve();
    };
    res.on("drain", done);
    res.on("close", done);
  });
}

/** The request body, at most `limit` bytes; a larger one is drained (bounded) and refused with 413. */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let total = 0;
    const tooLarge = () =>
      new ApiError(413, `body: larger than the simulator's limit of ${limit} bytes`, "invalid_request_error", null, "body_too_large");
    const declared = Number(req.headers["content-length"]);
    if (Number.isFinite(declared) && declared > MAX_DRAIN_BYTES) {
      // Not worth reading: answer now; the connection closes after the answer.
      req.resume();
      reject(tooLarge());
      return;
    }
    req.on("data", (chunk: Buffer) => {
      total += chunk.length;
      if (total <= limit) chunks.push(chunk);
      else if (total > MAX_DRAIN_BYTES) req.destroy();
    });
    req.on("end", () => (total > limit ? reject(tooLarge()) : resolve(Buffer.concat(chunks))));
    req.on("error", reject);
  });
}

export class SimulatorServer {
  state: SimulatorState = "starting";
  readonly #server: Server;
  readonly #startedAt = Math.floor(Date.now() / 1000);
  #port = 0;
  /** Requests being answered, so that a drain knows when it is done. */
  #inFlight = 0;

  constructor(readonly o: SimulatorServerOptions) {
    this.#server = createServer((req, res) => {
      this.#inFlight++;
      res.on("close", () => this.#inFlight--);
      this.#handle(req, res).catch((err) => {
        this.o.log.error({ err }, "request handler failed");
        if (!res.headersSent) this.#sendError(res, new ApiError(500, `internal error: ${(err as Error).message}`));
        else res.destroy();
      });
    });
    this.#server.on("clientError", (err, socket) => {
      // Malformed HTTP: answer 400 if the socket still can, never crash.
      if (socket.writable) socket.end("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
      else socket.destroy();
      this.o.log.debug({ err: (err as Error).message }, "malformed HTTP request");
    });
  }

  /** The bound port (useful with port 0). */
  get port(): number {
    return this.#port;
  }

  get address(): string {
    return formatHostPort({ host: this.o.listen.host, port: this.#port });
  }

  /** Binds the listening address; rejects when it cannot (e.g. the port is taken). */
  async start(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once("error", reject);
      this.#server.listen(this.o.listen.port, this.o.listen.host, () => {
        this.#server.off("error", reject);
        resolve();
      });
    });
    this.#port = (this.#server.address() as AddressInfo).port;
    this.state = "serving";
  }

  /** Stops accepting, waits up to `graceMs` for requests in flight, then closes every connection. */
  async shutdown(graceMs: number): Promise<void> {
    if (this.state === "draining" || this.state === "stopped") return;
    this.state = "draining";
    this.o.log.info({ graceMs, inFlight: this.#inFlight }, "draining");
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    const deadline = Date.now() + graceMs;
    // Idle keep-alive connections would hold close() open: shut them as they go idle.
    const sweep = setInterval(() => this.#server.closeIdleConnections(), 50);
    let graceTimer: NodeJS.Timeout | undefined;
    const grace = new Promise<"timeout">((resolve) => (graceTimer = setTimeout(() => resolve("timeout"), Math.max(0, deadline - Date.now()))));
    if ((await Promise.race([closed, grace])) === "timeout") {
      this.o.log.warn({ inFlight: this.#inFlight }, "grace period over: closing connections still open");
      this.#server.closeAllConnections();
      await closed;
    }
    clearTimeout(graceTimer);
    clearInterval(sweep);
    this.state = "stopped";
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const clientRequestId = req.headers["x-request-id"];
    if (typeof clientRequestId === "string" && clientRequestId !== "") res.setHeader("X-Request-Id", clientRequestId);
    const path = (req.url ?? "/").split("?")[0]!.replace(/\/+$/, "") || "/";
    const route = ROUTES[path];
    if (route === undefined) {
      req.resume();
      this.o.metrics.request("other", "rejected");
      this.#sendError(res, new ApiError(404, `${req.method} ${path}: no such endpoint on this simulator`, "invalid_request_error", null, "unknown_url"));
      return;
    }
    if (req.method !== route.method) {
      req.resume();
      res.setHeader("Allow", route.method);
      this.o.metrics.request(route.endpoint ?? "other", "rejected");
      this.#sendError(res, new ApiError(405, `${req.method} ${path}: method not allowed, use ${route.method}`, "invalid_request_error", null, "method_not_allowed"));
      return;
    }
    switch (path) {
      case "/health":
        if (this.state === "serving") this.#sendJson(res, 200, { status: "ok" });
        else this.#sendJson(res, 503, { status: this.state });
        return;
      case "/metrics":
        await sendMetrics(res, this.o.metrics.registry);
        return;
      case "/v1/models":
        this.#sendJson(res, 200, {
          object: "list",
          data: [{ id: this.o.model, object: "model", created: this.#startedAt, owned_by: OWNED_BY, root: this.o.model, parent: null }],
        });
        return;
    }
    await this.#complete(route.endpoint!, req, res, typeof clientRequestId === "string" ? clientRequestId : undefined);
  }

  async #complete(endpoint: Endpoint, req: IncomingMessage, res: ServerResponse, clientRequestId: string | undefined): Promise<void> {
    const id = `${endpoint === "chat" ? "chatcmpl" : "cmpl"}-${randomUUID().replaceAll("-", "")}`;
    const started = Date.now();
    const controller = new AbortController();
    res.on("close", () => {
      if (!res.writableFinished) controller.abort();
    });
    const log = this.o.log.child({ id, ...(clientRequestId ? { requestId: clientRequestId } : {}), role: this.o.role.name });
    let request: CompletionRequest | undefined;
    let transferId: string | undefined;
    let promptTokens = 0;
    let generated = 0;
    let status = 200;
    try {
      if (this.state !== "serving") throw new ApiError(503, "the simulator is shutting down", "server_error", null, "shutting_down");
      const raw = await readBody(req, this.o.maxBodyBytes ?? MAX_BODY_BYTES);
      let body: unknown;
      try {
        body = JSON.parse(raw.toString("utf8"));
      } catch (err) {
        throw new ApiError(400, `body: not valid JSON: ${(err as Error).message}`, "invalid_request_error", null, "invalid_json");
      }
      request = parseRequest(endpoint, body, this.o.model);
      const tokens = tokenize(request.prompt);
      promptTokens = tokens.length;
      checkContext(endpoint, promptTokens, request.maxTokens);
      const kv = await this.o.role.obtainKv({
        requestId: id, tokens, kvTransferParams: request.kvTransferParams, signal: controller.signal,
      });
      transferId = kv.transferId;
      const count = Math.min(request.maxTokens, kv.maxTokens ?? Infinity);
      const texts = generate(kv.kvDigest, count);
      const meta: ResponseMeta = {
        id, endpoint, created: Math.floor(Date.now() / 1000), model: this.o.model, kvTransferParams: kv.kvTransferParams,
      };
      this.o.metrics.prompt(promptTokens);
      generated = request.stream
        ? await this.#stream(res, meta, request, texts, promptTokens, controller.signal)
        : await this.#answer(res, meta, texts, promptTokens, controller.signal);
    } catch (err) {
      const apiErr = err instanceof ApiError ? err : new ApiError(500, `internal error: ${(err as Error).message}`);
      status = apiErr.status;
      const fields = { status, transferId, err: apiErr.message };
      if (controller.signal.aborted) log.info(fields, "client went away before the answer");
      else {
        this.#sendError(res, apiErr);
        if (status >= 500) log.error(fields, typeof apiErr.code === "string" && apiErr.code.startsWith("kv_") ? "KV transfer failed" : "request failed");
        else log.warn(fields, "request refused");
      }
    } finally {
      const aborted = controller.signal.aborted;
      this.o.metrics.request(endpoint, outcomeOf(status, aborted));
      this.o.metrics.generated(generated);
      if (status < 400) {
        log.info(
          { transferId, promptTokens, completionTokens: generated, stream: request?.stream ?? false, aborted, ms: Date.now() - started },
          aborted ? "client went away: generation stopped" : "completion served",
        );
      }
    }
  }

  /** The whole answer as one JSON body, after count × tokenMs. Returns the tokens generated. */
  async #answer(res: ServerResponse, meta: ResponseMeta, texts: string[], promptTokens: number, signal: AbortSignal): Promise<number> {
    await sleep(texts.length * this.o.tokenMs, signal);
    if (signal.aborted) return 0;
    this.#sendJson(res, 200, completionBody(meta, texts.join(""), "length", usage(promptTokens, texts.length)));
    return texts.length;
  }

  /** Server-Sent Events, one chunk per token, then usage (if asked) and [DONE]. Returns the tokens sent. */
  async #stream(
    res: ServerResponse, meta: ResponseMeta, request: CompletionRequest, texts: string[], promptTokens: number, signal: AbortSignal,
  ): Promise<number> {
    res.writeHead(200, {
      "Content-Type": "text/event-stream; charset=utf-8",
      "Cache-Control": "no-cache",
      Connection: "keep-alive",
      "X-Accel-Buffering": "no",
    });
    res.flushHeaders();
    const event = (body: Record<string, unknown>) => write(res, `data: ${JSON.stringify(body)}\n\n`);
    const withParams = (body: Record<string, unknown>) =>
      meta.kvTransferParams ? { ...body, kv_transfer_params: meta.kvTransferParams } : body;
    const chat = meta.endpoint === "chat";
    if (chat) await event(withParams(chunkBody(meta, { role: true, finishReason: null }, request.includeUsage)));
    let sent = 0;
    for (const [i, text] of texts.entries()) {
      await sleep(this.o.tokenMs, signal);
      if (signal.aborted) return sent;
      const last = i === texts.length - 1;
      let body = chunkBody(meta, { text, finishReason: !chat && last ? "length" : null }, request.includeUsage);
      if (!chat && i === 0) body = withParams(body);
      await event(body);
      sent++;
    }
    if (signal.aborted) return sent;
    if (chat) await event(chunkBody(meta, { finishReason: "length" }, request.includeUsage));
    if (request.includeUsage) await event(usageChunkBody(meta, usage(promptTokens, texts.length)));
    await write(res, "data: [DONE]\n\n");
    res.end();
    return sent;
  }

  #sendJson(res: ServerResponse, status: number, body: unknown): void {
    if (res.headersSent || res.destroyed) return;
    const text = JSON.stringify(body);
    res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
    res.end(text);
  }

  #sendError(res: ServerResponse, err: ApiError): void {
    // A body that was refused unread leaves the connection in no state for another request.
    if (err.status === 413) res.setHeader("Connection", "close");
    this.#sendJson(res, err.status, err.body());
  }
}
