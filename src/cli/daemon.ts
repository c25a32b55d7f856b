// `kvferry daemon`: load the config, serve until SIGTERM or SIGINT, drain, exit 0.
import { loadConfig, type ConfigInputs } from "../config/config.js";
import { Daemon } from "../daemon/server.js";
import { MetadataUnavailableError } from "../errors.js";
import { EXIT_METADATA } from "./exit-codes.js";
import { ShutdownSignals } from "./lifecycle.js";
import { createLogger } from "./logger.js";

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
  const daemon = new Daemon(config, log);
  try {
    await daemon.start();
  } catch (err) {
    log.fatal({ err }, "cannot start");
    signals.dispose();
    return err instanceof MetadataUnavailableError ? EXIT_METADATA : 1;
  }
  return signals.until(() => daemon.shutdown());
}
