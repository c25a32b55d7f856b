// The proxy's own failures, each with its HTTP status and an OpenAI-style body:
//   {"error": {"message": "...", "type": "...", "param": null, "code": "..."}}
//
// An upstream's error answer is never rewritten (its status and body pass through); these
// are for what the proxy itself decides: bad input, no instance, an unreachable or silent
// upstream, a failed KV transfer. A client always gets one of these or the upstream's
// answer, never an empty 200.

/** The `outcome` label of the request metrics, one per way a request can end. */
export type Outcome =
  | "ok"
  | "upstream_status"
  | "bad_request"
  | "not_found"
  | "unavailable"
  | "upstream_unreachable"
  | "timeout"
  | "transfer_failed"
  | "stream_failed"
  | "aborted"
  | "internal";

export class ProxyHttpError extends Error {
  constructor(
    readonly status: number,
    readonly type: string,
    readonly code: string,
    message: string,
    readonly outcome: Outcome,
    readonly param: string | null = null,
  ) {
    super(message);
    this.name = "ProxyHttpError";
  }

  /** The JSON body a client receives. */
  body(): string {
    return JSON.stringify(openAIError(this.message, this.type, this.code, this.param));
  }
}

/** `{"error": {...}}` in OpenAI's shape. */
export function openAIError(message: string, type: string, code: string | number, param: string | null = null) {
  return { error: { message, type, param, code } };
}

export const badRequest = (message: string, code = "invalid_request", param: string | null = null) =>
  new ProxyHttpError(400, "invalid_request_error", code, message, "bad_request", param);

export const notFound = (path: string) =>
  new ProxyHttpError(404, "not_found_error", "not_found", `no route for ${path}`, "not_found");

export const methodNotAllowed = (method: string, path: string, allowed: string) =>
  new ProxyHttpError(405, "invalid_request_error", "method_not_allowed", `${method} is not allowed on ${path} (use ${allowed})`, "bad_request");

export const bodyTooLarge = (limit: number) =>
  new ProxyHttpError(413, "invalid_request_error", "body_too_large", `the request body exceeds ${limit} bytes`, "bad_request");

export const noHealthyInstance = (role: string, detail?: string) =>
  new ProxyHttpError(
    503, "service_unavailable_error", "no_healthy_instance",
    detail === undefined ? `no healthy ${role} instance is available` : `no ${role} instance is available: ${detail}`, "unavailable",
  );

export const shuttingDown = () =>
  new ProxyHttpError(503, "service_unavailable_error", "shutting_down", "the proxy is shutting down: send the request elsewhere", "unavailable");

export const upstreamUnreachable = (role: string, url: string, detail: string) =>
  new ProxyHttpError(502, "upstream_error", "upstream_unreachable", `${role} instance ${url} failed before answering: ${detail}`, "upstream_unreachable");

export const upstreamTimeout = (role: string, url: string, ms: number) =>
  new ProxyHttpError(504, "timeout_error", "upstream_timeout", `${role} instance ${url} did not answer within ${ms} ms`, "timeout");

export const badUpstreamAnswer = (role: string, url: string, detail: string) =>
  new ProxyHttpError(502, "upstream_error", "bad_upstream_response", `${role} instance ${url} answered something unusable: ${detail}`, "upstream_unreachable");

export const transferFailed = (transferId: string, status: string, detail: string) =>
  new ProxyHttpError(502, "kv_transfer_error", "kv_transfer_failed", `KV transfer ${transferId} failed with ${status}: ${detail}`, "transfer_failed");

export const internalError = (detail: string) =>
  new ProxyHttpError(500, "internal_error", "internal_error", `proxy error: ${detail}`, "internal");
