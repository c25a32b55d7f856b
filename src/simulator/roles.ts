// The three roles a simulated instance plays, each a way to come by a prompt's KV cache.
//
//   both     computes the KV itself and keeps it: the non-disaggregated reference.
//   prefill  computes the KV, puts it into the local daemon as one entry named by the
//            transfer id (one part per layer, sealed with the last), and answers one token
//            with the kv_transfer_params a decode instance needs.
//   decode   gets the entry from the local daemon (consuming it, pulling it from the
//            prefill's node when told where it is), checks every part's size and every
//            byte against what the prompt gives, and generates from the bytes it received.
//
// A KV that is missing, late or wrong is never papered over by recomputing it: the request
// fails loudly (500, or 504 when the wait ran out) with the transfer id and what was wrong.
import {
  AlreadyExistsError,
  DeadlineExceededError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  ResourceExhaustedError,
  UnavailableError,
} from "../errors.js";
import type { LocalWriter } from "../client/local-path.js";
import type { DaemonLink } from "./daemon-link.js";
import { KvDigest } from "./generation.js";
import { firstDifference, layerBytes, layerSize, locate, partName, type KvLayout } from "./kv.js";
import { ApiError, invalidField } from "./openai.js";

export type RoleName = "prefill" | "decode" | "both";

export const ROLE_NAMES: readonly RoleName[] = ["prefill", "decode", "both"];

/** What a role needs to serve one request. */
export interface RoleRequest {
  /** This request's id (cmpl-…), the transfer id a prefill mints when none is given. */
  requestId: string;
  tokens: Uint32Array;
  kvTransferParams?: Record<string, unknown>;
  /** Fires when the HTTP client goes away. */
  signal: AbortSignal;
}

/** How the KV was come by: its digest (what generation starts from), and what to answer. */
export interface RoleOutcome {
  kvDigest: Buffer;
  /** The transfer id, for logs. */
  transferId?: string;
  /** A cap on generated tokens (a prefill answers exactly one). */
  maxTokens?: number;
  /** Returned to the HTTP client as `kv_transfer_params`. */
  kvTransferParams?: Record<string, unknown>;
}

/** What the KV roles report as they move bytes (SimulatorMetrics counts them). */
export interface KvCounters {
  kvPut(bytes: number): void;
  kvGot(bytes: number): void;
  entryPut(): void;
  entryGot(): void;
}

export interface RoleOptions {
  layout: KvLayout;
  /** The local daemon; required by prefill and decode. */
  daemon?: DaemonLink;
  /** How long a decode waits for the KV to arrive. */
  kvWaitMs: number;
  metrics: KvCounters;
}

export interface Role {
  readonly name: RoleName;
  obtainKv(req: RoleRequest): Promise<RoleOutcome>;
}

/** The role object for `name`. */
export function createRole(name: RoleName, o: RoleOptions): Role {
  switch (name) {
    case "both":
      return { name, obtainKv: (req) => Promise.resolve({ kvDigest: computeDigest(o.layout, req.tokens) }) };
    case "prefill":
      return { name, obtainKv: (req) => prefill(o, req) };
    case "decode":
      return { name, obtainKv: (req) => decode(o, req) };
  }
}

/** The digest of the KV the prompt gives, computed layer by layer (the `both` role). */
function computeDigest(layout: KvLayout, tokens: Uint32Array): Buffer {
  const digest = new KvDigest();
  for (let i = 0; i < layout.layers; i++) digest.update(layerBytes(layout, tokens, i));
  return digest.digest();
}

const PRINTABLE_ID = /^[\x21-\x7e]{1,256}$/;

/** The transfer id a request names: `transfer_id`, else vLLM's `remote_request_id`. */
function namedTransferId(kvp: Record<string, unknown>): string | undefined {
  for (const field of ["transfer_id", "remote_request_id"]) {
    const v = kvp[field];
    if (v === undefined || v === null) continue;
    if (typeof v !== "string" || !PRINTABLE_ID.test(v)) {
      throw invalidField(`kv_transfer_params.${field}`, `expected 1-256 printable ASCII characters without spaces, got ${JSON.stringify(v)}`);
    }
    return v;
  }
  return undefined;
}

