// Reading Prometheus text expositions in tests: samples by name and label set, whatever
// order the exporter writes labels in.

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

function labelsOf(text: string): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const m of text.matchAll(LABEL)) labels[m[1]!] = m[2]!.replace(/\\n/g, "\n").replace(/\\(.)/g, "$1");
  return labels;
}

/** Every sample line of `text` (comments and blank lines skipped). */
export function parseExposition(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = LINE.exec(line);
    if (m === null) throw new Error(`not a Prometheus sample line: ${JSON.stringify(line)}`);
    const value = m[3] === "+Inf" ? Infinity : m[3] === "-Inf" ? -Infinity : Number(m[3]);
    samples.push({ name: m[1]!, labels: labelsOf(m[2] ?? ""), value });
  }
  return samples;
}

function sameLabels(a: Record<string, string>, b: Record<string, string>): boolean {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => b[k] === a[k]);
}

/**
 * The value of the series `selector` names: `name{a="1",b="2"}` (exactly these labels, in
 * any order), `name` (no labels) or `name{` (the first series of that name with labels).
 */
export function sampleOf(samples: readonly Sample[], selector: string): number | undefined {
  const brace = selector.indexOf("{");
  const name = brace < 0 ? selector : selector.slice(0, brace);
  const rest = brace < 0 ? undefined : selector.slice(brace + 1);
  const found = samples.find((s) => {
    if (s.name !== name) return false;
    if (rest === undefined) return Object.keys(s.labels).length === 0;
    if (rest === "") return Object.keys(s.labels).length > 0;
    return sameLabels(labelsOf(rest), s.labels);
  });
  return found?.value;
}

/** The sum of every series of `name` whose labels include `labels`. */
export function sumOf(samples: readonly Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0);
}
