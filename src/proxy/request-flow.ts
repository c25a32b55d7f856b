// One disaggregated completion, from the client's request to the last byte of its answer.
//
//   1. mint a transfer id (kvf-<uuid>) and pick a prefill instance (policy, healthy only)
//   2. prefill: the request with max_tokens 1 (and max_completion_tokens 1 for chat),
//      stream false, no stream_options, and kv_transfer_params {transfer_id,
//      do_remote_decode: true, do_remote_prefill: false}; a non-2xx answer goes back to the
//      client as it is
//   3. pick a decode instance, then move the KV:
//        push  the prefill node's daemon BatchTransfers the entry to the decode node's
//        pull  nothing now: the decode side's Get names the prefill daemon as source_node
//        none  nothing: the engines' own connector moves it
//   4. decode: the original request with kv_transfer_params {...what prefill returned,
//      transfer_id, do_remote_prefill: true, do_remote_decode: false[, source_node]};
//      its answer is relayed as it comes (relay.ts)
//
// The transfer id lives as long as its request. When the request ends, the proxy releases
// it on the daemons it touched (Release; NOT_FOUND, the usual answer after a decode that
// consumed its KV, is fine): an engine that did not consume it, or a request that did not
// end well (an error answer, a timeout, the client gone), leaves nothing behind. A request
// that failed is released once more a little later, for an engine that stored the KV after
// the proxy gave up on it. A push in flight is waited for (up to its deadline) even when
// the client has gone, so that the release finds the entry where the push put it. The
// client always gets a status and a body: the upstream's, or the proxy's OpenAI-style error.
import { randomUUID } from "node:crypto";
import type { ServerResponse } from "node:http";
import { status as grpcStatus } from "@grpc/grpc-js";
import type { Logger } from "pino";
import type { ProxyConfig, Role } from "./config.js";
import type { DaemonLink } from "./daemons.js";
import type { Instance, InstancePool } from "./instances.js";
import type { ProxyMetrics } from "./metrics.js";
import {
  ProxyHttpError,
  badUpstreamAnswer,
  internalError,
  noHealthyInstance,
  transferFailed,
  upstreamTimeout,
  upstreamUnreachable,
  type Outcome,
} from "./openai-errors.js";
import { relay } from "./relay.js";
import { writeError, writeUpstream } from "./respond.js";
import { fetchAll, send, UpstreamError } from "./upstream.js";

export type CompletionRoute = "completions" | "chat";

/** One client request, parsed. */
export interface Exchange {
  requestId: string;
  route: CompletionRoute;
  /** "/v1/completions" or "/v1/chat/completions". */
  path: string;
  body: Record<string, unknown>;
  /** The client's Authorization header (forwarded only with --forward-authorization). */
  authorization: string | undefined;
  res: ServerResponse;
  /** Aborted when the client goes away. */
  signal: AbortSignal;
  /** performance.now() at arrival. */
  startedAt: number;
}

export interface FlowResult {
  /** The status the client got (499: it went away first). */
  status: number;
  outcome: Outcome;
}

/** Largest prefill answer read (it holds one token). */
const PREFILL_ANSWER_LIMIT = 16 << 20;
/** When the second, late release of a failed request's transfer id happens. */
const LATE_RELEASE_MS = 10_000;
const CLIENT_GONE = 499;

export class RequestFlow {
  /** Releases not yet done (shutdown waits for them) and late releases not yet due. */
  readonly #cleanups = new Set<Promise<unknown>>();
  readonly #lateTimers = new Set<NodeJS.Timeout>();

  constructor(
    private readonly config: ProxyConfig,
    private readonly pool: InstancePool,
    private readonly metrics: ProxyMetrics,
    private readonly log: Logger,
  ) {}

  /** Serves one completion to its end. Never throws. */
  async run(x: Exchange): Promise<FlowResult> {
    const transferId = `kvf-${randomUUID()}`;
    const log = this.log.child({ requestId: x.requestId, transferId });
    const touched = new Set<DaemonLink>();
    let result: FlowResult;
    try {
      result = await this.#serve(x, transferId, touched, log);
    } catch (err) {
      if (x.signal.aborted) {
        result = { status: CLIENT_GONE, outcome: "aborted" };
      } else {
        const e = err instanceof ProxyHttpError ? err : internalError((err as Error).message);
        if (e.outcome === "internal") log.error({ err }, "request failed");
        else log.warn({ status: e.status, code: e.code, err: e.message }, "request failed");
        writeError(x.res, e);
        result = { status: e.status, outcome: e.outcome };
      }
    }
    this.#release(transferId, touched, result.outcome === "ok", log);
    return result;
  }

