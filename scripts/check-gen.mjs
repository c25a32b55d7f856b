#!/usr/bin/env node
// Fails when src/gen/ is not what `buf generate` makes of proto/ today, when the Python
// client's stubs (python/kvferry/_gen/) are not what scripts/gen-python.py makes of it, or
// when `buf lint` finds fault with the protos. Run by `npm test`.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const buf = join(root, "node_modules/.bin/buf");
const plugin = join(root, "node_modules/.bin/protoc-gen-ts_proto");

execFileSync(buf, ["lint"], { cwd: root, stdio: "inherit" });

const out = mkdtempSync(join(tmpdir(), "kvferry-gen-"));
try {
  const template = readFileSync(join(root, "buf.gen.yaml"), "utf8")
    .replace(/local: .*/, `local: ${plugin}`)
    .replace(/out: .*/, `out: ${out}`);
  const templatePath = join(out, "buf.gen.yaml");
  writeFileSync(templatePath, template);
  execFileSync(buf, ["generate", "--template", templatePath], { cwd: root, stdio: "inherit" });
  rmSync(templatePath);

  const files = (dir) =>
    readdirSync(dir).flatMap((n) => (statSync(join(dir, n)).isDirectory() ? files(join(dir, n)) : [join(dir, n)]));
  const fresh = new Map(files(out).map((f) => [relative(out, f), readFileSync(f, "utf8")]));
  const committed = new Map(files(join(root, "src/gen")).map((f) => [relative(join(root, "src/gen"), f), readFileSync(f, "utf8")]));
  const stale = [...new Set([...fresh.keys(), ...committed.keys()])].filter((k) => fresh.get(k) !== committed.get(k));
  if (stale.length > 0) {
    console.error(`src/gen/ is out of date with proto/ (${stale.join(", ")}): run \`npm run gen\` and commit the result.`);
    process.exit(1);
  }
} finally {
  rmSync(out, { recursive: true, force: true });
}

// The Python client's stubs, with the generator pinned in the Python venv (made once).
const python = execFileSync("bash", [join(root, "scripts/python-venv.sh")], { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] }).trim();
const pyCheck = spawnSync(python, [join(root, "scripts/gen-python.py"), "--check"], { cwd: root, stdio: "inherit" });
if (pyCheck.status !== 0) process.exit(1);
