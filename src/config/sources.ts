// Where raw settings come from: the config file, vLLM's --kv-transfer-config, the environment
// and flags. Each source becomes a Layer — key → raw value and the source to blame for it —
// and config.ts takes every key from the first layer that has it.
import { readFileSync, statSync } from "node:fs";
import { ConfigError } from "../errors.js";
import { flagName, isKey, KEYS, type ConfigInputs, type Key, type SettingFlag } from "./keys.js";

export interface RawSetting {
  raw: unknown;
  /** The file path, `--flag-name`, environment variable or `--kv-transfer-config`. */
  source: string;
  /** From a flag or environment variable: a string whatever the key's type. */
  text: boolean;
}

export type Layer = ReadonlyMap<Key, RawSetting>;

const KV_TRANSFER_CONFIG = "--kv-transfer-config";

/** Files larger than this are not config files (and /dev/zero must not hang start-up). */
const MAX_FILE_BYTES = 1 << 20;

/** The config file named by --config, else KVFERRY_CONFIG, else MOONCAKE_CONFIG_PATH. */
export function findConfigFile(inputs: ConfigInputs, env: NodeJS.ProcessEnv): string | undefined {
  if (inputs.config !== undefined) {
    if (inputs.config === "") throw new ConfigError("--config", "config", "", "a path to a JSON file");
    return inputs.config;
  }
  return nonEmpty(env["KVFERRY_CONFIG"]) ?? nonEmpty(env["MOONCAKE_CONFIG_PATH"]);
}

/** Reads a JSON object from `path`; every problem with the file as a whole is key "(file)". */
export function readConfigFile(path: string): Record<string, unknown> {
  const fail = (value: unknown, expected: string): never => {
    throw new ConfigError(path, "(file)", value, expected);
  };
  let body = "";
  try {
    const stat = statSync(path);
    if (!stat.isFile()) fail(path, "a regular file");
    if (stat.size > MAX_FILE_BYTES) fail(`${stat.size} bytes`, `a file of at most ${MAX_FILE_BYTES} bytes`);
    body = readFileSync(path, "utf8");
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    fail(errorText(err), "a readable JSON file");
  }
  return parseObject(body.replace(/^\uFEFF/, ""), fail);
}

/** vLLM's --kv-transfer-config JSON text. */
export function parseKvTransferConfig(json: string): Record<string, unknown> {
  return parseObject(json, (value, expected) => {
    throw new ConfigError(KV_TRANSFER_CONFIG, "(json)", value, expected);
  });
}

function parseObject(json: string, fail: (value: unknown, expected: string) => never): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch (err) {
    return fail(errorText(err), "valid JSON");
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    return fail(Array.isArray(parsed) ? "an array" : parsed, "a JSON object");
  }
  return parsed as Record<string, unknown>;
}

/** Every key of a config file: known ones become settings, unknown ones warnings. */
export function fileLayer(path: string, object: Record<string, unknown>, warnings: string[]): Layer {
  const layer = new Map<Key, RawSetting>();
  for (const [key, raw] of Object.entries(object)) {
    if (isKey(key)) layer.set(key, { raw, source: path, text: false });
    else warnings.push(unknownKey(path, key));
  }
  return layer;
}

/**
 * The KV-transfer fields of vLLM's config. vLLM writes `null` for fields it leaves unset, so
 * null means absent here; vLLM's other fields (kv_ip, kv_port, ...) become warnings.
 */
export function kvTransferLayer(object: Record<string, unknown>, warnings: string[]): Layer {
  const layer = new Map<Key, RawSetting>();
  for (const [key, raw] of Object.entries(object)) {
    if (isKey(key) && KEYS[key].kvTransfer) {
      if (raw !== null) layer.set(key, { raw, source: KV_TRANSFER_CONFIG, text: false });
    } else if (isKey(key)) {
      warnings.push(`${KV_TRANSFER_CONFIG}: ignoring ${JSON.stringify(key)}: set it in the config file or with a flag`);
    } else {
      warnings.push(unknownKey(KV_TRANSFER_CONFIG, key));
    }
  }
  return layer;
}

/** KVFERRY_* variables; an empty variable counts as unset. */
export function envLayer(env: NodeJS.ProcessEnv): Layer {
  const layer = new Map<Key, RawSetting>();
  for (const key of Object.keys(KEYS) as Key[]) {
    const name = KEYS[key].env;
    const raw = name === undefined ? undefined : nonEmpty(env[name]);
    if (name !== undefined && raw !== undefined) layer.set(key, { raw, source: name, text: true });
  }
  return layer;
}

/** Flags as the CLI parsed them; a flag given as "" is a value, and refused by its parser. */
export function flagLayer(inputs: ConfigInputs): Layer {
  const layer = new Map<Key, RawSetting>();
  for (const key of Object.keys(KEYS) as Key[]) {
    const field: SettingFlag | undefined = KEYS[key].flag;
    const raw = field === undefined ? undefined : inputs[field];
    if (field !== undefined && raw !== undefined) layer.set(key, { raw, source: flagName(field), text: true });
  }
  return layer;
}

function unknownKey(source: string, key: string): string {
  // Suggest the key an operator probably meant: kvBufferSize or kv-buffer-size for kv_buffer_size.
  const snake = key.replace(/([a-z0-9])([A-Z])/g, "$1_$2").replace(/-/g, "_").toLowerCase();
  const hint = snake !== key && isKey(snake) ? ` (did you mean "${snake}"?)` : "";
  return `${source}: ignoring unknown key ${JSON.stringify(key)}${hint}`;
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === "" ? undefined : value;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
