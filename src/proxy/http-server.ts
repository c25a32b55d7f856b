// The proxy's HTTP front door: routes, request ids, request bodies, and the small routes
// that are not a completion (/v1/models, /health, /metrics).
//
//   POST /v1/completions, /v1/chat/completions   request-flow.ts
//   GET  /v1/models    the union of the healthy instances' models, deduplicated by id
//   GET  /health       200 when a prefill and a decode instance are healthy, else 503,
//                      with every instance's state; 503 once the proxy is shutting down
//   GET  /metrics      Prometheus text
//
// Every answer carries X-Request-Id: the client's (when it is printable ASCII of at most
// 256 characters) or a minted one. Bodies are bounded (413), must be a JSON object nested
// at most MAX_JSON_DEPTH deep (400); other paths are 404 and other methods 405. A handler
// that throws answers 500: no input takes the process down. Once shutdown starts, every
// answer closes its connection and a new completion is answered 503 (shutting_down).
import { randomUUID } from "node:crypto";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import { sendMetrics } from "../metrics/registry.js";
import type { ProxyConfig } from "./config.js";
import type { Instance, InstancePool } from "./instances.js";
import type { ProxyMetrics } from "./metrics.js";
import {
  ProxyHttpError,
  badRequest,
  bodyTooLarge,
  internalError,
  methodNotAllowed,
  noHealthyInstance,
  notFound,
  shuttingDown,
  upstreamUnreachable,
  type Outcome,
} from "./openai-errors.js";
import type { CompletionRoute, FlowResult, RequestFlow } from "./request-flow.js";
import { writeError, writeJson } from "./respond.js";
import { fetchAll } from "./upstream.js";

const REQUEST_ID = /^[\x21-\x7e]{1,256}$/;
/** Deepest nesting of arrays and objects accepted in a request body. */
export const MAX_JSON_DEPTH = 128;
const COMPLETIONS: Record<string, CompletionRoute | undefined> = { "/v1/completions": "completions", "/v1/chat/completions": "chat" };

export interface FrontDoorDeps {
  config: ProxyConfig;
  pool: InstancePool;
  flow: RequestFlow;
  metrics: ProxyMetrics;
  log: Logger;
  /** Whether shutdown has started. */
  draining: () => boolean;
}

/** The requests being served, so that a drain knows when it is done. */
export class InFlight {
  readonly #responses = new Set<ServerResponse>();
  #idle: (() => void)[] = [];

  get count(): number {
    return this.#responses.size;
  }

  enter(res: ServerResponse): void {
    this.#responses.add(res);
  }

