// `kvferry proxy`'s configuration: flags → one validated, typed ProxyConfig. Its settings,
// their flags, --help and defaults are one table, PROXY_SETTINGS.
//
// Every refusal is a ConfigError whose source is the flag (`--prefill`, `--listen`, ...),
// so the CLI prints the flag, the value and what was expected, and exits 2. Nothing is
// hard-coded: instances and their daemons come from the command line (or its --config
// file), or are discovered (discovery.ts) in the node registry that the metadata settings
// name (--metadata-server, or the file's metadata_server as in mooncake.json) or from a
// daemon's ListNodes (--daemon).
import { readFileSync } from "node:fs";
import { ConfigError } from "../errors.js";
import {
  accept, durationMs, formatHostPort, hostPortFromText, integer, INT32_MAX, listenAddress, MiB, refuse, size, type HostPort, type Parser,
} from "../config/parse.js";
import { loadConfig, type LogLevel, type MetadataSettings } from "../config/config.js";
import { DEFAULT_LISTEN_HOST, isKey, KEYS } from "../config/keys.js";
import { kebab, setting, settingValue, showBytes, snake, type SettingSpec, type SettingValue, type TableInputs } from "../config/settings.js";

export type Role = "prefill" | "decode";
export type PolicyName = "round-robin" | "least-outstanding";
/**
 * How the KV reaches the decode side: `push` (the proxy asks the prefill node's daemon to
 * BatchTransfer it to the decode node's daemon), `pull` (the decode side's Get names the
 * prefill daemon as its source), `none` (the engines' own connector moves it).
 */
export type TransferMode = "push" | "pull" | "none";

/** One inference engine instance: its OpenAI base URL and its node's daemon (client API). */
export interface InstanceSpec {
  role: Role;
  /** Base URL without a trailing slash, e.g. http://10.0.0.5:8100 or http://h:p/prefix. */
  url: string;
  /** "host:port" of the kvferry daemon's client API on the instance's node. */
  daemon?: string;
}

/**
 * Where the proxy discovers instances: the node registry (etcd, redis, http), or a daemon's
 * ListNodes (the way with embedded metadata), polled every health interval.
 */
export type DiscoverySource =
  | { kind: "registry"; metadata: MetadataSettings }
  | { kind: "daemon"; address: string };

export interface ProxyConfig {
  listen: HostPort;
  /** Absent: only the configured instances. A role with configured instances ignores discovered ones. */
  discovery?: DiscoverySource;
  prefill: InstanceSpec[];
  decode: InstanceSpec[];
  policy: PolicyName;
  transfer: TransferMode;
  healthIntervalMs: number;
  /** Timeout of one health check (GET /health and the daemon's GetServerInfo). */
  healthTimeoutMs: number;
  /** Whole prefill call (its answer is one token). */
  prefillTimeoutMs: number;
  /** Decode: time to the response headers, and the longest silence between two body chunks. */
  decodeTimeoutMs: number;
  /**
   * Deadline of one BatchTransfer (push). The decode side's wait for the KV is its
   * engine's own setting (e.g. `kvferry simulate --kv-wait-ms`); the proxy sends none.
   */
  transferDeadlineMs: number;
  forwardAuthorization: boolean;
  /** Largest request body accepted (413 above). */
  maxBodyBytes: number;
  /** How long SIGTERM waits for in-flight requests before closing them. */
  drainMs: number;
  logLevel: LogLevel;
}

/** Health checks more often than this would load the instances for no gain. */
export const MIN_HEALTH_INTERVAL_MS = 100;
const POLICIES: readonly PolicyName[] = ["round-robin", "least-outstanding"];
const TRANSFERS: readonly TransferMode[] = ["push", "pull", "none"];
const LOG_LEVELS: readonly LogLevel[] = ["trace", "debug", "info", "warn", "error", "fatal", "silent"];
const INSTANCE_EXPECTED =
  "URL[=DAEMON]: an http(s) base URL such as http://127.0.0.1:8100, optionally followed by " +
  "=HOST:PORT, the client API of the kvferry daemon on that instance's node";
const DAEMON_EXPECTED = "HOST:PORT, the client API of a kvferry daemon whose ListNodes lists the nodes";

/** One of `choices`, exactly as spelled. */
function exactly<T extends string>(choices: readonly T[]): Parser<T> {
  return (raw) => ((choices as readonly unknown[]).includes(raw) ? accept(raw as T) : refuse(`one of ${choices.join(" | ")}`));
}

