// What a `kvferry` command is to main.ts: its flags (parsed strictly by node:util's
// parseArgs), its help text, and how it runs. Each command's file exports one Command;
// main.ts only dispatches. The daemon, the proxy and the simulator derive their flags from
// their tables of settings (config/settings.ts).
import { parseArgs, type ParseArgsConfig } from "node:util";
import type { FlagDefinition } from "../config/settings.js";

export type Flag = FlagDefinition;

export type Flags = Readonly<Record<string, Flag>>;
export type FlagValues = Record<string, string | boolean | string[] | undefined>;

export interface Command {
  name: string;
  /** One line for `kvferry --help`. */
  summary: string;
  flags: Flags;
  /** The whole `kvferry <name> --help`. */
  usage: string;
  /** Runs with the parsed flags; resolves to the exit code. @throws ConfigError on a bad value (exit 2). */
  run(values: FlagValues): Promise<number>;
}

/** A help line per flag. */
export function flagHelp(flags: Flags): string {
  return Object.entries(flags)
    .map(([name, f]) => `  --${`${name} ${f.help}`.padEnd(26)} ${f.doc}`)
    .join("\n");
}

/** @throws TypeError (code ERR_PARSE_ARGS_*) on an unknown flag or a missing value. */
export function parseFlags(args: string[], flags: Flags): FlagValues {
  const options: ParseArgsConfig["options"] = {};
  for (const [name, f] of Object.entries(flags)) {
    options[name] = { type: f.type, ...(f.short ? { short: f.short } : {}), ...(f.multiple ? { multiple: true } : {}) };
  }
  return parseArgs({ args, options, strict: true, allowPositionals: false }).values as FlagValues;
}

/** A string flag's value, or undefined. */
export function text(values: FlagValues, name: string): string | undefined {
  const v = values[name];
  return typeof v === "string" ? v : undefined;
}

/** A repeatable flag's values, or undefined when not given. */
export function list(values: FlagValues, name: string): string[] | undefined {
  const v = values[name];
  return Array.isArray(v) ? v : undefined;
}

export const HELP_FLAG: Flag = { type: "boolean", short: "h", help: "", doc: "show this help" };
export const LOG_LEVEL_FLAG: Flag = { type: "string", help: "LEVEL", doc: "trace | debug | info | warn | error | fatal | silent (default info)" };
