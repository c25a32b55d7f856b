// A node's record in the registry, and its JSON form (the same in every backend).
//
// Decoding is strict about what kvferry needs (ids and addresses) and lenient about the
// rest, so a record written by a newer version with more fields still reads.
import { hostPortFromText } from "../config/parse.js";

export interface TransportInfo {
  /** "tcp" today; "rdma" once its transport lands. */
  name: string;
  /** Transport parameters an operator wants to see, e.g. { connectionsPerPeer: 4 }. */
  params: Record<string, string | number | boolean>;
}

export type EngineRole = "prefill" | "decode" | "both";
export const ENGINE_ROLES: readonly EngineRole[] = ["prefill", "decode", "both"];

/** An inference engine on the node that announced itself to its daemon (AnnounceEngine). */
export interface EngineRecord {
  /** Its OpenAI-compatible base URL without a trailing slash (engineUrlProblem says what passes). */
  url: string;
  role: EngineRole;
  /** The model names it serves (possibly none). */
  models: string[];
}

/** Engines one node publishes at most: a daemon refuses more, a reader drops the rest. */
export const MAX_ENGINES_PER_NODE = 64;
/** Model names per engine at most. */
export const MAX_MODELS_PER_ENGINE = 16;
const URL_MAX = 1024;

/**
 * What is wrong with `text` as an engine's base URL, or undefined when it is one: http(s),
 * a host that others can dial (not a wildcard), no query, fragment or credentials, at most
 * 1024 characters.
 */
export function engineUrlProblem(text: string): string | undefined {
  const expected = `expected an http(s) base URL such as "http://10.0.0.5:8100" (no query, fragment or credentials, at most ${URL_MAX} characters)`;
  if (text.length === 0 || text.length > URL_MAX) return expected;
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return expected;
  }
  if ((url.protocol !== "http:" && url.protocol !== "https:") || url.hostname === "") return expected;
  if (url.search !== "" || url.hash !== "" || url.username !== "" || url.password !== "") return expected;
  if (url.hostname === "0.0.0.0" || url.hostname === "[::]") return `${expected}; ${url.hostname} is a wildcard, not an address to dial`;
  return undefined;
}

/** The URL as engines are compared and published: no trailing slash. */
export function normalEngineUrl(text: string): string {
  const url = new URL(text);
  return `${url.protocol}//${url.host}${url.pathname.replace(/\/+$/, "")}`;
}

export const isModelName = (v: unknown): v is string => typeof v === "string" && /^[\x21-\x7e]{1,256}$/.test(v);

export interface NodeRecord {
  nodeId: string;
  hostname: string;
  /** "host:port" of the client API (kvferry.v1.KvFerry); "" when a record has none that is one. */
  clientAddress: string;
  /** "host:port" of the peer API (kvferry.v1.KvFerryPeer): what BatchTransfer targets. */
  peerAddress: string;
  /** "host:port" of the native data plane. */
  dataAddress: string;
  transports: TransportInfo[];
  poolBytes: number;
  poolUsedBytes: number;
  version: string;
  /** When the daemon started (ms since the epoch). */
  startedAt: number;
  /**
   * The node's last sign of life (ms since the epoch): when its record was last written,
   * or (etcd, when listed) when its lease was last kept alive.
   */
  updatedAt: number;
  /** Inference engines on this node, as they announced themselves (at most MAX_ENGINES_PER_NODE). */
  engines: EngineRecord[];
}

export function encodeNode(node: NodeRecord): string {
  return JSON.stringify(node);
}

/** The record without its heartbeat (updatedAt), to tell a change from a mere refresh. */
export function contentOf(node: NodeRecord): string {
  return encodeNode({ ...node, updatedAt: 0 });
}

/** Order of listings: by node id. */
export function byNodeId(a: { nodeId: string }, b: { nodeId: string }): number {
  return a.nodeId < b.nodeId ? -1 : a.nodeId > b.nodeId ? 1 : 0;
}

