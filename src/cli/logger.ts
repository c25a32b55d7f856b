// pino: JSON lines for machines, readable lines when a person watches a terminal.
import { pino, type Logger } from "pino";
import pretty from "pino-pretty";
import type { LogLevel } from "../config/config.js";

export function createLogger(level: LogLevel, name = "kvferry"): Logger {
  const options = { name, level, base: { pid: process.pid } };
  if (process.stdout.isTTY && !process.env.NO_PRETTY) {
    return pino(options, pretty({ sync: true, translateTime: "SYS:HH:MM:ss.l", ignore: "pid,hostname,name" }));
  }
  return pino(options, pino.destination({ sync: true }));
}
