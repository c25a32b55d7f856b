#!/usr/bin/env bash
# The seed's request, through the proxy that examples/vllm/run.sh starts (KEEP=1 leaves it up):
#
#   curl -s http://127.0.0.1:8000/v1/completions -H "Content-Type: application/json" -d '{
#     "model": "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4",
#     "prompt": "San Francisco is a",
#     "max_tokens": 1000
#   }'
#
# MODEL, PROMPT, MAX_TOKENS and PROXY_PORT change it; OUTPUT=FILE also keeps the answer there.
# Prints the answer; exits 1 unless it is a 200.
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4}
PROMPT=${PROMPT:-San Francisco is a}
MAX_TOKENS=${MAX_TOKENS:-1000}
PROXY_PORT=${PROXY_PORT:-8000}
OUTPUT=${OUTPUT:-$(mktemp)}

body=$(node -e 'console.log(JSON.stringify({ model: process.argv[1], prompt: process.argv[2], max_tokens: Number(process.argv[3]) }, null, 2))' \
  "$MODEL" "$PROMPT" "$MAX_TOKENS")
status=$(curl -s --max-time 600 -o "$OUTPUT" -w '%{http_code}' "http://127.0.0.1:$PROXY_PORT/v1/completions" \
  -H "Content-Type: application/json" -d "$body") || status="curl failed ($?)"
cat "$OUTPUT"
echo
[[ "$status" == 200 ]] || { echo "curl.sh: HTTP $status from http://127.0.0.1:$PROXY_PORT/v1/completions" >&2; exit 1; }
