// HTTP calls to the engine instances (prefill, decode, health checks, /v1/models).
//
// `send` resolves with the response as soon as its headers arrive, so that a decode answer
// can be streamed on; the body is the caller's to read (`readBody`) or relay. Every call
// has a deadline for the headers and follows an AbortSignal (the client went away, or the
// proxy is stopping). Failures come back as an UpstreamError whose `kind` tells the caller
// what to answer: `refused` (no connection could be made: the instance is not taking
// requests now, so another one may be tried), `unreachable` (reset or closed before the
// headers: 502, and the instance is suspect), `timeout` (504), `aborted` (nobody is
// waiting any more).
//
// Whether the request may have reached the instance is a separate fact (`reached`): it is
// false only when no byte of it was ever written, i.e. every try was a fresh connection
// that could not be made. A caller that only skips cleaning up after requests that never
// arrived must look at `reached`, not at the kind.
//
// Connections are kept alive. A kept-alive socket the server closed while it sat idle
// fails the next request with ECONNRESET before anything was answered; such a request is
// sent once more on a new connection. That reset says nothing certain, though: an
// instance that died while working on the request resets the connection the same way. So
// when the second try fails too (even refused), the error says the request may have reached it.
import http, { type IncomingMessage } from "node:http";
import https from "node:https";

export type UpstreamErrorKind = "refused" | "unreachable" | "timeout" | "aborted" | "too_large";

/** Connect errors: nothing of the request reached the instance. */
const CONNECT_FAILURES = new Set(["ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "ENOTFOUND", "EAI_AGAIN", "EADDRNOTAVAIL"]);

export class UpstreamError extends Error {
  constructor(
    readonly kind: UpstreamErrorKind,
    message: string,
    /** Whether the request may have reached the instance: false only when none of it was ever written. */
    readonly reached = true,
  ) {
    super(message);
    this.name = "UpstreamError";
  }
}

const agents = {
  "http:": new http.Agent({ keepAlive: true, maxFreeSockets: 256, scheduling: "lifo" }),
  "https:": new https.Agent({ keepAlive: true, maxFreeSockets: 256, scheduling: "lifo" }),
};

export interface UpstreamRequest {
  method: "GET" | "POST";
  /** The full URL: an instance's base URL and the path. */
  url: string;
  headers?: Record<string, string>;
  body?: Buffer;
  signal: AbortSignal;
  /** How long to wait for the response headers. */
  timeoutMs: number;
}

/** Sends the request; resolves on the response headers. @throws UpstreamError */
export function send(o: UpstreamRequest): Promise<IncomingMessage> {
  return attempt(o, true, false);
}

/** One try; `reachedBefore`: an earlier try of this request may have reached the instance. */
function attempt(o: UpstreamRequest, mayRetry: boolean, reachedBefore: boolean): Promise<IncomingMessage> {
  return new Promise<IncomingMessage>((resolve, reject) => {
    if (o.signal.aborted) {
      reject(new UpstreamError("aborted", "the request was abandoned", reachedBefore));
      return;
    }
    const url = new URL(o.url);
    const headers: Record<string, string> = { ...o.headers };
    if (o.body !== undefined) headers["content-length"] = String(o.body.length);
    const req = (url.protocol === "https:" ? https : http).request(url, {
      method: o.method,
      headers,
      agent: agents[url.protocol as "http:" | "https:"],
    });
    let settled = false;
    const settle = () => {
      settled = true;
      clearTimeout(timer);
      o.signal.removeEventListener("abort", onAbort);
    };
    const fail = (err: UpstreamError) => {
      if (settled) return;
      settle();
      req.destroy();
      reject(err);
    };
    const onAbort = () => fail(new UpstreamError("aborted", "the request was abandoned"));
    const timer = setTimeout(() => fail(new UpstreamError("timeout", `no answer within ${o.timeoutMs} ms`)), o.timeoutMs);
    o.signal.addEventListener("abort", onAbort, { once: true });
    req.on("response", (res) => {
      if (settled) {
        res.destroy();
        return;
      }
      settle();
      resolve(res);
    });
    // Stays attached after the headers: a socket error later must not become an uncaught one.
    req.on("error", (err: NodeJS.ErrnoException) => {
      if (settled) return;
      if (mayRetry && req.reusedSocket && err.code === "ECONNRESET") {
        // An idle connection the server had closed, or a server that died with the
        // request in hand: the second try (on a fresh connection) tells them apart only
        // when it succeeds.
        settle();
        attempt(o, false, true).then(resolve, reject);
        return;
      }
      const connectFailed = err.code !== undefined && CONNECT_FAILURES.has(err.code) && !req.reusedSocket;
      const what = err.code ? `${err.code} (${err.message})` : err.message;
      const message = reachedBefore ? `the kept-alive connection was reset, then a new one failed: ${what}` : what;
      fail(new UpstreamError(connectFailed ? "refused" : "unreachable", message, reachedBefore || !connectFailed));
    });
    req.end(o.body);
  });
}

/**
 * Reads a whole (small) body: at most `limit` bytes, within `timeoutMs`, following the
 * signal. @throws UpstreamError (a body cut short is `unreachable`)
 */
export function readBody(res: IncomingMessage, limit: number, signal: AbortSignal, timeoutMs: number): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let settled = false;
    const finish = (err: UpstreamError | undefined) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
      if (err === undefined) {
        resolve(Buffer.concat(chunks, size));
      } else {
        res.destroy();
        reject(err);
      }
    };
    const onAbort = () => finish(new UpstreamError("aborted", "the request was abandoned"));
    const timer = setTimeout(() => finish(new UpstreamError("timeout", `the body did not arrive within ${timeoutMs} ms`)), timeoutMs);
    signal.addEventListener("abort", onAbort, { once: true });
    if (signal.aborted) onAbort();
    res.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) finish(new UpstreamError("too_large", `the body exceeds ${limit} bytes`));
      else chunks.push(chunk);
    });
    res.on("end", () => finish(undefined));
    res.on("error", (err) => finish(new UpstreamError("unreachable", `the body was cut short: ${err.message}`)));
    res.on("close", () => {
      if (!res.complete) finish(new UpstreamError("unreachable", "the connection closed before the body ended"));
    });
  });
}

/** Sends and reads the whole answer: for health checks, /v1/models and prefill calls. */
export async function fetchAll(
  o: UpstreamRequest & { limit: number },
): Promise<{ status: number; headers: IncomingMessage["headers"]; body: Buffer }> {
  const started = Date.now();
  const res = await send(o);
  const body = await readBody(res, o.limit, o.signal, Math.max(1, o.timeoutMs - (Date.now() - started)));
  return { status: res.statusCode ?? 502, headers: res.headers, body };
}

/** Closes the idle kept-alive connections (at shutdown). */
export function closeIdleConnections(): void {
  agents["http:"].destroy();
  agents["https:"].destroy();
}
