// `kvferry proxy`: validate the flags, start the disaggregating proxy, serve until SIGTERM
// or SIGINT, drain, exit 0. Once listening it logs "kvferry proxy serving" with `listen`
// (HOST:PORT, the real port when 0 was asked), as `kvferry daemon` logs its readiness, so
// that a spawn helper can wait for that line and read the address from it.
import { ShutdownSignals } from "./lifecycle.js";
import { loadProxyConfig, type ProxyInputs } from "../proxy/config.js";
import { Proxy } from "../proxy/proxy.js";
import { PROXY_SERVING } from "../proxy/spawn.js";
import { createLogger } from "./logger.js";

/** Runs the proxy; resolves to the exit code. @throws ConfigError on a bad flag (exit 2). */
export async function runProxy(inputs: ProxyInputs, configFile?: string): Promise<number> {
  const config = loadProxyConfig(inputs, configFile);
  const log = createLogger(config.logLevel);
  // Caught from now on: a signal during start-up is acted on once it serves.
  const signals = new ShutdownSignals(log);
  const proxy = new Proxy(config, log);
  let listen: string;
  try {
    listen = await proxy.start();
  } catch (err) {
    log.fatal({ err }, "cannot start");
    await proxy.shutdown().catch(() => {});
    signals.dispose();
    return 1;
  }
  log.info(
    {
      listen,
      transfer: config.transfer,
      policy: config.policy,
      prefill: config.prefill.map((i) => i.url),
      decode: config.decode.map((i) => i.url),
      healthy: proxy.pool.report(),
    },
    PROXY_SERVING,
  );
  return signals.until(() => proxy.shutdown());
}
