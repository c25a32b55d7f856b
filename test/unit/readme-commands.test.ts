// How the README tests cut a ```sh block into the commands a terminal runs one by one.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { readmeSection, shellBlocks, shellCommands } from "../helpers/readme.js";

describe("shellCommands", () => {
  it("joins backslash continuations, multi-line quotes and here-documents into one command each", () => {
    const block = [
      "# a comment line is dropped",
      "A=$(mktemp -d)",
      "",
      "cat > \"$A/x.json\" <<'JSON'",
      "{",
      '  "k": "v # not a comment"',
      "}",
      "JSON",
      "curl -s http://h/x -d '{",
      '  "model": "m"',
      "}'",
      "node a.js --flag \\",
      "    --other 1 > log 2>&1 &   # a comment after the &",
      "x && y",
      "",
    ].join("\n");
    expect(shellCommands(block)).toEqual([
      { text: "A=$(mktemp -d)", background: false },
      { text: "cat > \"$A/x.json\" <<'JSON'\n{\n  \"k\": \"v # not a comment\"\n}\nJSON", background: false },
      { text: "curl -s http://h/x -d '{\n  \"model\": \"m\"\n}'", background: false },
      { text: "node a.js --flag \\\n    --other 1 > log 2>&1 &   # a comment after the &", background: true },
      { text: "x && y", background: false },
    ]);
  });

  it("reads a & inside quotes or a comment as text, not as a background job", () => {
    expect(shellCommands("echo 'a &'\necho b # c &\necho \"d &\"\n").map((c) => c.background)).toEqual([false, false, false]);
  });

  it("refuses a block that ends inside a quote or a here-document", () => {
    expect(() => shellCommands("echo 'open\n")).toThrow(/unfinished command/);
    expect(() => shellCommands("cat <<EOF\nno end\n")).toThrow(/unfinished command/);
  });
});

describe("readmeSection and shellBlocks", () => {
  it("takes the text under a heading up to the next heading of its level or above, ignoring # lines in fences", () => {
    const dir = mkdtempSync(join(tmpdir(), "kvferry-readme-"));
    try {
      const file = join(dir, "README.md");
      writeFileSync(file, ["# T", "## One", "a", "```sh", "# not a heading", "echo 1", "```", "### Sub", "```sh", "echo 2", "```", "## Two", "```sh", "echo 3", "```", ""].join("\n"));
      const one = readmeSection("One", file);
      expect(shellBlocks(one)).toEqual(["# not a heading\necho 1\n", "echo 2\n"]);
      expect(shellBlocks(readmeSection("Two", file))).toEqual(["echo 3\n"]);
      expect(() => readmeSection("Three", file)).toThrow(/no heading "Three"/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