/** Checked elsewhere: the instances against --transfer (instances()), the metadata settings by the daemon's configuration. */
const asGiven: Parser<unknown> = (raw) => accept(raw);

const daemonAddress: Parser<string> = (raw) => {
  const hp = typeof raw === "string" ? hostPortFromText(raw) : undefined;
  return hp === undefined ? refuse(DAEMON_EXPECTED) : accept(formatHostPort(hp));
};

/**
 * Every proxy setting, keyed by its ProxyInputs field: its flag is the field in kebab-case
 * (--health-interval-ms), its key in a --config file the field in snake_case
 * (health_interval_ms). The flags, their --help and the defaults come from here.
 */
export const PROXY_SETTINGS = {
  listen: setting({
    parse: listenAddress(DEFAULT_LISTEN_HOST), default: { host: DEFAULT_LISTEN_HOST, port: 8000 }, placeholder: "HOST:PORT",
    doc: `where to listen (PORT alone means ${DEFAULT_LISTEN_HOST}:PORT; port 0 picks one)`,
  }),
  prefill: setting({
    parse: asGiven, multiple: true, placeholder: "URL[=DAEMON]",
    doc: "a prefill instance's base URL, = the client API HOST:PORT of its node's kvferry daemon (repeatable; at least one unless discovered); given, discovered prefill instances are ignored",
  }),
  decode: setting({
    parse: asGiven, multiple: true, placeholder: "URL[=DAEMON]",
    doc: "a decode instance, the same way (repeatable; at least one unless discovered); given, discovered decode instances are ignored",
  }),
  policy: setting({ parse: exactly(POLICIES), default: "least-outstanding", placeholder: "NAME", doc: POLICIES.join(" | ") }),
  transfer: setting({
    parse: exactly(TRANSFERS), default: "push", placeholder: "MODE",
    doc: "push (the prefill daemon pushes the KV) | pull (the decode side pulls it) | none (the engines move it)",
  }),
  healthIntervalMs: setting({
    parse: integer(MIN_HEALTH_INTERVAL_MS, INT32_MAX, "milliseconds"), default: 2000, placeholder: "MS",
    doc: "how often every instance and daemon is checked",
  }),
  prefillTimeoutMs: setting({ parse: durationMs, default: 120_000, placeholder: "MS", doc: "the whole prefill call" }),
  decodeTimeoutMs: setting({
    parse: durationMs, default: 120_000, placeholder: "MS", doc: "decode: time to its first byte, and the longest silence mid-stream",
  }),
  transferDeadlineMs: setting({ parse: durationMs, default: 30_000, placeholder: "MS", doc: "deadline of one KV push" }),
  forwardAuthorization: setting({
    parse: asGiven, boolean: true, placeholder: "", doc: "send the client's Authorization header upstream", defaultDoc: "none is sent",
  }),
  maxBodyBytes: setting({
    parse: size(1, 1 << 30), default: 16 * MiB, show: showBytes, placeholder: "BYTES", doc: "largest request body, 413 above",
  }),
  drainMs: setting({ parse: durationMs, default: 30_000, placeholder: "MS", doc: "how long SIGTERM waits for requests in flight" }),
  logLevel: setting({ parse: exactly(LOG_LEVELS), default: "info", placeholder: "LEVEL", doc: LOG_LEVELS.join(" | ") }),
  metadataServer: setting({
    parse: asGiven, placeholder: "URL",
    doc: "discover instances in this node registry (etcd HOST:PORT or etcd://…, redis://…, http://…/metadata): the engines the daemons publish; also the --config file's metadata_server, $KVFERRY_METADATA_SERVER",
  }),
  metadataBackend: setting({
    parse: asGiven, placeholder: "NAME", doc: "etcd | redis | http | p2p, as the daemons' (must agree with --metadata-server)",
  }),
  metadataPrefix: setting({
    parse: asGiven, placeholder: "PREFIX", doc: "the daemons' key prefix in the registry", defaultDoc: KEYS.metadata_prefix.default,
  }),
  daemon: setting({
    parse: daemonAddress, placeholder: "HOST:PORT",
    doc: "discover instances through this daemon's ListNodes, polled every health interval (the way with embedded metadata); wins over --metadata-server",
  }),
};

