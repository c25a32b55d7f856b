// Each command's table of settings is the one place a setting is written: these tests walk
// every table, so a new entry is checked without a line here. For every entry with a flag:
// the flag parses, its --help line shows the default rendered from the real default (and
// that text reads back as the default: help and behaviour cannot disagree), and the flag's
// value reaches the setting.
import { describe, expect, it } from "vitest";
import { daemonCommand } from "../../src/cli/daemon.js";
import { DEMO_SETTINGS, demoCommand } from "../../src/cli/demo.js";
import { proxyCommand } from "../../src/cli/proxy.js";
import { simulateCommand } from "../../src/cli/simulate.js";
import { parseFlags, type Command } from "../../src/cli/command.js";
import { flagName, keyInputs, keysWithFlags, KEYS, type Key } from "../../src/config/keys.js";
import { kebab, shownDefault, showValue, tableInputs, type SettingSpec } from "../../src/config/settings.js";
import { envLayer, flagLayer } from "../../src/config/sources.js";
import { loadProxyConfig, PROXY_SETTINGS } from "../../src/proxy/config.js";
import { simulateSettings, SIMULATE_SETTINGS } from "../../src/simulator/settings.js";

/** The --help line of `--name`, or undefined. */
function helpLine(command: Command, name: string): string | undefined {
  return command.usage.split("\n").find((line) => line.startsWith(`  --${name} `));
}

/** A value the setting accepts as flag text: its default as help shows it, else one that parses. */
function sampleText(setting: SettingSpec<unknown>, fallback: string): string {
  return setting.default !== undefined && setting.defaultDoc === undefined ? shownDefault(setting)! : fallback;
}