async function prefill(o: RoleOptions, req: RoleRequest): Promise<RoleOutcome> {
  const kvp = req.kvTransferParams;
  if (kvp === undefined) {
    throw invalidField(
      "kv_transfer_params",
      "required: this is a prefill instance (--role prefill); it only computes KV for a decode instance. " +
        'Send kv_transfer_params {"do_remote_decode": true, "transfer_id": "..."} (through the proxy), ' +
        "or send whole requests to a --role both instance",
    );
  }
  if (kvp.do_remote_decode !== true) {
    throw invalidField(
      "kv_transfer_params.do_remote_decode",
      `must be true on a prefill instance (it only prefills for a remote decode), got ${JSON.stringify(kvp.do_remote_decode)}`,
    );
  }
  // A request that names no transfer id gets this request's id, as vLLM's prefill does.
  const transferId = namedTransferId(kvp) ?? req.requestId;
  const daemon = o.daemon!;
  const identity = await daemon.identity().catch((err) => {
    throw daemonUnreachable(daemon, transferId, err);
  });
  const layout = o.layout;
  const tokens = req.tokens;
  const digest = new KvDigest();
  let stored = 0;
  let writer: LocalWriter | undefined;
  try {
    // On the daemon's node the layers are written straight into its pool (the local path),
    // else sent inline, a Put per layer.
    if ((await daemon.client.localPoolIfAny()) !== undefined) {
      const parts = Array.from({ length: layout.layers }, (_, i) => ({ name: partName(i), size: layerSize(layout, tokens.length) }));
      writer = await daemon.client.reserveLocal(transferId, parts, { timeoutMs: 60_000 });
    }
    for (let i = 0; i < layout.layers; i++) {
      if (req.signal.aborted) throw new ApiError(499, `transfer ${transferId}: the client went away during prefill`);
      const bytes = layerBytes(layout, tokens, i);
      digest.update(bytes);
      if (writer !== undefined) writer.write(partName(i), bytes);
      else await daemon.client.put(transferId, partName(i), bytes, { seal: i === layout.layers - 1, timeoutMs: 60_000 });
      o.metrics.kvPut(bytes.length);
      stored++;
    }
    await writer?.commit(undefined, { seal: true });
  } catch (err) {
    // Undo a half-written entry, but only one this request created: a first put that
    // fails (the id is in use) leaves someone else's entry alone.
    if (writer !== undefined) writer.abort().catch(() => undefined);
    else if (stored > 0) daemon.client.release(transferId, { timeoutMs: 5000 }).catch(() => undefined);
    if (err instanceof ApiError) throw err;
    throw putFailure(daemon, transferId, err);
  }
  if (req.signal.aborted) {
    // The client left while the last layers went in: nobody will decode this entry.
    daemon.client.release(transferId, { timeoutMs: 5000 }).catch(() => undefined);
    throw new ApiError(499, `transfer ${transferId}: the client went away during prefill`);
  }
  o.metrics.entryPut();
  // Fields this instance does not know are kept, for the decode side.
  const params: Record<string, unknown> = {
    ...kvp,
    transfer_id: transferId,
    do_remote_decode: false,
    do_remote_prefill: true,
    remote_node: identity.nodeId,
  };
  if (identity.peerAddress !== undefined) params.remote_peer_address = identity.peerAddress;
  return { kvDigest: digest.digest(), transferId, maxTokens: 1, kvTransferParams: params };
}

function daemonUnreachable(daemon: DaemonLink, transferId: string, err: unknown): ApiError {
  return new ApiError(
    503,
    `transfer ${transferId}: the kvferry daemon at ${daemon.address} cannot be reached: ${(err as Error).message}`,
    "server_error",
    null,
    "daemon_unavailable",
  );
}

