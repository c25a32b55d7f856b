// Every setting the daemon reads: its key (as spelled in mooncake.json), its parser, its
// default, and which other sources may set it — a flag (with its --help), an environment
// variable, vLLM's --kv-transfer-config. A key not in this table is unknown (a warning, never
// an error). The daemon's flags, their help and ConfigInputs all come from this table.
import { metadataBackend, metadataServer, type MetadataBackend, type MetadataConfig } from "./metadata.js";
import {
  durationMs,
  hostPort,
  listenAddress,
  idList,
  integer,
  INT32_MAX,
  MiB,
  oneOf,
  peerList,
  size,
  stringMatching,
} from "./parse.js";
import { flagDefinition, kebab, showBytes, type FlagDefinition, type SettingSpec } from "./settings.js";

export type Role = "prefill" | "decode" | "both";
export type Protocol = "tcp" | "rdma";
export type LogLevel = "trace" | "debug" | "info" | "warn" | "error" | "fatal" | "silent";

export interface KeySpec<T, F extends string = string> extends SettingSpec<T> {
  /** The ConfigInputs field, and so the flag (flagName), that sets it. */
  readonly flag?: F;
  readonly env?: string;
  /** vLLM's --kv-transfer-config may set it. */
  readonly kvTransfer?: true;
}

function spec<T, const F extends string = never>(s: KeySpec<T, F>): KeySpec<T, F> {
  return s;
}

export const DEFAULT_LISTEN_HOST = "127.0.0.1";
/** Largest max_entries accepted. */
export const MAX_ENTRIES_LIMIT = 1 << 20;
/** Largest max_parts_per_entry accepted. */
export const MAX_PARTS_LIMIT = 1 << 16;

const role = oneOf<Role>(
  {
    kv_producer: "prefill",
    kv_consumer: "decode",
    kv_both: "both",
    prefill: "prefill",
    decode: "decode",
    both: "both",
  },
  `one of "kv_producer", "kv_consumer", "kv_both" (or "prefill", "decode", "both")`,
);

const protocol = oneOf<Protocol>({ tcp: "tcp", rdma: "rdma" }, `one of "tcp", "rdma"`);

const LOG_LEVELS: readonly LogLevel[] = ["trace", "debug", "info", "warn", "error", "fatal", "silent"];
const logLevel = oneOf<LogLevel>(
  Object.fromEntries(LOG_LEVELS.map((level) => [level, level])),
  `one of ${LOG_LEVELS.map((level) => `"${level}"`).join(", ")}`,
);

const name = stringMatching(
  /^[\x21-\x7e]{1,256}$/,
  "a non-empty string of at most 256 printable characters without spaces",
);
const keyPrefix = stringMatching(
  /^[\x21-\x7e]{0,255}\/$/,
  'a key prefix of at most 256 printable characters without spaces, ending in "/" (e.g. "kvferry/v1/")',
);
const text = stringMatching(/^[^\x00-\x1f]{1,1024}$/, "a non-empty string of at most 1024 characters");
// Mooncake's TCP examples carry `"device_name": ""`: empty means none.
// Otherwise names of devices (mlx5_0, mlx5_0:1, erdma_0, eth0), comma-separated, spaces around them allowed.
const deviceNames = stringMatching(
  /^(|\s*[A-Za-z0-9_.:-]{1,64}\s*(,\s*[A-Za-z0-9_.:-]{1,64}\s*){0,15})$/,
  'device names separated by commas (e.g. "mlx5_0,mlx5_1", at most 16), or "" for none',
);