type ProxyField = keyof typeof PROXY_SETTINGS;
/** The flags as parsed text (main.ts), every one optional; --prefill and --decode repeated. */
export type ProxyInputs = TableInputs<typeof PROXY_SETTINGS>;

/** Parses `URL[=DAEMON]`; undefined when either half is malformed. */
export function parseInstance(role: Role, text: string): InstanceSpec | undefined {
  const eq = text.indexOf("=");
  const urlText = eq < 0 ? text : text.slice(0, eq);
  const daemonText = eq < 0 ? undefined : text.slice(eq + 1);
  let url: URL;
  try {
    url = new URL(urlText);
  } catch {
    return undefined;
  }
  if ((url.protocol !== "http:" && url.protocol !== "https:") || url.hostname === "") return undefined;
  if (url.search !== "" || url.hash !== "" || url.username !== "" || url.password !== "") return undefined;
  let daemon: string | undefined;
  if (daemonText !== undefined) {
    const hp = hostPortFromText(daemonText);
    if (hp === undefined) return undefined;
    daemon = formatHostPort(hp);
  }
  const base = `${url.protocol}//${url.host}${url.pathname.replace(/\/+$/, "")}`;
  return { role, url: base, daemon };
}

/** Where each setting came from, so that a refusal names the flag or the file's key. */
class Origins {
  constructor(private readonly file: string | undefined, private readonly fromFile: ReadonlySet<ProxyField>) {}

  refuse(field: ProxyField, value: unknown, expected: string): ConfigError {
    if (this.file !== undefined && this.fromFile.has(field)) return new ConfigError(this.file, snake(field), value, expected);
    return new ConfigError(`--${kebab(field)}`, kebab(field), value, expected);
  }
}

/** Read from the file by the daemon's configuration (metadata keys), not as proxy settings. */
const METADATA_FIELDS: ReadonlySet<ProxyField> = new Set(["metadataServer", "metadataBackend", "metadataPrefix"]);

function instances(role: Role, list: string[] | undefined, transfer: TransferMode, origins: Origins, discovering: boolean): InstanceSpec[] {
  if (list === undefined || list.length === 0) {
    if (discovering) return [];
    throw origins.refuse(
      role, undefined,
      `at least one ${role} instance: --${role} ${INSTANCE_EXPECTED} (or discover them: --metadata-server URL, or --daemon HOST:PORT)`,
    );
  }
  const out: InstanceSpec[] = [];
  const seen = new Set<string>();
  for (const text of list) {
    const spec = parseInstance(role, text);
    if (spec === undefined) throw origins.refuse(role, text, INSTANCE_EXPECTED);
    if (seen.has(spec.url)) throw origins.refuse(role, text, `each ${role} URL once (${spec.url} is repeated)`);
    seen.add(spec.url);
    if (transfer !== "none" && spec.daemon === undefined) {
      throw origins.refuse(
        role, text,
        `URL=DAEMON: --transfer ${transfer} needs the kvferry daemon (client API HOST:PORT) of every instance's node, ` +
          `e.g. ${spec.url}=127.0.0.1:50051 (or --transfer none when the engines move the KV themselves)`,
      );
    }
    out.push(spec);
  }
  return out;
}

/**
 * A --config file: a JSON object whose keys are the flags' names in snake_case
 * (`prefill`, `decode` as arrays of "URL[=DAEMON]", `health_interval_ms`, ...). Numbers may
 * be JSON numbers. The daemon's keys (mooncake.json's, config/keys.ts) are left to the
 * daemon's configuration, which reads the metadata settings from them, so one mooncake.json
 * serves both; any other key is refused (a typo must not pass unnoticed).
 */
