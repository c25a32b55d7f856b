// `kvferry daemon`: load the config, serve until SIGTERM or SIGINT, drain, exit 0.
import { loadConfig, type ConfigInputs } from "../config/config.js";
import { Daemon } from "../daemon/server.js";
import { ConfigError, MetadataUnavailableError } from "../errors.js";
import { EXIT_METADATA } from "./exit-codes.js";
import { ShutdownSignals } from "./lifecycle.js";
import { createLogger } from "./logger.js";
import { keyFlags, keyInputs } from "../config/keys.js";
import { flagHelp, HELP_FLAG, text, type Command, type FlagValues, type Flags } from "./command.js";

export async function runDaemon(inputs: ConfigInputs): Promise<number> {
  const config = loadConfig(inputs); // ConfigError → exit 2, in main.ts
  const log = createLogger(config.logLevel);
  // Caught from now on: a signal during start-up is acted on once it serves.
  const signals = new ShutdownSignals(log);
  for (const warning of config.warnings) log.warn({ source: config.source }, warning);
  log.info(
    { source: config.source, role: config.role, protocol: config.protocol, metadata: config.metadata.backend },
    "configuration loaded",
  );
  let daemon: Daemon;
  try {
    daemon = new Daemon(config, log); // the data port is bound here, by the engine
    await daemon.start(signals.startup);
  } catch (err) {
    if (err instanceof ConfigError) {
      signals.dispose();
      throw err; // main.ts: "invalid configuration", exit 2
    }
    log.fatal({ err }, "cannot start");
    signals.dispose();
    return err instanceof MetadataUnavailableError ? EXIT_METADATA : 1;
  }
  return signals.until(() => daemon.shutdown());
}

// The flags that name whole sources, then one per key with a flag (config/keys.ts: its
// placeholder, doc and default come from there).
const FLAGS = {
  config: { type: "string", help: "FILE", doc: "mooncake.json-style config (else $KVFERRY_CONFIG, else $MOONCAKE_CONFIG_PATH)" },
  "kv-transfer-config": { type: "string", help: "JSON", doc: "vLLM's --kv-transfer-config (kv_connector, kv_role, kv_rank, kv_parallel_size, kv_buffer_size)" },
  ...keyFlags(),
  help: HELP_FLAG,
} satisfies Flags;

const USAGE = `Usage: kvferry daemon [flags]

Runs the kvferry daemon of this node. Flags override \$KVFERRY_* variables, which
override the config file, which overrides the defaults.

Flags:
${flagHelp(FLAGS)}

Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT), 1 when it cannot start,
2 on a bad flag or configuration (the message names the source, key, value and
what was expected), 3 when the metadata backend cannot be reached (after
--metadata-retry-ms, if set).
`;

function daemonInputs(v: FlagValues): ConfigInputs {
  return { config: text(v, "config"), kvTransferConfig: text(v, "kv-transfer-config"), ...keyInputs(v) };
}

export const daemonCommand: Command = {
  name: "daemon",
  summary: "run the node daemon (client API on 127.0.0.1 by default)",
  flags: FLAGS,
  usage: USAGE,
  run: (values) => runDaemon(daemonInputs(values)),
};