/** Checks one entry's flag and help; returns the flag's name. */
function checkHelp(command: Command, name: string, setting: SettingSpec<unknown>): void {
  expect(command.flags[name], `--${name} is a flag of ${command.name}`).toBeDefined();
  const line = helpLine(command, name);
  expect(line, `--${name} in ${command.name} --help`).toBeDefined();
  expect(line).toContain(`--${name} ${setting.placeholder}`);
  expect(line).toContain(setting.doc);
  const shown = shownDefault(setting);
  if (shown === undefined) {
    expect(line).not.toMatch(/\(default /);
    return;
  }
  expect(line).toMatch(new RegExp(`\\(default ${shown.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}\\)$`));
  if (setting.defaultDoc === undefined) {
    // The text --help shows parses back to the very default the command applies.
    const parsed = setting.parse(shown, true);
    expect(parsed.ok && parsed.value, `--${name}'s shown default ${shown}`).toEqual(setting.default);
  }
}

describe("kvferry daemon: KEYS", () => {
  const flagged = keysWithFlags();

  it("has a flag, a help line and a default shown for every key with a flag", () => {
    expect(flagged.length).toBeGreaterThan(20);
    for (const [, spec, field] of flagged) checkHelp(daemonCommand, flagName(field).slice(2), spec);
  });

  it("has no daemon flag that is not a key's, but --config, --kv-transfer-config and --help", () => {
    const fromKeys = new Set(flagged.map(([, , field]) => flagName(field).slice(2)));
    const others = Object.keys(daemonCommand.flags).filter((name) => !fromKeys.has(name));
    expect(others.sort()).toEqual(["config", "help", "kv-transfer-config"]);
  });

  it("carries each flag's text to its key, under the flag's name", () => {
    for (const [key, spec, field] of flagged) {
      const name = flagName(field);
      const text = sampleText(spec, key === "peers" ? "127.0.0.1:1" : "x");
      const layer = flagLayer(keyInputs(parseFlags([name, text], daemonCommand.flags)));
      expect([...layer.keys()]).toEqual([key]);
      expect(layer.get(key)).toEqual({ raw: text, source: name, text: true });
    }
  });

  it("joins a repeated --peer with commas", () => {
    const inputs = keyInputs(parseFlags(["--peer", "a:1", "--peer", "b:2"], daemonCommand.flags));
    expect(inputs.peers).toBe("a:1,b:2");
  });

  it("reads each key's environment variable", () => {
    const withEnv = (Object.keys(KEYS) as Key[]).filter((key) => KEYS[key].env !== undefined);
    expect(withEnv.length).toBeGreaterThan(10);
    for (const key of withEnv) {
      const name = KEYS[key].env!;
      expect(envLayer({ [name]: "v" }).get(key)).toEqual({ raw: "v", source: name, text: true });
    }
  });

  it("renders defaults the way a flag spells them", () => {
    expect(helpLine(daemonCommand, "kv-buffer-size")).toMatch(/\(default 1GiB\)$/);
    expect(helpLine(daemonCommand, "listen")).toMatch(/\(default 127\.0\.0\.1:50051\)$/);
    expect(helpLine(daemonCommand, "peer")).toMatch(/\(default none\)$/);
    expect(helpLine(daemonCommand, "metrics-listen")).toMatch(/\(default off\)$/);
    expect(showValue([{ host: "::1", port: 5 }, { host: "h", port: 6 }])).toBe("[::1]:5,h:6");
  });
});

describe("kvferry proxy: PROXY_SETTINGS", () => {
  const entries = Object.entries(PROXY_SETTINGS) as Array<[keyof typeof PROXY_SETTINGS, SettingSpec<unknown>]>;
  const minimal = { prefill: ["http://p:1=127.0.0.1:2"], decode: ["http://d:1=127.0.0.1:3"] };

  it("has a flag and a help line with its default for every setting", () => {
    for (const [field, setting] of entries) checkHelp(proxyCommand, kebab(field), setting);
    const fromTable = new Set(entries.map(([field]) => kebab(field)));
    expect(Object.keys(proxyCommand.flags).filter((name) => !fromTable.has(name)).sort()).toEqual(["config", "help"]);
  });

  it("applies every default it shows", () => {
    const config = loadProxyConfig(minimal, undefined, {}) as unknown as Record<string, unknown>;
    for (const [field, setting] of entries) {
      if (setting.default !== undefined) expect(config[field], field).toEqual(setting.default);
    }
  });

  it("carries each flag to its field", () => {
    for (const [field, setting] of entries) {
      const args = setting.boolean ? [`--${kebab(field)}`] : [`--${kebab(field)}`, "x"];
      const inputs: Record<string, unknown> = tableInputs(PROXY_SETTINGS, parseFlags(args, proxyCommand.flags));
      expect(Object.keys(inputs)).toEqual([field]);
      expect(inputs[field]).toEqual(setting.boolean ? true : setting.multiple ? ["x"] : "x");
    }
  });

  it("names the flag, or the file's key in snake_case, of a refused value", () => {
    expect(() => loadProxyConfig({ ...minimal, healthIntervalMs: "5" }, undefined, {})).toThrow(
      /--health-interval-ms: health-interval-ms: got "5", expected a whole number of milliseconds from 100/,
    );
    expect(() => loadProxyConfig({ ...minimal, policy: "random" }, undefined, {})).toThrow(
      /--policy: policy: got "random", expected one of round-robin \| least-outstanding/,
    );
  });
});

describe("kvferry simulate: SIMULATE_SETTINGS", () => {
  const entries = Object.entries(SIMULATE_SETTINGS) as Array<[keyof typeof SIMULATE_SETTINGS, SettingSpec<unknown>]>;

  it("has a flag and a help line with its default for every setting", () => {
    for (const [field, setting] of entries) checkHelp(simulateCommand, kebab(field), setting);
    const fromTable = new Set(entries.map(([field]) => kebab(field)));
    expect(Object.keys(simulateCommand.flags).filter((name) => !fromTable.has(name))).toEqual(["help"]);
  });

  it("applies every default it shows", () => {
    const settings = simulateSettings({ role: "both" });
    const flat: Record<string, unknown> = { ...settings, ...settings.layout };
    for (const [field, setting] of entries) {
      if (setting.default !== undefined) expect(flat[field], field).toEqual(setting.default);
    }
  });

  it("refuses each flag's bad value naming the flag", () => {
    for (const [field] of entries) {
      if (field === "role") continue;
      expect(() => simulateSettings({ role: "both", [kebab(field)]: "not valid" }), field).toThrow(
        new RegExp(`^--${kebab(field)}: got "not valid", expected `),
      );
    }
  });
});

describe("kvferry demo: DEMO_SETTINGS", () => {
  const entries = Object.entries(DEMO_SETTINGS) as Array<[keyof typeof DEMO_SETTINGS, SettingSpec<unknown>]>;

  it("has a flag and a help line with its default for every setting, --start-timeout-ms among them", () => {
    for (const [field, setting] of entries) checkHelp(demoCommand, kebab(field), setting);
    expect(helpLine(demoCommand, "start-timeout-ms")).toMatch(/\(default \d+\)$/);
    const fromTable = new Set(entries.map(([field]) => kebab(field)));
    expect(Object.keys(demoCommand.flags).filter((name) => !fromTable.has(name))).toEqual(["help"]);
  });

  it("refuses each flag's bad value with exit 2's ConfigError naming the flag, before starting anything", () => {
    for (const [field] of entries) {
      const name = kebab(field);
      expect(() => demoCommand.run({ [name]: "0x" }), name).toThrow(new RegExp(`^--${name}: ${name}: got "0x", expected `));
    }
  });
});
