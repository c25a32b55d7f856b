// One disaggregated completion, from the client's request to the last byte of its answer.
//
//   1. mint a transfer id (kvf-<uuid>) and pick a decode instance (policy; healthy first,
//      never one that is down): with none to pick, the client gets 503 before any prefill
//      computes KV nobody would decode
//   2. pick a prefill instance and send it the request with max_tokens 1 (and
//      max_completion_tokens 1 for chat), stream false, no stream_options, and
//      kv_transfer_params {transfer_id, do_remote_decode: true, do_remote_prefill: false,
//      source_node, source_node_id}; a non-2xx answer goes back to the client as it is
//   3. move the KV to the decode instance's node:
//        push  the daemon holding it BatchTransfers the entry to the decode node's
//        pull  nothing now: the decode side's Get names the prefill daemon as source_node
//        none  nothing: the engines' own connector moves it
//      (nothing either when both daemons are one node, whatever address each was given)
//   4. decode: the original request with kv_transfer_params {...what prefill returned,
//      transfer_id, do_remote_prefill: true, do_remote_decode: false, source_node,
//      source_node_id}; its answer is relayed as it comes (relay.ts)
//
// source_node is the prefill node's daemon peer address and source_node_id its node id,
// sent whenever the prefill instance has a daemon (under push the decode daemon finds the
// entry already local and pulls nothing). An instance that refuses the connection is
// marked down and another instance of its role is tried (for the decode, after moving the
// KV on to that one's node); 503 when every one refuses.
//
// Nothing is left behind. A transfer id is released (releases.ts: Release on each daemon
// that may hold its KV; NOT_FOUND, the usual answer after a decode consumed it, is fine)
// once nothing will use it any more:
//   - a prefill attempt that failed and may have reached its engine: at once, on the
//     prefill's daemon and the decode's. Only a try that provably never reached the engine
//     (a fresh connection refused, nothing written) is exempt; a request sent on a
//     kept-alive connection that was then reset, and whose second try was refused, may
//     have been prefilled by an engine that died before answering. Each prefill attempt
//     mints its own transfer id, so that another instance's attempt never shares the id
//     (two engines on one daemon would collide on it) and a late release of the abandoned
//     one can never remove the KV the request goes on with.
//   - the request's own id (the last prefill attempt's): when the request ends, on every
//     daemon it touched, whatever the end (an engine that did not consume the KV, an error
//     answer, a timeout, the client gone). A prefill that answered 4xx stored nothing and
//     is not asked. Decode attempts share this id (it names the KV they continue from), so
//     a decode instance that may have seen it is released only at the end.
// What failed is released once more a little later (or at shutdown, whichever comes
// first), for KV stored after the proxy gave up on it. A push in flight is waited for (up
// to its deadline) even when the client has gone, so that the release finds the entry
// where the push put it. Releases never hold up the client's answer. The client always
// gets a status and a body: the upstream's, or the proxy's OpenAI-style error.
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
import { withMembers } from "./json-members.js";
import { relay } from "./relay.js";
import { Releaser } from "./releases.js";
import { writeError, writeUpstream } from "./respond.js";
import { fetchAll, send, UpstreamError } from "./upstream.js";

export type CompletionRoute = "completions" | "chat";

/** One client request, parsed. */
export interface Exchange {
  requestId: string;
  route: CompletionRoute;
  /** "/v1/completions" or "/v1/chat/completions". */
  path: string;
  /** The body as the client sent it (a JSON object): what goes upstream, with only the members the proxy sets rewritten. */
  text: string;
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
const CLIENT_GONE = 499;

/** A fresh transfer id. */
function mintTransferId(): string {
  return `kvf-${randomUUID()}`;
}

/** The transfer id a request stands on now (its latest prefill attempt's), and the daemons that may hold its KV. */
interface Held {
  transferId: string | undefined;
  daemons: Set<DaemonLink>;
}

/** Whether two daemon links are one node (one daemon may be named by two addresses). */
export function sameNode(a: DaemonLink | undefined, b: DaemonLink | undefined): boolean {
  if (a === undefined || b === undefined) return false;
  return a === b || (a.nodeId !== undefined && a.nodeId === b.nodeId);
}

/** What kv_transfer_params say of the prefill node: its daemon's peer address and node id. */
export interface SourceNode {
  source_node?: string;
  source_node_id?: string;
}

export class RequestFlow {
  readonly #releases: Releaser;

  constructor(
    private readonly config: ProxyConfig,
    private readonly pool: InstancePool,
    private readonly metrics: ProxyMetrics,
    private readonly log: Logger,
  ) {
    this.#releases = new Releaser(metrics);
  }

