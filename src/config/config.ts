// One validated, typed Config from mooncake.json, vLLM's --kv-transfer-config, the environment
// and flags. Precedence: flags > --kv-transfer-config > environment > file > defaults.
//
// Every value present in any source is checked, including ones a higher source overrides, so a
// broken file fails today rather than on the day the flag that hid it is dropped. Then the rules
// that span keys: kv_rank below kv_parallel_size, metadata_backend agreeing with
// metadata_server, and the seed's same-node rule for prefill_url and decode_url.
import { hostname } from "node:os";
import { ConfigError } from "../errors.js";
import {
  KEYS,
  type ConfigInputs,
  type Key,
  type KeySpec,
  type LogLevel,
  type Protocol,
  type Role,
  type ValueOf,
} from "./keys.js";
import type { MetadataBackend, MetadataConfig } from "./metadata.js";
import { formatHostPort, type HostPort } from "./parse.js";
import {
  envLayer,
  fileLayer,
  findConfigFile,
  flagLayer,
  kvTransferLayer,
  parseKvTransferConfig,
  readConfigFile,
  type Layer,
} from "./sources.js";

export type { ConfigInputs, LogLevel, Protocol, Role } from "./keys.js";
export type { MetadataBackend, MetadataConfig } from "./metadata.js";

export interface MetadataSettings extends MetadataConfig {
  /** metadata_prefix: every key kvferry writes starts with it; ends in "/". */
  prefix: string;
  /** metadata_ttl_ms: a node's record lapses this long after its last refresh. */
  ttlMs: number;
  /** metadata_retry_ms: how long start-up keeps retrying an unreachable backend (0: fail at once). */
  retryMs: number;
}
export type { HostPort } from "./parse.js";
export { formatHostPort } from "./parse.js";

export interface Config {
  /** The config file used, or "defaults". */
  source: string;
  /** Default: `${os.hostname()}:${listen.port}`. */
  nodeId: string;
  /** Where nodeId came from (a flag, the environment, the file), for errors naming it. */
  nodeIdSource: string;
  /** Where protocol and device_name came from (a file, a flag, the environment), for errors found at start-up. */
  protocolSource: string;
  deviceNameSource: string;
  /** From kv_role: kv_producer → prefill, kv_consumer → decode, kv_both → both. */
  role: Role;
  kvRank: number;
  kvParallelSize: number;
  kvConnector?: string;
  /** The client API. */
  listen: HostPort;
  kvBufferSize: number;
  leaseTtlMs: number;
  putDeadlineMs: number;
  /** Default wait of Get. */
  getWaitMs: number;
  /** How long a consume hold lasts unconfirmed. */
  consumeLeaseMs: number;
  /** Largest unary gRPC message. */
  maxMessageBytes: number;
  /** How many removed ids are remembered. */
  recentlyRemoved: number;
  /** Bound on parked Gets and Puts. */
  maxWaiters: number;
  /** Bound on entries indexed at once (LRU eviction of sealed, unheld entries makes room). */
  maxEntries: number;
  /** Bound on the parts of one entry. */
  maxPartsPerEntry: number;
  /** Bound on the bytes of unary Puts waiting for room. */
  maxWaitingPutBytes: number;
  shutdownGraceMs: number;
  logLevel: LogLevel;
  protocol: Protocol;
  deviceName?: string;
  /** After the same-node rule: identical URLs put decode on port+100. */
  prefillUrl?: HostPort;
  decodeUrl?: HostPort;
  /** This daemon's data address: prefillUrl for prefill and both, decodeUrl for decode. */
  dataAddress?: HostPort;
  /** The node registry: its backend and server, key prefix, record TTL, start-up retry. */
  metadata: MetadataSettings;
  /** Peer API addresses to greet at start-up (the embedded registry learns nodes from them). */
  peers: HostPort[];
  /** The native data plane's listener: data_listen, else dataAddress, else 127.0.0.1:0. */
  dataListen: HostPort;
  /** The peer API (token-authenticated gRPC): peer_listen, else the data host at data port + 1. */
  peerListen: HostPort;
  /** Shared secret every daemon of the cluster presents to its peers; "" when none is set. */
  clusterToken: string;
  connectionsPerPeer: number;
  /** Data-plane I/O threads (epoll loops), shared by incoming and outgoing connections; 0: the engine's default (2 per core, 2 to 8). */
  ioThreads: number;
  /** Default deadline of a BatchTransfer, and of a Get that pulls from a peer. */
  transferDeadlineMs: number;
  /** An incoming data-plane connection must prove the cluster token within this long. */
  dataHandshakeTimeoutMs: number;
  /** Where Prometheus /metrics and /health are served over HTTP; absent: nowhere. */
  metricsListen?: HostPort;
  /** The local path's Unix socket: a path, "none", or absent for the default beside the client port. */
  localSocket?: string;
  localAllowedUids: number[];
  localAllowedGids: number[];
  /** Things worth telling the operator that are not errors, e.g. unknown keys in the file. */
  warnings: string[];
}

