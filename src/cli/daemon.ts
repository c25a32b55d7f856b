// `kvferry daemon`: load the config, serve until SIGTERM or SIGINT, drain, exit 0.
import { loadConfig, type ConfigInputs } from "../config/config.js";
import { Daemon } from "../daemon/server.js";
import { MetadataUnavailableError } from "../errors.js";
import { EXIT_METADATA } from "./exit-codes.js";
import { createLogger } from "./logger.js";

export async function runDaemon(inputs: ConfigInputs): Promise<number> {
  const config = loadConfig(inputs); // ConfigError → exit 2, in main.ts
  const log = createLogger(config.logLevel);
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
    return err instanceof MetadataUnavailableError ? EXIT_METADATA : 1;
  }
  return new Promise<number>((resolve) => {
    let signals = 0;
    const onSignal = (signal: NodeJS.Signals) => {
      signals++;
      if (signals > 1) {
        log.warn({ signal }, "second signal: exiting without draining");
        resolve(1);
        process.exit(1);
      }
      log.info({ signal }, "shutting down");
      daemon.shutdown().then(
        () => resolve(0),
        (err) => {
          log.error({ err }, "shutdown failed");
          resolve(1);
        },
      );
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
  });
}
