// Where grpcurl is: $KVFERRY_GRPCURL, else on PATH, else where `go install` puts it
// ($(go env GOPATH)/bin, ~/go/bin by default). scripts/setup.mjs --test installs it there
// when Go is present (github.com/fullstorydev/grpcurl/cmd/grpcurl@GRPCURL_VERSION).
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { homedir } from "node:os";
import { delimiter, join } from "node:path";

export const GRPCURL_VERSION = "v1.9.4";

/** The grpcurl binary's path, or undefined when there is none. */
export function findGrpcurl(): string | undefined {
  if (process.env.KVFERRY_GRPCURL) return process.env.KVFERRY_GRPCURL;
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (dir && existsSync(join(dir, "grpcurl"))) return join(dir, "grpcurl");
  }
  let gopath = join(homedir(), "go");
  try {
    gopath = execFileSync("go", ["env", "GOPATH"], { encoding: "utf8", timeout: 10_000 }).trim().split(delimiter)[0] || gopath;
  } catch {
    // no Go: the default GOPATH
  }
  const installed = join(gopath, "bin", "grpcurl");
  return existsSync(installed) ? installed : undefined;
}
