// `kvferry simulate`'s settings: one table, SIMULATE_SETTINGS, from which come its flags,
// their --help (with each default rendered from the real one) and the defaults; then
// simulateSettings() validates parsed flags into typed SimulateSettings.
import type { LogLevel } from "../config/config.js";
import { DEFAULT_LISTEN_HOST } from "../config/keys.js";
import { accept, formatHostPort, hostPort, integer, INT32_MAX, listenAddress, oneOf, refuse, stringMatching, type HostPort, type Parser } from "../config/parse.js";
import { kebab, setting, settingValue, tableInputs, type SettingSpec, type SettingValue } from "../config/settings.js";
import { engineUrlProblem } from "../metadata/node.js";
import { DEFAULT_LAYOUT, tokenBytes, type KvLayout } from "./kv.js";
import { ROLE_NAMES, type RoleName } from "./roles.js";

export interface SimulateSettings {
  role: RoleName;
  listen: HostPort;
  daemon?: string;
  /** The URL announced to the daemon (AnnounceEngine); undefined: the listen address; "none": not announced. */
  announce?: string;
  model: string;
  layout: KvLayout;
  kvWaitMs: number;
  tokenMs: number;
  logLevel: LogLevel;
}

/** A flag's value was refused: exit 2 with this message. */
export class SimulateFlagError extends Error {
  constructor(flag: string, value: unknown, expected: string) {
    super(`--${flag}: got ${value === undefined ? "nothing" : JSON.stringify(value)}, expected ${expected}`);
    this.name = "SimulateFlagError";
  }
}

const LOG_LEVELS: readonly LogLevel[] = ["trace", "debug", "info", "warn", "error", "fatal", "silent"];
const ROLES_EXPECTED = `one of ${ROLE_NAMES.map((r) => `"${r}"`).join(", ")}`;

const announceUrl: Parser<string> = (raw) => {
  if (raw === "none") return accept("none");
  const problem = typeof raw === "string" ? engineUrlProblem(raw) : "expected a URL";
  return problem === undefined ? accept(raw as string) : refuse(`"none" or ${problem.replace(/^expected /, "")}`);
};

const daemonAddress: Parser<string> = (raw) => {
  const parsed = hostPort(raw, true);
  return parsed.ok ? accept(formatHostPort(parsed.value)) : parsed;
};

/** Every flag of `kvferry simulate` but --help, keyed by its field: the flag is the field in kebab-case. */
export const SIMULATE_SETTINGS = {
  role: setting({
    parse: oneOf<RoleName>(Object.fromEntries(ROLE_NAMES.map((r) => [r, r])), ROLES_EXPECTED),
    placeholder: "ROLE", doc: `${ROLE_NAMES.join(" | ")} (required): which instance this simulator plays`,
  }),
  listen: setting({
    parse: listenAddress(DEFAULT_LISTEN_HOST), default: { host: DEFAULT_LISTEN_HOST, port: 8100 }, placeholder: "HOST:PORT",
    doc: `HTTP address (PORT alone means ${DEFAULT_LISTEN_HOST}:PORT; port 0 picks one)`,
  }),
  daemon: setting({
    parse: daemonAddress, placeholder: "HOST:PORT",
    doc: "the local kvferry daemon's client API (required for prefill and decode; unused for both)",
  }),
  announce: setting({
    parse: announceUrl, placeholder: "URL|none", defaultDoc: "http://LISTEN",
    doc: "the URL announced to the daemon, which publishes it for proxies that discover engines (none: not announced)",
  }),
  model: setting({
    parse: stringMatching(/^[\x21-\x7e]{1,256}$/, "a model name of 1-256 printable characters without spaces"),
    default: "kvferry-sim-7b", placeholder: "NAME",
    doc: "the model it serves, as vLLM's --model: listed in /v1/models; a request naming another gets a 404 as vLLM answers",
  }),
  layers: setting({
    parse: integer(1, 1024), default: DEFAULT_LAYOUT.layers, placeholder: "N", doc: "layers of the simulated model: one KV part per layer",
  }),
  kvHeads: setting({ parse: integer(1, 1024), default: DEFAULT_LAYOUT.kvHeads, placeholder: "N", doc: "KV heads" }),
  headDim: setting({ parse: integer(1, 16384), default: DEFAULT_LAYOUT.headDim, placeholder: "N", doc: "head dimension" }),
  dtypeBytes: setting({
    parse: integer(1, 8), default: DEFAULT_LAYOUT.dtypeBytes, placeholder: "N",
    doc: "bytes per KV element: KV per token = layers × 2 × kv-heads × head-dim × dtype-bytes",
  }),
  kvWaitMs: setting({
    parse: integer(0, INT32_MAX, "milliseconds"), default: 30_000, placeholder: "MS",
    doc: "how long a decode waits for its KV before answering 504",
  }),
  tokenMs: setting({ parse: integer(0, 60_000, "milliseconds"), default: 2, placeholder: "MS", doc: "delay per generated token" }),
  logLevel: setting({
    parse: oneOf<LogLevel>(Object.fromEntries(LOG_LEVELS.map((l) => [l, l])), `one of ${LOG_LEVELS.map((l) => `"${l}"`).join(", ")}`),
    default: "info", placeholder: "LEVEL", doc: LOG_LEVELS.join(" | "),
  }),
};

type SimulateField = keyof typeof SIMULATE_SETTINGS;
type SimulateValue<F extends SimulateField> = SettingValue<(typeof SIMULATE_SETTINGS)[F]>;

/** Validates the flags (parseArgs' values, keyed by flag name) into settings; throws SimulateFlagError. */
export function simulateSettings(values: Record<string, unknown>): SimulateSettings {
  const inputs: Partial<Record<SimulateField, unknown>> = tableInputs(SIMULATE_SETTINGS, values);
  const flag = <F extends SimulateField>(field: F): SimulateValue<F> => {
    const raw = inputs[field];
    const spec = SIMULATE_SETTINGS[field] as SettingSpec<SimulateValue<F>>;
    return settingValue(spec, raw, (expected) => new SimulateFlagError(kebab(field), raw, expected));
  };
  const role = flag("role");
  if (role === undefined) throw new SimulateFlagError("role", undefined, `${ROLES_EXPECTED} (required)`);
  const listen = flag("listen");
  const daemon = flag("daemon");
  if (daemon === undefined && role !== "both") {
    throw new SimulateFlagError("daemon", undefined, `the local kvferry daemon's client API as HOST:PORT (required with --role ${role})`);
  }
  const layout: KvLayout = { layers: flag("layers"), kvHeads: flag("kvHeads"), headDim: flag("headDim"), dtypeBytes: flag("dtypeBytes") };
  // One token of one layer must fit a daemon part comfortably; 2 MiB per token is far above any real model.
  if (tokenBytes(layout) / layout.layers > 2 << 20) {
    throw new SimulateFlagError(
      "head-dim",
      values["head-dim"] ?? layout.headDim,
      `a layout of at most 2 MiB per token and layer (2 × kv-heads × head-dim × dtype-bytes); ${layout.kvHeads} × ${layout.headDim} × ${layout.dtypeBytes} is too large`,
    );
  }
  return {
    role,
    listen,
    daemon,
    announce: flag("announce"),
    model: flag("model"),
    layout,
    kvWaitMs: flag("kvWaitMs"),
    tokenMs: flag("tokenMs"),
    logLevel: flag("logLevel"),
  };
}