  leave(res: ServerResponse): void {
    if (this.#responses.delete(res) && this.#responses.size === 0) for (const wake of this.#idle.splice(0)) wake();
  }

  /** Makes every answer not yet started close its connection when it ends (at shutdown). */
  closeAfterAnswers(): void {
    for (const res of this.#responses) if (!res.headersSent) res.setHeader("connection", "close");
  }

  /** Resolves when nothing is in flight. */
  idle(): Promise<void> {
    return this.#responses.size === 0 ? Promise.resolve() : new Promise((resolve) => this.#idle.push(resolve));
  }
}

export function createFrontDoor(deps: FrontDoorDeps, inFlight: InFlight): http.Server {
  const server = http.createServer((req, res) => {
    inFlight.enter(res);
    handle(deps, req, res)
      .catch((err) => {
        deps.log.error({ err }, "request handler failed");
        writeError(res, internalError((err as Error).message));
        if (!res.writableEnded) res.destroy();
      })
      .finally(() => inFlight.leave(res));
  });
  // Bounds on a client's own slowness: the request line and headers, then the whole body.
  server.headersTimeout = 30_000;
  server.requestTimeout = 120_000;
  // A client error (a malformed request, headers too large, too slow, a reset) is the
  // client's problem, not ours: answered as Node would answer it, then the connection closes.
  server.on("clientError", (err: NodeJS.ErrnoException, socket: Duplex) => {
    deps.log.debug({ err: err.message, code: err.code }, "client error");
    const answering = (socket as Duplex & { _httpMessage?: ServerResponse })._httpMessage;
    if (err.code === "ECONNRESET" || !socket.writable || answering?.headersSent === true) {
      socket.destroy();
      return;
    }
    const status = CLIENT_ERROR_STATUS[err.code ?? ""] ?? "400 Bad Request";
    socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  });
  return server;
}

/** The status line of a client error, by Node's error code (400 for the others). */
const CLIENT_ERROR_STATUS: Record<string, string | undefined> = {
  ERR_HTTP_REQUEST_TIMEOUT: "408 Request Timeout",
  HPE_HEADER_OVERFLOW: "431 Request Header Fields Too Large",
};

type RouteName = CompletionRoute | "models" | "health" | "metrics" | "other";

async function handle(deps: FrontDoorDeps, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const startedAt = performance.now();
  const given = req.headers["x-request-id"];
  const requestId = typeof given === "string" && REQUEST_ID.test(given) ? given : `req-${randomUUID()}`;
  if (given !== undefined && requestId !== given) {
    deps.log.debug({ given: String(given).slice(0, 300), requestId }, "X-Request-Id is not 1-256 printable ASCII characters: replaced");
  }
  res.setHeader("x-request-id", requestId);
  // Shutting down: nothing more on this connection after this answer.
  if (deps.draining()) res.setHeader("connection", "close");
  const path = (req.url ?? "/").split("?")[0]!;
  const completion = COMPLETIONS[path];
  const route: RouteName =
    completion ?? (path === "/v1/models" ? "models" : path === "/health" ? "health" : path === "/metrics" ? "metrics" : "other");
  const { metrics } = deps;
  metrics.inFlight.inc({ route });
  let result: FlowResult;
  try {
    result = await dispatch(deps, req, res, { route, path, requestId, startedAt });
  } catch (err) {
    const e = err instanceof ProxyHttpError ? err : internalError((err as Error).message);
    if (e.outcome === "internal") deps.log.error({ err, requestId }, "request failed");
    // A refused body is not read to its end: close the connection after the answer.
    if (e.status === 413) res.setHeader("connection", "close");
    writeError(res, e);
    result = { status: e.status, outcome: e.outcome };
  } finally {
    metrics.inFlight.dec({ route });
  }
  metrics.requests.inc({ route, status: String(result.status), outcome: result.outcome });
  metrics.latency.observe({ route, outcome: result.outcome }, (performance.now() - startedAt) / 1000);
  if (route !== "health" && route !== "metrics") {
    deps.log.debug({ requestId, route, status: result.status, outcome: result.outcome, ms: Math.round(performance.now() - startedAt) }, "request done");
  }
}

interface Routed {
  route: RouteName;
  path: string;
  requestId: string;
  startedAt: number;
}

async function dispatch(deps: FrontDoorDeps, req: IncomingMessage, res: ServerResponse, r: Routed): Promise<FlowResult> {
  const ok = (status: number, outcome: Outcome = "ok"): FlowResult => ({ status, outcome });
  const allow = (methods: string) => {
    res.setHeader("allow", methods);
    return methodNotAllowed(req.method ?? "?", r.path, methods);
  };
  switch (r.route) {
    case "completions":
    case "chat": {
      if (req.method !== "POST") throw allow("POST");
      if (deps.draining()) {
        drain(req);
        throw shuttingDown();
      }
      const abort = new AbortController();
      // The client going away (before the answer ended) abandons every upstream call; one
      // gone by the time its body is read costs no prefill.
      res.on("close", () => {
        if (!res.writableFinished) abort.abort();
      });
      const text = await readJsonObject(req, deps.config.maxBodyBytes);
      if (abort.signal.aborted || req.socket.destroyed) return { status: 499, outcome: "aborted" };
      const authorization = req.headers.authorization;
      return deps.flow.run({
        requestId: r.requestId, route: r.route, path: r.path, text, authorization,
        res, signal: abort.signal, startedAt: r.startedAt,
      });
    }
    case "models": {
      if (req.method !== "GET") throw allow("GET");
      drain(req);
      const models = await listModels(deps, req.headers.authorization);
      writeJson(res, 200, { object: "list", data: models });
      return ok(200);
    }
    case "health": {
      if (req.method !== "GET" && req.method !== "HEAD") throw allow("GET, HEAD");
      drain(req);
      const draining = deps.draining();
      const ready = !draining && deps.pool.ready();
      writeJson(res, ready ? 200 : 503, {
        status: ready ? "ok" : draining ? "draining" : "unavailable",
        transfer: deps.config.transfer,
        policy: deps.config.policy,
        ...deps.pool.report(),
      });
      return ok(ready ? 200 : 503, ready ? "ok" : "unavailable");
    }
    case "metrics": {
      if (req.method !== "GET") throw allow("GET");
      drain(req);
      await sendMetrics(res, deps.metrics.registry);
      return ok(200);
    }
    case "other":
      drain(req);
      throw notFound(r.path);
  }
}

/** Discards a body nobody needs, so that the connection can be reused. */
function drain(req: IncomingMessage): void {
  req.resume();
}

/**
 * Where `json` nests arrays and objects deeper than `max` (the offset of the bracket that
 * does), or -1. Bytes, not characters: in UTF-8 every byte of a multi-byte character is
 * above 0x7f, so brackets, quotes and backslashes are always themselves.
 */
export function tooDeep(json: Buffer, max: number): number {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < json.length; i++) {
    const c = json[i]!;
    if (inString) {
      if (c === 0x5c /* \ */) i++;
      else if (c === 0x22 /* " */) inString = false;
    } else if (c === 0x22) {
      inString = true;
    } else if (c === 0x5b /* [ */ || c === 0x7b /* { */) {
      if (++depth > max) return i;
    } else if (c === 0x5d /* ] */ || c === 0x7d /* } */) {
      depth--;
    }
  }
  return -1;
}

/** Reads the body (at most `limit` bytes): its text, once it is known to be one JSON object. */
function readJsonObject(req: IncomingMessage, limit: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers["content-length"]);
    if (Number.isFinite(declared) && declared > limit) {
      reject(bodyTooLarge(limit));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    req.on("data", (chunk: Buffer) => {
      if (done) return;
      size += chunk.length;
      if (size > limit) {
        done = true;
        reject(bodyTooLarge(limit));
        return;
      }
      chunks.push(chunk);
    });
    req.on("error", (err) => {
      if (done) return;
      done = true;
      reject(badRequest(`the request body could not be read: ${err.message}`));
    });
    // A client that goes away mid-body: nobody is left to answer, but the handler must end.
    req.on("close", () => {
      if (done || req.complete) return;
      done = true;
      reject(badRequest("the client went away before its request body ended"));
    });
    req.on("end", () => {
      if (done) return;
      done = true;
      if (size === 0) {
        reject(badRequest("a JSON request body is required", "missing_body"));
        return;
      }
      const raw = Buffer.concat(chunks, size);
      const deep = tooDeep(raw, MAX_JSON_DEPTH);
      if (deep >= 0) {
        reject(badRequest(`the request body nests arrays and objects more than ${MAX_JSON_DEPTH} deep (at byte ${deep})`, "invalid_json"));
        return;
      }
      const text = raw.toString("utf8");
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch (err) {
        reject(badRequest(`the request body is not valid JSON: ${(err as Error).message}`, "invalid_json"));
        return;
      }
      if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
        reject(badRequest("the request body must be a JSON object", "invalid_json"));
        return;
      }
      resolve(text);
    });
  });
}

