// kvferry's version: package.json's, read once. Shown by `kvferry --version` and in the
// daemon's readiness line and ServerInfo.
import { readFileSync } from "node:fs";

export const VERSION: string = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")).version;