export const KEYS = {
  // mooncake.json
  prefill_url: spec({ parse: hostPort }),
  decode_url: spec({ parse: hostPort }),
  metadata_server: spec({
    parse: metadataServer, flag: "metadataServer", env: "KVFERRY_METADATA_SERVER", placeholder: "URL",
    doc: "P2PHANDSHAKE (embedded), HOST:PORT or etcd://H:P[,H:P], redis://H:P, http://H:P/metadata",
    defaultDoc: "P2PHANDSHAKE",
  }),
  metadata_backend: spec({
    parse: metadataBackend, flag: "metadataBackend", env: "KVFERRY_METADATA_BACKEND", placeholder: "KIND",
    doc: "p2p | etcd | redis | http: must agree with --metadata-server",
  }),
  protocol: spec({
    parse: protocol, default: "tcp", flag: "protocol", env: "KVFERRY_PROTOCOL", placeholder: "PROTO",
    doc: "tcp | rdma (the UCX transport, when built with UCX): the same across the cluster",
  }),
  device_name: spec({
    parse: deviceNames, flag: "deviceName", env: "KVFERRY_DEVICE_NAME", placeholder: "DEVICES",
    doc: "rdma: the devices used as rails, comma-separated (mlx5_0,mlx5_1); empty: UCX's choice",
  }),

  // vLLM's KV-transfer fields
  kv_connector: spec({ parse: text, kvTransfer: true }),
  kv_role: spec({
    parse: role, default: "both", flag: "kvRole", kvTransfer: true, placeholder: "ROLE",
    doc: "kv_producer | kv_consumer | kv_both (or prefill | decode | both)",
  }),
  kv_rank: spec({
    parse: integer(0, INT32_MAX - 1), default: 0, flag: "kvRank", kvTransfer: true, placeholder: "N",
    doc: "rank of this instance",
  }),
  kv_parallel_size: spec({
    parse: integer(1, INT32_MAX), default: 1, flag: "kvParallelSize", kvTransfer: true, placeholder: "N",
    doc: "number of instances",
  }),
  kv_buffer_size: spec({
    parse: size(MiB), default: 2 ** 30, show: showBytes, flag: "kvBufferSize", env: "KVFERRY_KV_BUFFER_SIZE", kvTransfer: true,
    placeholder: "BYTES", doc: "lookup buffer capacity: 2e9, 2000000000, 512MiB, 4GB",
  }),

  // kvferry
  listen: spec({
    parse: listenAddress(DEFAULT_LISTEN_HOST),
    default: { host: DEFAULT_LISTEN_HOST, port: 50051 },
    flag: "listen",
    env: "KVFERRY_LISTEN",
    placeholder: "HOST:PORT",
    doc: `client API address (PORT alone means ${DEFAULT_LISTEN_HOST}:PORT; port 0 picks one)`,
  }),
  node_id: spec({
    parse: name, flag: "nodeId", env: "KVFERRY_NODE_ID", placeholder: "ID", doc: "this node's identity", defaultDoc: "HOSTNAME:PORT",
  }),
  log_level: spec({
    parse: logLevel, default: "info", flag: "logLevel", env: "KVFERRY_LOG_LEVEL", placeholder: "LEVEL", doc: LOG_LEVELS.join(" | "),
  }),
  lease_ttl_ms: spec({
    parse: durationMs, default: 120_000, flag: "leaseTtlMs", placeholder: "MS", doc: "lease of an entry whose put names none",
  }),
  put_deadline_ms: spec({
    parse: durationMs, default: 10_000, flag: "putDeadlineMs", placeholder: "MS", doc: "how long a put waits for room",
  }),
  get_wait_ms: spec({
    parse: durationMs, default: 30_000, flag: "getWaitMs", placeholder: "MS", doc: "how long a get waits when it names no wait",
  }),
  // How long a consuming Get holds its entry without a ConfirmConsume (and the most a Get may ask for).
  consume_lease_ms: spec({
    parse: durationMs, default: 30_000, flag: "consumeLeaseMs", placeholder: "MS",
    doc: "how long a consuming get holds its entry unconfirmed, and the most a get may ask for",
  }),
  shutdown_grace_ms: spec({ parse: durationMs, default: 10_000 }),
  // grpc-js takes message limits as int32.
  max_message_bytes: spec({ parse: size(1024, INT32_MAX), default: 64 * MiB }),
  recently_removed: spec({ parse: integer(0, INT32_MAX), default: 10_000 }),
  max_waiters: spec({ parse: integer(1, INT32_MAX), default: 10_000 }),
  // Bounds on what the store indexes (README "Limits"). An entry costs about 1 KiB of JS heap,
  // so the cap keeps a million entries well inside Node's default heap; a part per layer (K
  // and V, a few ranks) stays far below 4096, and Stat lists every part in one message.
  max_entries: spec({
    parse: integer(1, MAX_ENTRIES_LIMIT), default: 65_536, flag: "maxEntries", env: "KVFERRY_MAX_ENTRIES", placeholder: "N",
    doc: "most entries held at once; LRU sealed entries are evicted for a new one",
  }),
  max_parts_per_entry: spec({
    parse: integer(1, MAX_PARTS_LIMIT), default: 4096, flag: "maxPartsPerEntry", env: "KVFERRY_MAX_PARTS_PER_ENTRY",
    placeholder: "N", doc: "most parts in one entry",
  }),
  // Bytes of unary Puts whose message arrived but that wait for room: they sit in process
  // memory, outside the pool. 256 MiB lets four largest (64 MiB) messages wait; 0: never wait.
  max_waiting_put_bytes: spec({
    parse: size(0), default: 256 * MiB, show: showBytes, flag: "maxWaitingPutBytes", env: "KVFERRY_MAX_WAITING_PUT_BYTES",
    placeholder: "BYTES", doc: "bytes of unary puts that may wait for room; past it a put that must wait fails at once",
  }),

  // the data plane and the peer API
  data_listen: spec({
    parse: listenAddress(DEFAULT_LISTEN_HOST), flag: "dataListen", env: "KVFERRY_DATA_LISTEN", placeholder: "HOST:PORT",
    doc: "native data plane", defaultDoc: `prefill_url/decode_url by role, else ${DEFAULT_LISTEN_HOST}:0`,
  }),
  peer_listen: spec({
    parse: listenAddress(DEFAULT_LISTEN_HOST), flag: "peerListen", env: "KVFERRY_PEER_LISTEN", placeholder: "HOST:PORT",
    doc: "peer API", defaultDoc: "the data host, data port + 1",
  }),
  cluster_token: spec({
    parse: text, flag: "clusterToken", env: "KVFERRY_CLUSTER_TOKEN", placeholder: "TOKEN",
    doc: "secret shared by the cluster's daemons (prefer $KVFERRY_CLUSTER_TOKEN: flags show in ps)",
  }),
  connections_per_peer: spec({
    parse: integer(1, 64), default: 4, flag: "connectionsPerPeer", placeholder: "N", doc: "TCP connections to each peer's data plane",
  }),
  io_threads: spec({
    parse: integer(0, 64), default: 0, flag: "ioThreads", placeholder: "N",
    doc: "data-plane I/O threads, shared by incoming and outgoing connections (0: 2 per core, 2 to 8)",
  }),
  transfer_deadline_ms: spec({
    parse: durationMs, default: 30_000, flag: "transferDeadlineMs", placeholder: "MS",
    doc: "default deadline of a BatchTransfer or pulling Get",
  }),
  // An incoming data-plane connection must finish its handshake within this long (the
  // native engine refuses more than 60 s: unauthenticated connections stay short-lived).
  data_handshake_timeout_ms: spec({
    parse: integer(1, 60_000, "milliseconds"), default: 1_000, env: "KVFERRY_DATA_HANDSHAKE_TIMEOUT_MS",
  }),

  // Prometheus /metrics and /health over HTTP; absent: not served.
  metrics_listen: spec({
    parse: listenAddress(DEFAULT_LISTEN_HOST), flag: "metricsListen", env: "KVFERRY_METRICS_LISTEN", placeholder: "HOST:PORT",
    doc: `serve Prometheus /metrics and /health over HTTP here (PORT alone means ${DEFAULT_LISTEN_HOST}:PORT)`, defaultDoc: "off",
  }),

  // The local path (src/daemon/local-path.ts): clients on this node map the pool.
  local_socket: spec({
    parse: stringMatching(/^(none|\/[^\x00-\x1f]{1,106})$/, `an absolute path of at most 107 bytes, or "none"`),
    flag: "localSocket", env: "KVFERRY_LOCAL_SOCKET", placeholder: "PATH",
    doc: 'Unix socket that hands the pool to clients on this node ("none": no local path)',
    defaultDoc: "$XDG_RUNTIME_DIR or /tmp, kvferry-PORT.sock",
  }),
  local_allowed_uids: spec({
    parse: idList, default: [], flag: "localAllowedUids", placeholder: "UIDS",
    doc: "other users whose processes may map the pool (its own user always may)", defaultDoc: "none",
  }),
  local_allowed_gids: spec({
    parse: idList, default: [], flag: "localAllowedGids", placeholder: "GIDS",
    doc: "groups whose processes may map the pool", defaultDoc: "none",
  }),

  // the node registry (src/metadata/)
  metadata_prefix: spec({
    parse: keyPrefix, default: "kvferry/v1/", flag: "metadataPrefix", placeholder: "PREFIX", doc: "key prefix in the backend",
  }),
  metadata_ttl_ms: spec({
    parse: integer(1_000, INT32_MAX, "milliseconds"), default: 10_000, flag: "metadataTtlMs", placeholder: "MS",
    doc: "a node's record lapses this long after its last refresh",
  }),
  metadata_retry_ms: spec({
    parse: integer(0, INT32_MAX, "milliseconds"), default: 0, flag: "metadataRetryMs", placeholder: "MS",
    doc: "keep retrying an unreachable backend at start-up this long (0: exit 3 at once)",
  }),
  peers: spec({
    parse: peerList, default: [], defaultDoc: "none", flag: "peers", env: "KVFERRY_PEERS", multiple: true, placeholder: "HOST:PORT",
    doc: "a peer API to greet at start-up (embedded metadata; repeatable)",
  }),
} as const;