/** The seed's offset of the decode side when prefill_url and decode_url are identical. */
export const SAME_NODE_DECODE_OFFSET = 100;
/** The least distance between prefill and decode ports on one host. */
export const SAME_HOST_MIN_PORT_GAP = 50;

/**
 * Builds the Config. The file comes from `inputs.config`, else KVFERRY_CONFIG, else
 * MOONCAKE_CONFIG_PATH; with none, only flags, environment and defaults apply.
 * @throws ConfigError naming the source, key, value and what was expected.
 */
export function loadConfig(inputs: ConfigInputs, env: NodeJS.ProcessEnv = process.env): Config {
  const warnings: string[] = [];
  const path = findConfigFile(inputs, env);
  const file = path === undefined ? undefined : fileLayer(path, readConfigFile(path), warnings);
  const kvTransfer =
    inputs.kvTransferConfig === undefined
      ? undefined
      : kvTransferLayer(parseKvTransferConfig(inputs.kvTransferConfig), warnings);
  const settings = new Settings([flagLayer(inputs), kvTransfer, envLayer(env), file]);

  const role = settings.value("kv_role");
  const { kvRank, kvParallelSize } = rankWithinGroup(settings);
  const metadata = metadataOf(settings);
  const { prefillUrl, decodeUrl } = applySameNodeRule(settings.get("prefill_url"), settings.get("decode_url"));
  const dataAddress = role === "decode" ? decodeUrl : prefillUrl;
  const listen = settings.value("listen");
  const kvConnector = settings.get("kv_connector")?.value;
  const deviceName = settings.get("device_name")?.value || undefined;
  const metricsListen = settings.get("metrics_listen")?.value;
  const dataListen = settings.get("data_listen")?.value ?? (dataAddress ? { ...dataAddress } : { host: "127.0.0.1", port: 0 });
  const peerListen = settings.get("peer_listen")?.value ?? {
    host: dataListen.host,
    port: dataListen.port === 0 ? 0 : dataListen.port + 1,
  };
  if (peerListen.port > 65535) {
    throw new ConfigError(settings.get("data_listen")?.source ?? "data address", "peer_listen", peerListen, "a data port below 65535, or peer_listen set explicitly");
  }

  return {
    source: path ?? "defaults",
    nodeId: settings.get("node_id")?.value ?? `${hostname()}:${listen.port}`,
    nodeIdSource: settings.get("node_id")?.source ?? "defaults (HOSTNAME:PORT of --listen)",
    protocolSource: settings.get("protocol")?.source ?? "defaults",
    deviceNameSource: settings.get("device_name")?.source ?? "defaults",
    role,
    kvRank,
    kvParallelSize,
    ...(kvConnector !== undefined && { kvConnector }),
    listen,
    kvBufferSize: settings.value("kv_buffer_size"),
    leaseTtlMs: settings.value("lease_ttl_ms"),
    putDeadlineMs: settings.value("put_deadline_ms"),
    getWaitMs: settings.value("get_wait_ms"),
    consumeLeaseMs: settings.value("consume_lease_ms"),
    maxMessageBytes: settings.value("max_message_bytes"),
    recentlyRemoved: settings.value("recently_removed"),
    maxWaiters: settings.value("max_waiters"),
    maxEntries: settings.value("max_entries"),
    maxPartsPerEntry: settings.value("max_parts_per_entry"),
    maxWaitingPutBytes: settings.value("max_waiting_put_bytes"),
    shutdownGraceMs: settings.value("shutdown_grace_ms"),
    logLevel: settings.value("log_level"),
    protocol: settings.value("protocol"),
    ...(deviceName !== undefined && { deviceName }),
    ...(prefillUrl && { prefillUrl }),
    ...(decodeUrl && { decodeUrl }),
    ...(dataAddress && { dataAddress: { ...dataAddress } }),
    metadata,
    peers: settings.value("peers"),
    dataListen,
    peerListen,
    clusterToken: settings.get("cluster_token")?.value ?? "",
    connectionsPerPeer: settings.value("connections_per_peer"),
    ioThreads: settings.value("io_threads"),
    transferDeadlineMs: settings.value("transfer_deadline_ms"),
    dataHandshakeTimeoutMs: settings.value("data_handshake_timeout_ms"),
    ...(metricsListen !== undefined && { metricsListen }),
    ...(settings.get("local_socket") !== undefined && { localSocket: settings.value("local_socket") }),
    localAllowedUids: settings.value("local_allowed_uids"),
    localAllowedGids: settings.value("local_allowed_gids"),
    warnings,
  };
}

/** A parsed value and where it came from, for blaming it in a rule that spans keys. */
interface Setting<T> {
  value: T;
  raw: unknown;
  source: string;
}

/** Every key's winning setting, after checking the key's value in every layer that has it. */
class Settings {
  private readonly winners = new Map<Key, Setting<unknown>>();

