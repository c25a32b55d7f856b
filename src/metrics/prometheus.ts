// Prometheus metrics in the text exposition format (version 0.0.4), with no dependency:
// counters, gauges and histograms with labels, kept in maps. The proxy and the engine
// simulator serve theirs on GET /metrics. Callers keep label sets bounded.

export type Labels = Record<string, string>;

/**
 * The series' label text, `{a="1",b="2"}`: labels in `order` first (a metric's declared
 * order), the rest sorted, so that the same labels always name the same series.
 */
function labelKey(labels: Labels, order: readonly string[] = []): string {
  const rest = Object.keys(labels).filter((k) => !order.includes(k)).sort();
  const keys = [...order.filter((k) => k in labels), ...rest];
  if (keys.length === 0) return "";
  const escape = (v: string) => v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
  return `{${keys.map((k) => `${k}="${escape(labels[k]!)}"`).join(",")}}`;
}

function withLabel(key: string, name: string, value: string): string {
  const extra = `${name}="${value}"`;
  return key === "" ? `{${extra}}` : `${key.slice(0, -1)},${extra}}`;
}

export interface Metric {
  render(): string;
}

export class Counter implements Metric {
  readonly #values = new Map<string, number>();
  /** `labelOrder`: the order its labels are written in (others follow, sorted). */
  constructor(readonly name: string, readonly help: string, readonly labelOrder: readonly string[] = []) {}

  inc(labels: Labels = {}, by = 1): void {
    const key = labelKey(labels, this.labelOrder);
    this.#values.set(key, (this.#values.get(key) ?? 0) + by);
  }

  get(labels: Labels = {}): number {
    return this.#values.get(labelKey(labels, this.labelOrder)) ?? 0;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`];
    for (const [key, v] of this.#values) lines.push(`${this.name}${key} ${v}`);
    return lines.join("\n");
  }
}

export class Gauge implements Metric {
  readonly #values = new Map<string, number>();
  constructor(readonly name: string, readonly help: string) {}

  set(labels: Labels, value: number): void {
    this.#values.set(labelKey(labels), value);
  }

  add(labels: Labels, by: number): void {
    const key = labelKey(labels);
    this.#values.set(key, (this.#values.get(key) ?? 0) + by);
  }

  /** Drops the series of `labels` (an instance that went away). */
  remove(labels: Labels): void {
    this.#values.delete(labelKey(labels));
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} gauge`];
    for (const [key, v] of this.#values) lines.push(`${this.name}${key} ${v}`);
    return lines.join("\n");
  }
}

export class Histogram implements Metric {
  readonly #series = new Map<string, { counts: number[]; sum: number; count: number }>();
  constructor(readonly name: string, readonly help: string, readonly buckets: readonly number[]) {}

  observe(labels: Labels, value: number): void {
    const key = labelKey(labels);
    let s = this.#series.get(key);
    if (s === undefined) this.#series.set(key, (s = { counts: this.buckets.map(() => 0), sum: 0, count: 0 }));
    for (let i = 0; i < this.buckets.length; i++) if (value <= this.buckets[i]!) s.counts[i]!++;
    s.sum += value;
    s.count++;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`];
    for (const [key, s] of this.#series) {
      this.buckets.forEach((b, i) => lines.push(`${this.name}_bucket${withLabel(key, "le", String(b))} ${s.counts[i]}`));
      lines.push(`${this.name}_bucket${withLabel(key, "le", "+Inf")} ${s.count}`);
      lines.push(`${this.name}_sum${key} ${s.sum}`);
      lines.push(`${this.name}_count${key} ${s.count}`);
    }
    return lines.join("\n");
  }
}