  /** Serves one completion to its end. Never throws. */
  async run(x: Exchange): Promise<FlowResult> {
    const held: Held = { transferId: undefined, daemons: new Set() };
    const requestLog = this.log.child({ requestId: x.requestId });
    const idLog = () => (held.transferId === undefined ? requestLog : requestLog.child({ transferId: held.transferId }));
    let result: FlowResult;
    try {
      result = await this.#serve(x, held, requestLog);
    } catch (err) {
      const log = idLog();
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
    if (held.transferId !== undefined) {
      this.#releases.release(held.transferId, held.daemons, result.outcome === "ok" ? "ok" : "failed", idLog());
    }
    return result;
  }

  async #serve(x: Exchange, held: Held, requestLog: Logger): Promise<FlowResult> {
    // 1. The decode side first: when none can be had, no prefill computes KV for nobody.
    const decodesTried = new Set<Instance>();
    let decode = this.#pick("decode", decodesTried);
    let endDecode = this.pool.begin(decode);
    try {
      // 2. Prefill.
      const headers = this.#headers(x);
      const prefilled = await this.#prefill(x, headers, held, decode, requestLog);
      if ("passed" in prefilled) return prefilled.passed;
      const { prefill, returned } = prefilled;
      const transferId = held.transferId!;
      const touched = held.daemons;
      const log = requestLog.child({ transferId });
      const source = sourceOf(prefill);
      /** The daemon that holds the KV now. */
      let kvAt = prefill.daemon;
      for (;;) {
        // 3. The KV moved to the decode instance's node.
        if (this.config.transfer === "push" && !sameNode(kvAt, decode.daemon)) {
          touch(touched, decode.daemon!);
          await this.#push(transferId, kvAt!, decode, log);
          kvAt = decode.daemon;
        }
        if (x.signal.aborted) return { status: CLIENT_GONE, outcome: "aborted" };
        // Under pull the decode node fetches it; under none its engine may have.
        if (decode.daemon !== undefined) touch(touched, decode.daemon);
        const params: Record<string, unknown> = {
          ...returned,
          transfer_id: transferId,
          do_remote_prefill: true,
          do_remote_decode: false,
          ...source,
        };
        const decodeBody = withMembers(x.text, { kv_transfer_params: params });

        // 4. Decode, relayed as it comes.
        let up;
        try {
          up = await send({
            method: "POST", url: decode.url + x.path, headers, body: Buffer.from(decodeBody),
            signal: x.signal, timeoutMs: this.config.decodeTimeoutMs,
          });
        } catch (err) {
          if (err instanceof UpstreamError && err.kind === "refused") {
            // It takes no requests now: another decode instance gets it (and the KV). One
            // that may have seen it before it died (err.reached) is in `touched` already:
            // the id is released there when the request ends.
            this.pool.requestFailed(decode, "refused", err.message);
            decodesTried.add(decode);
            const next = this.#pick("decode", decodesTried);
            log.warn({ decode: decode.url, next: next.url, err: err.message }, "decode instance refused the connection: trying another");
            endDecode();
            decode = next;
            endDecode = this.pool.begin(decode);
            continue;
          }
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
          // One broken stream says nothing of the next request: the instance stays in service.
          log.warn({ decode: decode.url }, "decode stream broke off after its headers went out");
          return { status, outcome: "stream_failed" };
        }
        return { status, outcome: status >= 200 && status <= 299 ? "ok" : "upstream_status" };
      }
    } finally {
      endDecode();
    }
  }

  /**
   * Sends the prefill (to another instance when one refuses the connection), each attempt
   * under a fresh transfer id, which `held` follows. Resolves to the instance and the
   * kv_transfer_params it returned, or to the result of passing its non-2xx answer through.
   */
  async #prefill(
    x: Exchange, headers: Record<string, string>, held: Held, decode: Instance, requestLog: Logger,
  ): Promise<{ prefill: Instance; returned: Record<string, unknown> } | { passed: FlowResult }> {
    const tried = new Set<Instance>();
    for (;;) {
      const prefill = this.#pick("prefill", tried);
      const transferId = mintTransferId();
      held.transferId = transferId;
      held.daemons = new Set();
      const log = requestLog.child({ transferId });
      // Where KV of an attempt that reached the engine may be: the prefill's node, and the
      // decode's (an engine's own connector may move KV there).
      const mayHold = new Set<DaemonLink>();
      for (const d of [prefill.daemon, decode.daemon]) if (d !== undefined) touch(mayHold, d);
      const body = Buffer.from(prefillRequest(x, transferId, sourceOf(prefill)));
      const started = performance.now();
      const end = this.pool.begin(prefill);
      let answer: Awaited<ReturnType<typeof fetchAll>>;
      try {
        answer = await fetchAll({
          method: "POST", url: prefill.url + x.path, headers, body,
          signal: x.signal, timeoutMs: this.config.prefillTimeoutMs, limit: PREFILL_ANSWER_LIMIT,
        });
      } catch (err) {
        // Unless it provably never reached the engine, the attempt may have left KV.
        const reached = !(err instanceof UpstreamError) || err.reached;
        if (err instanceof UpstreamError && err.kind === "refused") {
          this.pool.requestFailed(prefill, "refused", err.message);
          tried.add(prefill);
          log.warn({ prefill: prefill.url, err: err.message, reached }, "prefill instance refused the connection: trying another");
          if (reached) {
            // Nothing uses this id any more: the next attempt runs under its own.
            this.#releases.release(transferId, mayHold, "failed", log);
            held.transferId = undefined;
          }
          continue;
        }
        for (const d of mayHold) touch(held.daemons, d);
        throw this.#upstreamFailure(prefill, err, this.config.prefillTimeoutMs);
      } finally {
        end();
      }
      this.metrics.prefillLatency.observe({ url: prefill.url }, (performance.now() - started) / 1000);
      // A prefill that refused the request (4xx) stored nothing; any other answer may have.
      if (!(answer.status >= 400 && answer.status <= 499)) for (const d of mayHold) touch(held.daemons, d);
      if (answer.status < 200 || answer.status > 299) {
        log.info({ status: answer.status, prefill: prefill.url }, "prefill refused the request: passed through");
        writeUpstream(x.res, answer.status, answer.headers, answer.body);
        return { passed: { status: answer.status, outcome: "upstream_status" } };
      }
      const returned = kvParamsOf(answer.body);
      if (returned === undefined) throw badUpstreamAnswer("prefill", prefill.url, "its 2xx body is not a JSON object");
      return { prefill, returned };
    }
  }