  /** `layers` in order of precedence, highest first; undefined for a source not in use. */
  constructor(layers: ReadonlyArray<Layer | undefined>) {
    for (const key of Object.keys(KEYS) as Key[]) {
      const spec: KeySpec<unknown> = KEYS[key];
      for (const layer of layers) {
        const found = layer?.get(key);
        if (!found) continue;
        const parsed = spec.parse(found.raw, found.text);
        if (!parsed.ok) throw new ConfigError(found.source, key, found.raw, parsed.expected);
        if (!this.winners.has(key)) {
          this.winners.set(key, { value: parsed.value, raw: found.raw, source: found.source });
        }
      }
    }
  }

  get<K extends Key>(key: K): Setting<ValueOf<K>> | undefined {
    return this.winners.get(key) as Setting<ValueOf<K>> | undefined;
  }

  /** The setting's value, else the key's default (a fresh copy). */
  value<K extends Key>(key: K): ValueOf<K> {
    const found = this.get(key);
    if (found) return found.value;
    const fallback = (KEYS[key] as KeySpec<ValueOf<K>>).default;
    if (fallback === undefined) throw new Error(`config key ${key} has no default`);
    return structuredClone(fallback);
  }
}

function rankWithinGroup(settings: Settings): { kvRank: number; kvParallelSize: number } {
  const kvRank = settings.value("kv_rank");
  const kvParallelSize = settings.value("kv_parallel_size");
  const rank = settings.get("kv_rank");
  // Only a rank someone set can be out of range: the default 0 is below any size.
  if (rank && kvRank >= kvParallelSize) {
    const size = settings.get("kv_parallel_size");
    const sizeFrom = size ? `from ${size.source}` : "the default";
    throw new ConfigError(
      rank.source,
      "kv_rank",
      rank.raw,
      `an integer from 0 to ${kvParallelSize - 1}: below kv_parallel_size ${kvParallelSize} (${sizeFrom})`,
    );
  }
  return { kvRank, kvParallelSize };
}

const KIND_OF_SERVER: Record<MetadataBackend, string> = {
  embedded: `the embedded peer-to-peer metadata ("p2p")`,
  etcd: `an etcd server ("etcd")`,
  redis: `a redis server ("redis")`,
  http: `an http server ("http")`,
};

function metadataOf(settings: Settings): MetadataSettings {
  const server = settings.get("metadata_server");
  const metadata: MetadataSettings = {
    ...(server ? server.value : { backend: "embedded" }),
    prefix: settings.value("metadata_prefix"),
    ttlMs: settings.value("metadata_ttl_ms"),
    retryMs: settings.value("metadata_retry_ms"),
  };
  const backend = settings.get("metadata_backend");
  if (backend && backend.value !== metadata.backend) {
    const expected = server
      ? `a backend that agrees with metadata_server ${JSON.stringify(server.raw)}, ` +
        `which names ${KIND_OF_SERVER[metadata.backend]}`
      : `"p2p" or no metadata_backend when metadata_server is absent (the embedded default), ` +
        `or a metadata_server giving the ${backend.value} server's address`;
    throw new ConfigError(backend.source, "metadata_backend", backend.raw, expected);
  }
  return metadata;
}

/**
 * The seed's rule for prefill and decode on one node: identical URLs move decode to port+100;
 * otherwise ports on one host must be at least 50 apart.
 */
function applySameNodeRule(
  prefill: Setting<HostPort> | undefined,
  decode: Setting<HostPort> | undefined,
): { prefillUrl?: HostPort; decodeUrl?: HostPort } {
  const prefillUrl = prefill && { ...prefill.value };
  const decodeUrl = decode && { ...decode.value };
  if (!prefill || !prefillUrl || !decode || !decodeUrl) return { prefillUrl, decodeUrl };
  if (prefillUrl.host.toLowerCase() !== decodeUrl.host.toLowerCase()) return { prefillUrl, decodeUrl };

  const gap = Math.abs(prefillUrl.port - decodeUrl.port);
  const rule =
    `ports on the same host must be at least ${SAME_HOST_MIN_PORT_GAP} apart ` +
    `(the decode side uses port+${SAME_NODE_DECODE_OFFSET} when prefill_url and decode_url are identical)`;
  if (gap === 0) {
    decodeUrl.port += SAME_NODE_DECODE_OFFSET;
    if (decodeUrl.port > 65535) {
      throw new ConfigError(
        decode.source,
        "decode_url",
        decode.raw,
        `a port of at most ${65535 - SAME_NODE_DECODE_OFFSET} when prefill_url and decode_url are identical: ` +
          `the decode side uses port+${SAME_NODE_DECODE_OFFSET}, and ${formatHostPort(decodeUrl)} is past 65535`,
      );
    }
  } else if (gap < SAME_HOST_MIN_PORT_GAP) {
    throw new ConfigError(
      decode.source,
      "decode_url",
      decode.raw,
      `a port at least ${SAME_HOST_MIN_PORT_GAP} away from prefill_url ${JSON.stringify(prefill.raw)}: ${rule}`,
    );
  }
  return { prefillUrl, decodeUrl };
}