const isText = (v: unknown): v is string => typeof v === "string" && v.length > 0 && v.length <= 1024;
const isNodeId = (v: unknown): v is string => typeof v === "string" && /^[\x21-\x7e]{1,256}$/.test(v);
const MAX_TRANSPORTS = 8;
const MAX_PARAMS = 32;
/** A text parameter's longest value (rdma's connectionInfo: UCX worker addresses of up to 16 rails). */
const MAX_PARAM_CHARS = 64 << 10;

/** At most MAX_PARAMS scalar parameters; anything else in a record's params is dropped. */
function paramsOf(raw: unknown): TransportInfo["params"] {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) return {};
  const scalars = Object.entries(raw).filter(
    ([k, v]) => k.length <= 128 && (typeof v === "number" || typeof v === "boolean" || (typeof v === "string" && v.length <= MAX_PARAM_CHARS)),
  );
  return Object.fromEntries(scalars.slice(0, MAX_PARAMS)) as TransportInfo["params"];
}
const isCount = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

/** Good engine entries of a record, at most MAX_ENGINES_PER_NODE; anything else is dropped. */
function enginesOf(raw: unknown): EngineRecord[] {
  if (!Array.isArray(raw)) return [];
  const out: EngineRecord[] = [];
  for (const e of raw.slice(0, MAX_ENGINES_PER_NODE)) {
    if (typeof e !== "object" || e === null) continue;
    const { url, role, models } = e as Record<string, unknown>;
    if (typeof url !== "string" || engineUrlProblem(url) !== undefined) continue;
    if (!ENGINE_ROLES.includes(role as EngineRole)) continue;
    const names = Array.isArray(models) ? models.slice(0, MAX_MODELS_PER_ENGINE).filter(isModelName) : [];
    out.push({ url: normalEngineUrl(url), role: role as EngineRole, models: names });
  }
  return out;
}

/**
 * The record in `text`, or an Error saying what is wrong with it (the caller logs it and
 * skips the record: one bad record must not hide the others).
 */
export function decodeNode(text: string): NodeRecord | Error {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    return new Error(`not JSON: ${(e as Error).message}`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) return new Error("not a JSON object");
  const o = v as Record<string, unknown>;
  if (!isNodeId(o.nodeId)) return new Error("nodeId is missing or not 1-256 printable characters without spaces");
  // Only "host:port": a record decides where this daemon dials (and sends the cluster
  // token), and where a proxy dials its engines' daemon, so nothing else — a unix: socket,
  // a URL, a name gRPC cannot parse — may come out of a backend.
  // dataAddress may have port 0: over rdma UCX listens on no port of ours (transports says how to reach it).
  for (const key of ["peerAddress", "dataAddress"] as const) {
    if (typeof o[key] !== "string" || hostPortFromText(o[key] as string, key === "dataAddress" ? 0 : 1) === undefined) {
      return new Error(`${key} is missing or not "host:port"`);
    }
  }
  const transports = Array.isArray(o.transports)
    ? o.transports
        .slice(0, MAX_TRANSPORTS)
        .filter((t): t is Record<string, unknown> => typeof t === "object" && t !== null && isText((t as Record<string, unknown>).name))
        .map((t) => ({ name: t.name as string, params: paramsOf(t.params) }))
    : [];
  return {
    nodeId: o.nodeId as string,
    hostname: isText(o.hostname) ? o.hostname : "",
    clientAddress: typeof o.clientAddress === "string" && hostPortFromText(o.clientAddress) !== undefined ? o.clientAddress : "",
    peerAddress: o.peerAddress as string,
    dataAddress: o.dataAddress as string,
    transports,
    poolBytes: isCount(o.poolBytes) ? o.poolBytes : 0,
    poolUsedBytes: isCount(o.poolUsedBytes) ? o.poolUsedBytes : 0,
    version: isText(o.version) ? o.version : "",
    startedAt: isCount(o.startedAt) ? o.startedAt : 0,
    updatedAt: isCount(o.updatedAt) ? o.updatedAt : 0,
    engines: enginesOf(o.engines),
  };
}