function putFailure(daemon: DaemonLink, transferId: string, err: unknown): ApiError {
  const why = (err as Error).message;
  if (err instanceof AlreadyExistsError || err instanceof FailedPreconditionError) {
    return new ApiError(409, `kv_transfer_params.transfer_id: ${transferId} is already in use in the daemon: ${why}`, "invalid_request_error", "kv_transfer_params.transfer_id", "transfer_id_in_use");
  }
  if (err instanceof InvalidArgumentError) {
    return new ApiError(400, `kv_transfer_params.transfer_id: the daemon refused ${JSON.stringify(transferId)}: ${why}`, "invalid_request_error", "kv_transfer_params.transfer_id", "invalid_value");
  }
  if (err instanceof ResourceExhaustedError) {
    return new ApiError(503, `transfer ${transferId}: no room for the KV in the daemon: ${why}`, "server_error", null, "kv_no_room");
  }
  if (err instanceof UnavailableError) return daemonUnreachable(daemon, transferId, err);
  return new ApiError(500, `transfer ${transferId}: putting the KV into the daemon at ${daemon.address} failed: ${why}`, "server_error", null, "kv_put_failed");
}

/** A loud KV failure on the decode side: 500 unless said otherwise. */
function kvError(transferId: string, message: string, code: string, status = 500): ApiError {
  return new ApiError(status, `KV of transfer ${transferId}: ${message}`, "server_error", null, code);
}

async function decode(o: RoleOptions, req: RoleRequest): Promise<RoleOutcome> {
  const kvp = req.kvTransferParams;
  if (kvp === undefined) {
    throw invalidField(
      "kv_transfer_params",
      "required: this is a decode instance (--role decode); it only continues from a KV that a prefill instance computed. " +
        'Send kv_transfer_params {"do_remote_prefill": true, "transfer_id": "..."} (through the proxy), ' +
        "or send whole requests to a --role both instance",
    );
  }
  if (kvp.do_remote_prefill !== true) {
    throw invalidField(
      "kv_transfer_params.do_remote_prefill",
      `must be true on a decode instance (its KV comes from a remote prefill), got ${JSON.stringify(kvp.do_remote_prefill)}`,
    );
  }
  const transferId = namedTransferId(kvp);
  if (transferId === undefined) {
    throw invalidField("kv_transfer_params.transfer_id", "required: the id under which the prefill instance stored the KV");
  }
  const daemon = o.daemon!;
  const identity = await daemon.identity().catch((err) => {
    throw daemonUnreachable(daemon, transferId, err);
  });
  // Where the KV is: source_node when the proxy names it, else what the prefill answered
  // (its daemon's peer address works without a metadata backend; its node id needs one).
  let source: string | undefined;
  for (const field of ["source_node", "remote_peer_address", "remote_node"]) {
    const v = kvp[field];
    if (v === undefined || v === null || v === "") continue;
    if (typeof v !== "string") throw invalidField(`kv_transfer_params.${field}`, "expected a node id or a peer API address");
    source = v;
    break;
  }
  // The entry is already here when the prefill ran on this node: no pull.
  if (source === identity.nodeId || source === identity.peerAddress) source = undefined;

  const fetched = await fetchEntry(o, daemon, transferId, source);
  let digest: Buffer;
  try {
    digest = await checkKv(o.layout, req.tokens, transferId, fetched.parts);
  } finally {
    await fetched.done();
  }
  o.metrics.entryGot();
  return { kvDigest: digest, transferId };
}

/**
 * Gets (consuming) the sealed entry, waiting up to kvWaitMs; pulls from `source` when given.
 * The entry is consumed once `done` resolves (a local read holds it until then).
 */
