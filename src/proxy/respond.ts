// Writing answers to the client: JSON bodies, the proxy's own errors, and the headers an
// upstream answer keeps when it is relayed (hop-by-hop headers are the connection's own).
import type { IncomingHttpHeaders, ServerResponse } from "node:http";
import type { ProxyHttpError } from "./openai-errors.js";

/** Headers that describe one connection, not the message (RFC 9110 §7.6.1). */
const HOP_BY_HOP = new Set([
  "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
  "proxy-authenticate", "proxy-authorization", "proxy-connection",
]);

/** The upstream's headers minus hop-by-hop ones (and its x-request-id: the proxy sets its own). */
export function relayedHeaders(headers: IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || HOP_BY_HOP.has(name) || name === "x-request-id") continue;
    out[name] = value;
  }
  return out;
}

/** Answers with a JSON body, unless the client is gone or an answer already started. */
export function writeJson(res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return;
  const body = JSON.stringify(value);
  res.writeHead(status, { ...headers, "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
}

/** Answers with the proxy's own OpenAI-style error. */
export function writeError(res: ServerResponse, err: ProxyHttpError, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return;
  const body = err.body();
  res.writeHead(err.status, { ...headers, "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
}

/** Passes an upstream's whole answer through: its status, headers and body, unchanged. */
export function writeUpstream(res: ServerResponse, status: number, headers: IncomingHttpHeaders, body: Buffer): void {
  if (res.headersSent || res.destroyed) return;
  res.writeHead(status, { ...relayedHeaders(headers), "content-length": String(body.length) });
  res.end(body);
}