/** The union of the healthy instances' models (first seen wins), by asking each one. */
async function listModels(deps: FrontDoorDeps, authorization: string | undefined): Promise<unknown[]> {
  const healthy = deps.pool.all().filter((i) => i.health === "healthy");
  if (healthy.length === 0) throw noHealthyInstance("prefill or decode");
  const headers: Record<string, string> = {};
  if (deps.config.forwardAuthorization && authorization !== undefined) headers.authorization = authorization;
  const signal = AbortSignal.timeout(deps.config.healthTimeoutMs);
  const answers = await Promise.all(
    healthy.map((i: Instance) =>
      fetchAll({ method: "GET", url: `${i.url}/v1/models`, headers, signal, timeoutMs: deps.config.healthTimeoutMs, limit: 4 << 20 }).then(
        (a) => ({ instance: i, answer: a, error: undefined as string | undefined }),
        (err: Error) => ({ instance: i, answer: undefined, error: err.message }),
      ),
    ),
  );
  const byId = new Map<string, unknown>();
  let answered = 0;
  for (const { instance, answer, error } of answers) {
    if (answer === undefined || answer.status !== 200) {
      deps.log.warn({ url: instance.url, status: answer?.status, err: error }, "GET /v1/models failed");
      continue;
    }
    let data: unknown;
    try {
      data = (JSON.parse(answer.body.toString("utf8")) as { data?: unknown }).data;
    } catch {
      continue;
    }
    if (!Array.isArray(data)) continue;
    answered++;
    for (const m of data) {
      const id = (m as { id?: unknown } | null)?.id;
      if (typeof id === "string" && !byId.has(id)) byId.set(id, m);
    }
  }
  if (answered === 0) {
    const first = answers[0]!;
    throw upstreamUnreachable(first.instance.role, first.instance.url, first.error ?? `GET /v1/models answered ${first.answer?.status}`);
  }
  return [...byId.values()];
}