async function fetchEntry(
  o: RoleOptions, daemon: DaemonLink, transferId: string, source: string | undefined,
): Promise<{ parts: Map<string, Buffer>; done: () => Promise<void> }> {
  const deadline = Date.now() + o.kvWaitMs;
  const from = source === undefined ? `the daemon at ${daemon.address}` : `node ${source} (through the daemon at ${daemon.address})`;
  for (;;) {
    const waitMs = Math.max(0, deadline - Date.now());
    try {
      // The daemon answers when its wait runs out; timeoutMs only bounds a daemon that hangs.
      // On the daemon's node the layers are read in place (pulled from `source` first when
      // not here), lent until `done`, which consumes the entry; elsewhere they are streamed.
      const loan = await daemon.client.getLocal(transferId, { consume: true, waitMs, source, timeoutMs: waitMs + 60_000 });
      const parts = new Map([...loan.parts.keys()].map((name) => [name, loan.bytes(name)]));
      let bytes = 0;
      for (const b of parts.values()) bytes += b.length;
      o.metrics.kvGot(bytes);
      return { parts, done: () => loan.return() };
    } catch (err) {
      const why = (err as Error).message;
      if (err instanceof DeadlineExceededError) {
        throw kvError(transferId, `did not arrive within ${o.kvWaitMs} ms (--kv-wait-ms) from ${from}: ${why}`, "kv_timeout", 504);
      }
      if (err instanceof NotFoundError && err.reason !== undefined) {
        throw kvError(transferId, `is gone from ${from} (${err.reason}): ${why}`, "kv_gone");
      }
      // With a source, an entry the prefill has not sealed yet is not there to pull: ask again.
      if (err instanceof NotFoundError && source !== undefined && Date.now() < deadline - 100) {
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      if (err instanceof NotFoundError && source !== undefined) {
        throw kvError(transferId, `did not arrive within ${o.kvWaitMs} ms (--kv-wait-ms) from ${from}: ${why}`, "kv_timeout", 504);
      }
      if (err instanceof UnavailableError) {
        throw kvError(transferId, `could not be fetched: ${from} is unreachable: ${why}`, "kv_unavailable");
      }
      throw kvError(transferId, `could not be fetched from ${from}: ${why}`, "kv_fetch_failed");
    }
  }
}

/**
 * Checks that `parts` are exactly the prompt's layers with their sizes and that every byte
 * equals what the prompt gives; returns the digest of the received bytes.
 */
async function checkKv(layout: KvLayout, tokens: Uint32Array, transferId: string, parts: Map<string, Buffer>): Promise<Buffer> {
  const size = layerSize(layout, tokens.length);
  const expected = Array.from({ length: layout.layers }, (_, i) => partName(i));
  const missing = expected.filter((name) => !parts.has(name));
  const extra = [...parts.keys()].filter((name) => !expected.includes(name));
  if (missing.length > 0 || extra.length > 0) {
    const list = (names: string[]) => (names.length > 6 ? `${names.slice(0, 6).join(", ")}, … (${names.length})` : names.join(", "));
    throw kvError(
      transferId,
      `has the wrong parts for ${layout.layers} layers: ` +
        [missing.length ? `missing ${list(missing)}` : "", extra.length ? `unexpected ${list(extra)}` : ""].filter(Boolean).join("; "),
      "kv_mismatch",
    );
  }
  const digest = new KvDigest();
  for (let i = 0; i < layout.layers; i++) {
    // One layer at a time, letting other requests (and /health) run in between: a large
    // KV would otherwise hold the event loop for a second.
    if (i > 0) await new Promise((resolve) => setImmediate(resolve));
    const got = parts.get(partName(i))!;
    if (got.length !== size) {
      throw kvError(
        transferId,
        `layer ${i} (part ${partName(i)}) is ${got.length} bytes, expected ${size} ` +
          `(${tokens.length} prompt tokens × ${size / tokens.length} bytes): the KV is not this prompt's`,
        "kv_mismatch",
      );
    }
    const want = layerBytes(layout, tokens, i);
    const at = firstDifference(got, want);
    if (at >= 0) {
      const where = locate(layout, at);
      throw kvError(
        transferId,
        `layer ${i} (part ${partName(i)}) differs from what the prompt gives at byte offset ${at} ` +
          `(token ${where.token}, ${where.kv} head ${where.head}, dim ${where.dim})`,
        "kv_mismatch",
      );
    }
    digest.update(got);
  }
  return digest.digest();
}
