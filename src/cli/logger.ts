// pino: JSON lines for machines, readable lines when a person watches a terminal.
import { setLogger } from "@grpc/grpc-js";
import { format } from "node:util";
import { pino, type Logger } from "pino";
import pretty from "pino-pretty";
import type { LogLevel } from "../config/config.js";

export function createLogger(level: LogLevel, name = "kvferry"): Logger {
  const options = { name, level, base: { pid: process.pid } };
  const log = process.stdout.isTTY && !process.env.NO_PRETTY
    ? pino(options, pretty({ sync: true, translateTime: "SYS:HH:MM:ss.l", ignore: "pid,hostname,name" }))
    : pino(options, pino.destination({ sync: true }));
  routeGrpcLogs(log);
  return log;
}

/**
 * grpc-js's messages that kvferry reports itself, better: a failed bind ("No address added
 * out of total 1 resolved") comes back to bindAsync's callback with the OS's reason, and
 * the command logs that, naming the API, the setting and the address (daemon/grpc-server.ts).
 */
const REPORTED_BY_KVFERRY = [/^No address added out of total \d+ resolved/];

/**
 * grpc-js writes its own errors to stderr as bare text: they become this process's log
 * lines instead, as warnings — except those kvferry reports itself, which are debug lines.
 * Someone who asked for grpc-js's traces (GRPC_TRACE, GRPC_VERBOSITY) gets them where
 * grpc-js puts them.
 */
function routeGrpcLogs(log: Logger): void {
  const env = process.env;
  if (env.GRPC_TRACE || env.GRPC_NODE_TRACE || env.GRPC_VERBOSITY || env.GRPC_NODE_VERBOSITY) return;
  const grpc = log.child({ component: "grpc-js" });
  setLogger({
    error: (message?: unknown, ...rest: unknown[]) => {
      const text = format(message, ...rest);
      if (REPORTED_BY_KVFERRY.some((r) => r.test(text))) grpc.debug(text);
      else grpc.warn(text);
    },
    info: (message?: unknown, ...rest: unknown[]) => grpc.info(format(message, ...rest)),
    debug: (message?: unknown, ...rest: unknown[]) => grpc.debug(format(message, ...rest)),
  });
}