  async #serve(x: Exchange, transferId: string, touched: Set<DaemonLink>, log: Logger): Promise<FlowResult> {
    // 1–2. Prefill.
    const prefill = this.#pick("prefill");
    if (prefill.daemon) touched.add(prefill.daemon);
    const headers = this.#headers(x);
    const prefillBody = JSON.stringify(prefillRequest(x, transferId));
    const prefillStarted = performance.now();
    const endPrefill = this.pool.begin(prefill);
    let answer: Awaited<ReturnType<typeof fetchAll>>;
    try {
      answer = await fetchAll({
        method: "POST", url: prefill.url + x.path, headers, body: Buffer.from(prefillBody),
        signal: x.signal, timeoutMs: this.config.prefillTimeoutMs, limit: PREFILL_ANSWER_LIMIT,
      });
    } catch (err) {
      throw this.#upstreamFailure(prefill, err, this.config.prefillTimeoutMs);
    } finally {
      endPrefill();
    }
    this.metrics.prefillLatency.observe({ url: prefill.url }, (performance.now() - prefillStarted) / 1000);
    if (answer.status < 200 || answer.status > 299) {
      log.info({ status: answer.status, prefill: prefill.url }, "prefill refused the request: passed through");
      writeUpstream(x.res, answer.status, answer.headers, answer.body);
      return { status: answer.status, outcome: "upstream_status" };
    }
    const returned = kvParamsOf(answer.body);
    if (returned === undefined) throw badUpstreamAnswer("prefill", prefill.url, "its 2xx body is not a JSON object");