  /** At shutdown: runs the late releases now (each bounded), and waits for every release in flight. */
  settle(): Promise<void> {
    return this.#releases.settle();
  }

  /** An instance of the role (healthy first, never one that is down, none of `tried`). @throws 503 */
  #pick(role: Role, tried: ReadonlySet<Instance>): Instance {
    const instance = this.pool.pick(role, tried);
    if (instance !== undefined) return instance;
    const all = role === "prefill" ? this.pool.prefill : this.pool.decode;
    if (all.length === 0) throw noHealthyInstance(role, "none is known (discovery has not found one, or every one left)");
    const down = all.find((i) => i.health === "down");
    throw noHealthyInstance(role, `every one is down (${down?.url}: ${down?.lastError ?? "connection refused"})`);
  }

  #headers(x: Exchange): Record<string, string> {
    const h: Record<string, string> = { "content-type": "application/json", "x-request-id": x.requestId };
    if (this.config.forwardAuthorization && x.authorization !== undefined) h.authorization = x.authorization;
    return h;
  }

  /** BatchTransfer PUSH from the daemon holding the KV (`from`) to the decode node's. */
  async #push(transferId: string, from: DaemonLink, decode: Instance, log: Logger): Promise<void> {
    const target = decode.daemon!.peerAddress!;
    const started = performance.now();
    let code: string;
    let message: string;
    let bytes = 0;
    try {
      const r = await from.push(transferId, target, this.config.transferDeadlineMs);
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
      log.warn({ from: from.address, to: target, code, err: message }, "KV transfer failed");
      throw transferFailed(transferId, code, message);
    }
    this.metrics.transferBytes.inc({ mode: "push" }, bytes);
    this.metrics.transferSeconds.observe({ mode: "push" }, seconds);
    log.debug({ bytes, seconds, to: target }, "KV pushed");
  }

  /**
   * The client's error for a failed upstream call. An instance whose connection was refused
   * or reset is benched; a timeout is this request's trouble, not the instance's.
   */
  #upstreamFailure(instance: Instance, err: unknown, timeoutMs: number): Error {
    if (!(err instanceof UpstreamError)) return err as Error;
    switch (err.kind) {
      case "refused":
      case "unreachable":
        this.pool.requestFailed(instance, err.kind === "refused" ? "refused" : "reset", err.message);
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

/** Records that the request may have left its KV on `daemon` (one link per node). */
function touch(touched: Set<DaemonLink>, daemon: DaemonLink): void {
  for (const d of touched) if (sameNode(d, daemon)) return;
  touched.add(daemon);
}

/** source_node / source_node_id of a prefill instance: its daemon's, when it has one that answered. */
function sourceOf(prefill: Instance): SourceNode {
  const d = prefill.daemon;
  if (d?.peerAddress === undefined) return {};
  return { source_node: d.peerAddress, ...(d.nodeId === undefined ? {} : { source_node_id: d.nodeId }) };
}

/** The prefill's copy of a request (its text): one token, not streamed, KV kept for a remote decode. */
export function prefillRequest(x: Pick<Exchange, "text" | "route">, transferId: string, source: SourceNode = {}): string {
  return withMembers(
    x.text,
    {
      stream: false,
      max_tokens: 1,
      ...(x.route === "chat" && { max_completion_tokens: 1 }),
      kv_transfer_params: { transfer_id: transferId, do_remote_decode: true, do_remote_prefill: false, ...source },
    },
    // A floor above one token would make the one-token prefill invalid.
    ["stream_options", "min_tokens"],
  );
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
