import { describe, expect, it } from "vitest";
import { withMembers } from "../../src/proxy/json-members.js";

describe("withMembers", () => {
  it("keeps every member it does not set byte for byte: big integers, 1.0, exponents, escapes, nesting", () => {
    const text = `{ "seed" : 12345678901234567891, "temperature":1.0, "top_p": 1e-1,
      "prompt": "say \\"hi\\" }{ ,", "logit_bias": {"50256": -100, "x": [1, {"y": "]"}]}, "n": null, "echo": true }`;
    const out = withMembers(text, { max_tokens: 1 });
    expect(out).toBe(
      `{"seed" : 12345678901234567891,"temperature":1.0,"top_p": 1e-1,"prompt": "say \\"hi\\" }{ ,",` +
        `"logit_bias": {"50256": -100, "x": [1, {"y": "]"}]},"n": null,"echo": true,"max_tokens":1}`,
    );
    const parsed = JSON.parse(out);
    expect(parsed.prompt).toBe('say "hi" }{ ,');
    expect(parsed.logit_bias).toEqual({ "50256": -100, x: [1, { y: "]" }] });
  });

  it("replaces a member wherever it stood (every copy of a repeated key), and drops keys", () => {
    const out = withMembers('{"stream":true,"model":"m","stream":true,"min_tokens":3,"stream_options":{"include_usage":true}}', { stream: false }, [
      "min_tokens",
      "stream_options",
    ]);
    expect(out).toBe('{"model":"m","stream":false}');
  });

  it("treats an undefined value as a removal, handles an empty object and escaped keys", () => {
    expect(withMembers("{}", { a: 1 })).toBe('{"a":1}');
    expect(withMembers(" {\n} ", {})).toBe("{}");
    expect(withMembers('{"a":1,"b":2}', { a: undefined })).toBe('{"b":2}');
    expect(withMembers('{"k\\u0065y":1,"other":2}', { key: 3 })).toBe('{"other":2,"key":3}');
  });

  it("writes what it sets with JSON.stringify (nested objects included)", () => {
    const params = { transfer_id: "kvf-1", do_remote_decode: true, source_node: "127.0.0.1:1" };
    expect(JSON.parse(withMembers('{"kv_transfer_params":{"old":1}}', { kv_transfer_params: params }))).toEqual({ kv_transfer_params: params });
  });

  it("refuses a text that is not an object", () => {
    expect(() => withMembers("[1]", {})).toThrow(SyntaxError);
  });
});
