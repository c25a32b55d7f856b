// What every command's table of settings shares: a setting's parser, its default, and its
// flag's help. The daemon's table is KEYS (keys.ts), the proxy's PROXY_SETTINGS
// (proxy/config.ts), the simulator's SIMULATE_SETTINGS (simulator/settings.ts). From a table
// come the flags node:util's parseArgs reads, their --help lines — the default shown there is
// the setting's real default, rendered, so help and behaviour cannot disagree — and the
// defaults the command applies. A new setting is one entry in its command's table.
import { formatBytes, formatHostPort, type HostPort, type Parser } from "./parse.js";

export interface SettingSpec<T> {
  readonly parse: Parser<T>;
  readonly default?: NoInfer<T>;
  /** The value's placeholder in --help ("HOST:PORT"); "" for a boolean flag. */
  readonly placeholder?: string;
  /** What the flag does, for --help; the default is appended to it. */
  readonly doc?: string;
  /** The default in --help when it is worked out at start-up ("HOSTNAME:PORT") or is "off". */
  readonly defaultDoc?: string;
  /** How --help writes the default value; else showValue. */
  show?(value: NoInfer<T>): string;
  /** The flag may be given several times. */
  readonly multiple?: true;
  /** The flag takes no value. */
  readonly boolean?: true;
}

/** A table's entry, typed by its parser; it keeps `multiple` and `boolean` for TableInputs. */
export function setting<T, const S extends { readonly multiple?: true; readonly boolean?: true }>(s: SettingSpec<T> & S): SettingSpec<T> & S {
  return s;
}

/** A flag as parseArgs and --help see it. */
export interface FlagDefinition {
  type: "string" | "boolean";
  short?: string;
  multiple?: boolean;
  /** The value's placeholder in the help ("HOST:PORT"), "" for a boolean. */
  help: string;
  doc: string;
}

/** `kv-buffer-size` for the field `kvBufferSize`: a setting's flag is its field in kebab-case. */
export function kebab(field: string): string {
  return field.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** `kv_buffer_size` for the field `kvBufferSize`. */
export function snake(field: string): string {
  return field.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

function isHostPort(value: unknown): value is HostPort {
  return typeof value === "object" && value !== null && "host" in value && "port" in value;
}

/** A value as a flag would spell it: "127.0.0.1:50051", "30000", "h1:p1,h2:p2". */
export function showValue(value: unknown): string {
  if (Array.isArray(value)) return value.map(showValue).join(",");
  if (isHostPort(value)) return formatHostPort(value);
  return String(value);
}

/** A byte count as a flag would spell it: "1GiB", "16MiB". */
export const showBytes = (n: number): string => formatBytes(n);

/** The default as --help shows it; undefined when the setting has none. */
export function shownDefault<T>(setting: SettingSpec<T>): string | undefined {
  if (setting.defaultDoc !== undefined) return setting.defaultDoc;
  if (setting.default === undefined) return undefined;
  return setting.show ? setting.show(setting.default) : showValue(setting.default);
}

/** The flag of a setting: its --help text ends with the default. */
export function flagDefinition<T>(setting: SettingSpec<T>): FlagDefinition {
  if (setting.placeholder === undefined || setting.doc === undefined) {
    throw new Error("a setting with a flag needs a placeholder and a doc");
  }
  const shown = shownDefault(setting);
  return {
    type: setting.boolean ? "boolean" : "string",
    ...(setting.multiple ? { multiple: true } : {}),
    help: setting.placeholder,
    doc: shown === undefined ? setting.doc : `${setting.doc} (default ${shown})`,
  };
}

/**
 * A setting's value: `raw` (flag text) parsed, else a fresh copy of the default.
 * @throws what `refused` makes of the parser's expectation
 */
export function settingValue<T>(setting: SettingSpec<T>, raw: unknown, refused: (expected: string) => Error): T {
  if (raw === undefined) return structuredClone(setting.default) as T;
  const parsed = setting.parse(raw, true);
  if (!parsed.ok) throw refused(parsed.expected);
  return parsed.value;
}

/** The type of a table's setting's value. */
export type SettingValue<S> = S extends SettingSpec<infer T> ? T : never;

/** The flags of a table keyed by field: `--kebab-field` for each. */
export function tableFlags(table: Readonly<Record<string, SettingSpec<unknown>>>): Record<string, FlagDefinition> {
  return Object.fromEntries(Object.entries(table).map(([field, setting]) => [kebab(field), flagDefinition(setting)]));
}

/** A parsed flag's text: a string, a repeated flag's values, or true for a boolean. */
export type FlagText<S> = S extends { readonly boolean: true } ? boolean : S extends { readonly multiple: true } ? string[] : string;

/** What the CLI parsed for a table keyed by field: each field's flag text, as given. */
export type TableInputs<Table> = { [F in keyof Table]?: FlagText<Table[F]> };

/** Reads a table's flags out of parseArgs' values (keyed by flag name) into its inputs. */
export function tableInputs<Table extends Readonly<Record<string, SettingSpec<unknown>>>>(
  table: Table,
  values: Readonly<Record<string, unknown>>,
): TableInputs<Table> {
  const inputs: Record<string, unknown> = {};
  for (const [field, setting] of Object.entries(table)) {
    const value = values[kebab(field)];
    if (setting.boolean ? value === true : setting.multiple ? Array.isArray(value) : typeof value === "string") inputs[field] = value;
  }
  return inputs as TableInputs<Table>;
}