export type Key = keyof typeof KEYS;
export type ValueOf<K extends Key> = (typeof KEYS)[K] extends KeySpec<infer T> ? T : never;

/** The ConfigInputs fields that set a key: the `flag` of each key that has one. */
export type SettingFlag = { [K in Key]: NonNullable<(typeof KEYS)[K]["flag"]> }[Key];

/**
 * What the CLI parsed from flags, every field the flag's text as given: a field per key
 * with a flag (--peer's values joined with commas), and the two that name whole sources.
 */
export type ConfigInputs = {
  /** --config FILE */
  config?: string;
  /** --kv-transfer-config JSON (vLLM's) */
  kvTransferConfig?: string;
} & { [F in SettingFlag]?: string };

export function isKey(key: string): key is Key {
  return Object.hasOwn(KEYS, key);
}

/** `--kv-buffer-size` for `kvBufferSize`. */
export function flagName(field: keyof ConfigInputs): string {
  // --peer is given once per peer; its values arrive joined under `peers`.
  if (field === "peers") return "--peer";
  return `--${kebab(field)}`;
}

/** The keys that have a flag, with it. */
export function keysWithFlags(): Array<[Key, KeySpec<unknown>, SettingFlag]> {
  const out: Array<[Key, KeySpec<unknown>, SettingFlag]> = [];
  for (const key of Object.keys(KEYS) as Key[]) {
    const spec: KeySpec<unknown> = KEYS[key];
    if (spec.flag !== undefined) out.push([key, spec, spec.flag as SettingFlag]);
  }
  return out;
}

/** The daemon's flags that set keys: --listen, --kv-role, ..., --peer. */
export function keyFlags(): Record<string, FlagDefinition> {
  return Object.fromEntries(keysWithFlags().map(([, spec, field]) => [flagName(field).slice(2), flagDefinition(spec)]));
}

/** The inputs of keys' flags out of parseArgs' values (keyed by flag name); --peer's joined with commas. */
export function keyInputs(values: Readonly<Record<string, unknown>>): ConfigInputs {
  const inputs: Record<string, string> = {};
  for (const [, , field] of keysWithFlags()) {
    const value = values[flagName(field).slice(2)];
    if (typeof value === "string") inputs[field] = value;
    else if (Array.isArray(value)) inputs[field] = value.join(",");
  }
  return inputs as ConfigInputs;
}