    // 3. Decode instance, and the KV moved to its node.
    const decode = this.#pick("decode");
    if (decode.daemon) touched.add(decode.daemon);
    const endDecode = this.pool.begin(decode);
    try {
      const sameNode = prefill.daemon !== undefined && prefill.daemon === decode.daemon;
      if (this.config.transfer === "push" && !sameNode) await this.#push(transferId, prefill, decode, log);
      if (x.signal.aborted) return { status: CLIENT_GONE, outcome: "aborted" };
      const params: Record<string, unknown> = {
        ...returned,
        transfer_id: transferId,
        do_remote_prefill: true,
        do_remote_decode: false,
      };
      if (this.config.transfer === "pull" && !sameNode) params.source_node = prefill.daemon!.peerAddress;
      const decodeBody = JSON.stringify({ ...x.body, kv_transfer_params: params });

      // 4. Decode, relayed as it comes.
      let up;
      try {
        up = await send({
          method: "POST", url: decode.url + x.path, headers, body: Buffer.from(decodeBody),
          signal: x.signal, timeoutMs: this.config.decodeTimeoutMs,
        });
      } catch (err) {
        throw this.#upstreamFailure(decode, err, this.config.decodeTimeoutMs);
      }
      const status = up.statusCode ?? 502;
      const relayed = await relay(up, x.res, {
        idleTimeoutMs: this.config.decodeTimeoutMs,
        signal: x.signal,
        upstream: `decode instance ${decode.url}`,
        onFirstByte: () => this.metrics.ttft.observe({ route: x.route }, (performance.now() - x.startedAt) / 1000),
      });
      if (relayed === "aborted") return { status: CLIENT_GONE, outcome: "aborted" };
      if (relayed === "stream_failed") {
        log.warn({ decode: decode.url }, "decode stream broke off after its headers went out");
        this.pool.markUnhealthy(decode, "its answer broke off mid-stream");
        return { status, outcome: "stream_failed" };
      }
      return { status, outcome: status >= 200 && status <= 299 ? "ok" : "upstream_status" };
    } finally {
      endDecode();
    }
  }

  /** Releases the transfer id on the daemons the request touched: now, and once later if it failed. */
  #release(transferId: string, daemons: Set<DaemonLink>, succeeded: boolean, log: Logger): void {
    if (daemons.size === 0) return;
    const after = succeeded ? "ok" : "failed";
    const releaseAll = () => {
      const done = Promise.all(
        [...daemons].map(async (d) => {
          const r = await d.release(transferId);
          this.metrics.releases.inc({ after, result: r });
          if (r === "released") {
            const fields = { daemon: d.address };
            if (succeeded) log.debug(fields, "released a transfer id the engines left behind");
            else log.info(fields, "released the transfer id of a failed request");
          }
        }),
      );
      this.#cleanups.add(done);
      void done.finally(() => this.#cleanups.delete(done));
    };
    releaseAll();
    if (succeeded) return;
    const late = setTimeout(() => {
      this.#lateTimers.delete(late);
      releaseAll();
    }, LATE_RELEASE_MS);
    late.unref();
    this.#lateTimers.add(late);
  }

  /** Waits for the releases in flight (at shutdown) and drops the late ones. */
  async settle(): Promise<void> {
    for (const t of this.#lateTimers) clearTimeout(t);
    this.#lateTimers.clear();
    await Promise.all([...this.#cleanups]);
  }

  #pick(role: Role): Instance {
    const instance = this.pool.pick(role);
    if (instance === undefined) throw noHealthyInstance(role);
    return instance;
  }

  #headers(x: Exchange): Record<string, string> {
    const h: Record<string, string> = { "content-type": "application/json", "x-request-id": x.requestId };
    if (this.config.forwardAuthorization && x.authorization !== undefined) h.authorization = x.authorization;
    return h;
  }

  /** BatchTransfer PUSH from the prefill node's daemon to the decode node's. */
  async #push(transferId: string, prefill: Instance, decode: Instance, log: Logger): Promise<void> {
    const target = decode.daemon!.peerAddress!;
    const started = performance.now();
    let code: string;
    let message: string;
    let bytes = 0;
    try {
      const r = await prefill.daemon!.push(transferId, target, this.config.transferDeadlineMs);
      code = grpcStatus[r.code] ?? String(r.code);
      message = r.message;
      bytes = r.bytes;
    } catch (err) {
      code = (err as Error).name;
      message = (err as Error).message;
    }
    const seconds = (performance.now() - started) / 1000;
    this.metrics.transfers.inc({ mode: "push", code });
    if (code !== "OK") {
      log.warn({ from: prefill.daemon!.address, to: target, code, err: message }, "KV transfer failed");
      throw transferFailed(transferId, code, message);
    }
    this.metrics.transferBytes.inc({ mode: "push" }, bytes);
    this.metrics.transferSeconds.observe({ mode: "push" }, seconds);
    log.debug({ bytes, seconds, to: target }, "KV pushed");
  }

  /** The client's error for a failed upstream call; an unreachable instance is benched. */
  #upstreamFailure(instance: Instance, err: unknown, timeoutMs: number): Error {
    if (!(err instanceof UpstreamError)) return err as Error;
    switch (err.kind) {
      case "unreachable":
        this.pool.markUnhealthy(instance, err.message);
        return upstreamUnreachable(instance.role, instance.url, err.message);
      case "timeout":
        return upstreamTimeout(instance.role, instance.url, timeoutMs);
      case "too_large":
        return badUpstreamAnswer(instance.role, instance.url, err.message);
      case "aborted":
        return err;
    }
  }
}

/** The prefill's copy of a request: one token, not streamed, KV kept for a remote decode. */
export function prefillRequest(x: Pick<Exchange, "body" | "route">, transferId: string): Record<string, unknown> {
  const body: Record<string, unknown> = {
    ...x.body,
    stream: false,
    max_tokens: 1,
    kv_transfer_params: { transfer_id: transferId, do_remote_decode: true, do_remote_prefill: false },
  };
  if (x.route === "chat") body.max_completion_tokens = 1;
  delete body.stream_options;
  // A floor above one token would make the one-token prefill invalid.
  delete body.min_tokens;
  return body;
}

/** The kv_transfer_params of a prefill answer ({} when it has none); undefined when it is not a JSON object. */
function kvParamsOf(body: Buffer): Record<string, unknown> | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString("utf8"));
  } catch {
    return undefined;
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return undefined;
  const params = (parsed as Record<string, unknown>).kv_transfer_params;
  return typeof params === "object" && params !== null && !Array.isArray(params) ? (params as Record<string, unknown>) : {};
}