export function proxyInputsFromFile(path: string): { inputs: ProxyInputs; keys: Set<ProxyField> } {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new ConfigError(path, "(file)", undefined, `a readable JSON file (${(err as Error).message})`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new ConfigError(path, "(file)", raw, "a JSON object");
  const byKey = new Map((Object.keys(PROXY_SETTINGS) as ProxyField[]).map((field) => [snake(field), field]));
  const inputs: Record<string, unknown> = {};
  const keys = new Set<ProxyField>();
  for (const [key, value] of Object.entries(raw)) {
    const field = byKey.get(key);
    if ((field === undefined || METADATA_FIELDS.has(field)) && isKey(key)) continue; // the daemon's key
    if (field === undefined) throw new ConfigError(path, key, value, `one of the keys ${[...byKey.keys()].join(", ")}`);
    const setting: SettingSpec<unknown> = PROXY_SETTINGS[field];
    if (setting.multiple) {
      if (!Array.isArray(value) || !value.every((v) => typeof v === "string")) {
        throw new ConfigError(path, key, value, `an array of "${setting.placeholder}" strings`);
      }
      inputs[field] = value;
    } else if (setting.boolean) {
      if (typeof value !== "boolean") throw new ConfigError(path, key, value, "true or false");
      inputs[field] = value;
    } else if (typeof value === "string" || typeof value === "number") {
      inputs[field] = String(value);
    } else {
      throw new ConfigError(path, key, value, "a string or a number");
    }
    keys.add(field);
  }
  return { inputs: inputs as ProxyInputs, keys };
}

/** A setting's value: parsed from its input, else its default. */
function value<F extends ProxyField>(field: F, inputs: ProxyInputs, origins: Origins): SettingValue<(typeof PROXY_SETTINGS)[F]> {
  const raw = inputs[field];
  return settingValue(PROXY_SETTINGS[field] as SettingSpec<SettingValue<(typeof PROXY_SETTINGS)[F]>>, raw, (expected) => origins.refuse(field, raw, expected));
}

/**
 * Validates the settings: flags over the --config file (`file`, else $KVFERRY_CONFIG, else
 * $MOONCAKE_CONFIG_PATH) over the defaults.
 * @throws ConfigError naming the flag, or the file and its key (the CLI exits 2).
 */
export function loadProxyConfig(flags: ProxyInputs, configFile?: string, env: NodeJS.ProcessEnv = process.env): ProxyConfig {
  const file = configFile ?? (env.KVFERRY_CONFIG || undefined) ?? (env.MOONCAKE_CONFIG_PATH || undefined);
  const fromFile = file === undefined ? { inputs: {} as ProxyInputs, keys: new Set<ProxyField>() } : proxyInputsFromFile(file);
  const given = Object.fromEntries(Object.entries(flags).filter(([, v]) => v !== undefined && v !== false)) as ProxyInputs;
  const inputs: ProxyInputs = { ...fromFile.inputs, ...given };
  const keys = new Set([...fromFile.keys].filter((k) => given[k] === undefined));
  const origins = new Origins(file, keys);
  const listen = value("listen", inputs, origins);
  const transfer = value("transfer", inputs, origins);
  const policy = value("policy", inputs, origins);
  const logLevel = value("logLevel", inputs, origins);
  const maxBodyBytes = value("maxBodyBytes", inputs, origins);
  const healthIntervalMs = value("healthIntervalMs", inputs, origins);
  const discovery = discoverySource(inputs, file, env, origins);
  return {
    listen,
    discovery,
    prefill: instances("prefill", inputs.prefill, transfer, origins, discovery !== undefined),
    decode: instances("decode", inputs.decode, transfer, origins, discovery !== undefined),
    policy,
    transfer,
    healthIntervalMs,
    healthTimeoutMs: Math.min(Math.max(healthIntervalMs, 500), 5000),
    prefillTimeoutMs: value("prefillTimeoutMs", inputs, origins),
    decodeTimeoutMs: value("decodeTimeoutMs", inputs, origins),
    transferDeadlineMs: value("transferDeadlineMs", inputs, origins),
    forwardAuthorization: inputs.forwardAuthorization === true,
    maxBodyBytes,
    drainMs: value("drainMs", inputs, origins),
    logLevel,
  };
}

/**
 * --daemon wins (its ListNodes, the way with embedded metadata); else the node registry the
 * metadata settings name (flags over the file's mooncake.json keys over the environment's
 * KVFERRY_METADATA_SERVER, validated as the daemon validates them); embedded: none.
 */
function discoverySource(inputs: ProxyInputs, file: string | undefined, env: NodeJS.ProcessEnv, origins: Origins): DiscoverySource | undefined {
  const daemon = value("daemon", inputs, origins);
  if (daemon !== undefined) return { kind: "daemon", address: daemon };
  const { metadata } = loadConfig(
    { config: file, metadataServer: inputs.metadataServer, metadataBackend: inputs.metadataBackend, metadataPrefix: inputs.metadataPrefix },
    env,
  );
  return metadata.backend === "embedded" ? undefined : { kind: "registry", metadata };
}
