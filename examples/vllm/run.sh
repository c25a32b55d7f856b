#!/usr/bin/env bash
# The seed's disaggregated setup with real vLLM, on one machine over 127.0.0.1:
#
#   kvferry daemon (prefill node) ◀── local path ── vllm serve MODEL  (kv_producer, :8100)
#          │ push / pull (data plane)                      ▲
#          ▼                                               │ prefill, then decode
#   kvferry daemon (decode node)  ◀── local path ── vllm serve MODEL  (kv_consumer, :8200)
#                                                          ▲
#                                   kvferry proxy (:8000) ─┘  ◀── the seed's curl
#
# Starts, in order, two kvferry daemons (examples/vllm/mooncake.json), the producer and then
# the consumer vLLM (both on one GPU by default, each with its share of its memory), the
# proxy; sends the seed's request through the proxy; checks that the KV went through the
# daemons (and, with CHECK=1, that greedy output through the proxy equals the prefill
# instance's own); then stops everything, whatever happened (trap). Run it from anywhere:
#
#   bash examples/vllm/run.sh                        # the seed's model, everything on GPU 0
#   MODEL=Qwen/Qwen2.5-0.5B-Instruct ENGINE_ARGS="--enforce-eager" bash examples/vllm/run.sh
#   KEEP=1 bash examples/vllm/run.sh                 # leave it serving until Ctrl-C
#   VLLM=simulate bash examples/vllm/run.sh          # no GPU: kvferry's engine simulators stand in
#   VLLM=skip bash examples/vllm/run.sh              # the daemons and the proxy only
#
# Settings (environment, defaults in brackets) are listed in examples/vllm/README.md.
# Exit status: 0 when every check passed; 1 when a service did not start or a check failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"

# -- settings ------------------------------------------------------------------------------
MODEL=${MODEL:-Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4}
SERVED_MODEL_NAME=${SERVED_MODEL_NAME:-$MODEL}
VLLM=${VLLM:-vllm}                         # the vllm command, or "simulate", or "skip"
PYTHON=${PYTHON:-}                         # vLLM's python (default: beside the vllm command)
USE_CHECKOUT=${USE_CHECKOUT:-0}            # 1: kvferry + kvferry_vllm from this checkout (PYTHONPATH)
PROXY_PORT=${PROXY_PORT:-8000}
PREFILL_PORT=${PREFILL_PORT:-8100}
DECODE_PORT=${DECODE_PORT:-8200}
REF_PORT=${REF_PORT:-8300}                 # VLLM=simulate only: the non-disaggregated reference
PREFILL_DAEMON_PORT=${PREFILL_DAEMON_PORT:-50051}
DECODE_DAEMON_PORT=${DECODE_DAEMON_PORT:-50052}
PREFILL_METRICS_PORT=${PREFILL_METRICS_PORT:-9400}
DECODE_METRICS_PORT=${DECODE_METRICS_PORT:-9401}
MOONCAKE_JSON=${MOONCAKE_JSON:-$HERE/mooncake.json}
DATA_PORT=${DATA_PORT:-}                   # set: a copy of MOONCAKE_JSON with this prefill data port
KV_BUFFER_SIZE=${KV_BUFFER_SIZE:-2e9}
TRANSFER=${TRANSFER:-push}                 # push | pull
LOAD_MODE=${LOAD_MODE:-async}              # async | layerwise
GPU_SHARE=${GPU_SHARE:-0.4}
PREFILL_GPU_SHARE=${PREFILL_GPU_SHARE:-$GPU_SHARE}
DECODE_GPU_SHARE=${DECODE_GPU_SHARE:-$GPU_SHARE}
PREFILL_GPU=${PREFILL_GPU:-0}
DECODE_GPU=${DECODE_GPU:-0}
ENGINE_ARGS=${ENGINE_ARGS:-}               # more `vllm serve` arguments, for both instances
ENGINE_START_TIMEOUT_S=${ENGINE_START_TIMEOUT_S:-900}
START_TIMEOUT_S=${START_TIMEOUT_S:-60}     # daemons and proxy
PROMPT=${PROMPT:-San Francisco is a}
MAX_TOKENS=${MAX_TOKENS:-1000}
CHECK=${CHECK:-1}
KEEP=${KEEP:-0}
LOG_DIR=${LOG_DIR:-}                       # default: a new folder under $TMPDIR or /tmp
KVFERRY=(node "$ROOT/bin/kvferry.js")

say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { say "FAILED: $*" >&2; exit 1; }

case "$TRANSFER" in push | pull) ;; *) die "TRANSFER: expected push or pull, got '$TRANSFER'" ;; esac
case "$LOAD_MODE" in async | layerwise) ;; *) die "LOAD_MODE: expected async or layerwise, got '$LOAD_MODE'" ;; esac
LOG_DIR=${LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/kvferry-vllm.XXXXXX")}
mkdir -p "$LOG_DIR"

# -- processes: each in its own process group, stopped newest first on exit ----------------
PIDS=() NAMES=()
start() { # start NAME LOGFILE CMD...: runs CMD in a new session (pid = process group id)
  local name=$1 log=$2
  shift 2
  setsid "$@" > "$log" 2>&1 < /dev/null &
  PIDS+=("$!") NAMES+=("$name")
  say "started $name (pid $!), log $log"
}
stop_all() {
  local rc=$? i pid n
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[i]}
    kill -0 -- "-$pid" 2> /dev/null || continue
    kill -TERM -- "-$pid" 2> /dev/null || true
    # vLLM and the proxy drain in seconds; a daemon's grace is 10 s.
    for ((n = 0; n < 150; n++)); do kill -0 -- "-$pid" 2> /dev/null || break; sleep 0.2; done
    if kill -0 -- "-$pid" 2> /dev/null; then
      say "${NAMES[i]} did not stop within 30 s: SIGKILL"
      kill -KILL -- "-$pid" 2> /dev/null || true
    fi
    say "stopped ${NAMES[i]}"
  done
  rm -f "$LOG_DIR"/*.sock
  say "logs in $LOG_DIR"
  exit "$rc"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

alive() { kill -0 "${PIDS[$1]}" 2> /dev/null; }
died() { # died INDEX LOG: the process is gone; name it with its log's last lines
  local code=0
  wait "${PIDS[$1]}" 2> /dev/null || code=$?
  say "${NAMES[$1]} exited ($code) before it was ready; last lines of $2:" >&2
  tail -n 20 "$2" | cut -c1-400 >&2
  die "${NAMES[$1]} did not start"
}
wait_log() { # wait_log INDEX LOG TEXT TIMEOUT_S: until LOG holds TEXT
  local deadline=$((SECONDS + $4))
  until grep -qs "$3" "$2"; do
    alive "$1" || died "$1" "$2"
    ((SECONDS < deadline)) || { tail -n 20 "$2" | cut -c1-400 >&2; die "${NAMES[$1]}: no '$3' in $2 within $4 s"; }
    sleep 0.5
  done
  say "${NAMES[$1]} ready"
}
wait_http() { # wait_http INDEX LOG URL TIMEOUT_S [WHAT]: until GET URL answers 200
  local deadline=$((SECONDS + $4)) next=$((SECONDS + 30))
  until curl -fso /dev/null --max-time 5 "$3"; do
    alive "$1" || died "$1" "$2"
    ((SECONDS < deadline)) || { tail -n 20 "$2" | cut -c1-400 >&2; die "${NAMES[$1]}: $3 not 200 within $4 s"; }
    if ((SECONDS >= next)); then
      say "waiting for ${NAMES[$1]} ($((SECONDS - deadline + $4)) s): $(tail -n 1 "$2" | cut -c1-160)"
      next=$((SECONDS + 30))
    fi
    sleep 2
  done
  say "${NAMES[$1]} ${5:-ready} ($3)"
}
metric() { # metric PORT NAME [LABEL_FILTER]: the sum of a daemon metric's series (0 if none)
  { curl -fs --max-time 5 "http://127.0.0.1:$1/metrics" || true; } |
    awk -v name="$2" -v filter="${3:-}" '
      $1 == name || index($1, name "{") == 1 { if (filter == "" || index($1, filter)) s += $NF }
      END { printf "%.0f\n", s }'
}
json_field() { # json_field FILE PATH: a field of a JSON answer, e.g. choices.0.text ("" when absent)
  node -e 'let v = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    for (const k of process.argv[2].split(".")) v = v == null ? undefined : v[k];
    process.stdout.write(v == null ? "" : String(v));' "$1" "$2" 2> /dev/null || true
}

# -- preflight -----------------------------------------------------------------------------
node scripts/setup.mjs --quiet || die "node scripts/setup.mjs (npm packages and the build) failed"
export KVFERRY_CLUSTER_TOKEN=${KVFERRY_CLUSTER_TOKEN:-$(head -c 24 /dev/urandom | base64)}

ENGINE_ENV=()
if [[ "$VLLM" != skip && "$VLLM" != simulate ]]; then
  vllm_path=$(command -v "$VLLM") || die "VLLM=$VLLM: no such command (the vllm of the environment to use; or VLLM=simulate / VLLM=skip)"
  if [[ -z "$PYTHON" ]]; then
    PYTHON=$(dirname "$vllm_path")/python
    [[ -x "$PYTHON" ]] || PYTHON=python3
  fi
  if [[ "$USE_CHECKOUT" == 1 ]]; then
    ENGINE_ENV=(env "PYTHONPATH=$ROOT/python:$ROOT/connectors/vllm${PYTHONPATH:+:$PYTHONPATH}")
  fi
  say "checking that $PYTHON imports kvferry_vllm.connector (vLLM and torch load: seconds)"
  if ! out=$("${ENGINE_ENV[@]}" "$PYTHON" -c 'import kvferry, kvferry_vllm.connector' 2>&1); then
    echo "$out" | tail -n 5 >&2
    die "kvferry_vllm does not import in $PYTHON: pip install ./python ./connectors/vllm into vLLM's environment (or USE_CHECKOUT=1)"
  fi
fi

if [[ -n "$DATA_PORT" ]]; then # the seed's rule: the consumer adds 100 to the port
  node -e 'const fs = require("fs"); const j = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
    j.prefill_url = j.decode_url = "127.0.0.1:" + process.argv[2]; fs.writeFileSync(process.argv[3], JSON.stringify(j, null, 2));' \
    "$MOONCAKE_JSON" "$DATA_PORT" "$LOG_DIR/mooncake.json"
  MOONCAKE_JSON=$LOG_DIR/mooncake.json
fi
say "kvferry-vllm example: model $MODEL, engines: $VLLM, KV by $TRANSFER, decode loads $LOAD_MODE; config $MOONCAKE_JSON; logs $LOG_DIR"

# -- 1. the daemons ------------------------------------------------------------------------
start "prefill daemon" "$LOG_DIR/prefill-daemon.log" "${KVFERRY[@]}" daemon --config "$MOONCAKE_JSON" \
  --kv-role kv_producer --node-id prefill-node --listen "127.0.0.1:$PREFILL_DAEMON_PORT" \
  --kv-buffer-size "$KV_BUFFER_SIZE" --metrics-listen "127.0.0.1:$PREFILL_METRICS_PORT" \
  --local-socket "$LOG_DIR/prefill-daemon.sock"
start "decode daemon" "$LOG_DIR/decode-daemon.log" "${KVFERRY[@]}" daemon --config "$MOONCAKE_JSON" \
  --kv-role kv_consumer --node-id decode-node --listen "127.0.0.1:$DECODE_DAEMON_PORT" \
  --kv-buffer-size "$KV_BUFFER_SIZE" --metrics-listen "127.0.0.1:$DECODE_METRICS_PORT" \
  --local-socket "$LOG_DIR/decode-daemon.sock"
wait_log 0 "$LOG_DIR/prefill-daemon.log" "kvferry daemon serving" "$START_TIMEOUT_S"
wait_log 1 "$LOG_DIR/decode-daemon.log" "kvferry daemon serving" "$START_TIMEOUT_S"

# -- 2. the engines ------------------------------------------------------------------------
kv_config() { # kv_config ROLE DAEMON_PORT
  local extra="\"kvferry_daemon\":\"127.0.0.1:$2\""
  [[ "$1" == kv_consumer ]] && extra+=",\"load_mode\":\"$LOAD_MODE\""
  printf '{"kv_connector":"KvferryConnector","kv_connector_module_path":"kvferry_vllm.connector","kv_role":"%s","kv_connector_extra_config":{%s}}' "$1" "$extra"
}
serve() { # serve NAME ROLE PORT DAEMON_PORT GPU SHARE
  local log="$LOG_DIR/$1.log" idx=${#PIDS[@]}
  # shellcheck disable=SC2086 # ENGINE_ARGS is a list of arguments
  start "$1 vLLM" "$log" env CUDA_VISIBLE_DEVICES="$5" "${ENGINE_ENV[@]}" "$VLLM" serve "$MODEL" \
    --served-model-name "$SERVED_MODEL_NAME" --host 127.0.0.1 --port "$3" \
    --gpu-memory-utilization "$6" --kv-transfer-config "$(kv_config "$2" "$4")" $ENGINE_ARGS
  # One at a time: vLLM sizes its KV cache from the GPU memory it finds at start-up.
  wait_http "$idx" "$log" "http://127.0.0.1:$3/health" "$ENGINE_START_TIMEOUT_S"
}
simulate() { # simulate NAME ROLE PORT [DAEMON_PORT]
  local log="$LOG_DIR/$1.log" idx=${#PIDS[@]}
  start "$1 simulator" "$log" "${KVFERRY[@]}" simulate --role "$2" --model "$SERVED_MODEL_NAME" \
    --listen "127.0.0.1:$3" ${4:+--daemon "127.0.0.1:$4"}
  wait_log "$idx" "$log" "kvferry simulator serving" "$START_TIMEOUT_S"
}
REF_URL=http://127.0.0.1:$PREFILL_PORT # the greedy check's reference: the prefill engine alone
case "$VLLM" in
  skip) say "VLLM=skip: no engines (the proxy reports them down)" ;;
  simulate)
    simulate prefill prefill "$PREFILL_PORT" "$PREFILL_DAEMON_PORT"
    simulate decode decode "$DECODE_PORT" "$DECODE_DAEMON_PORT"
    simulate reference both "$REF_PORT"
    REF_URL=http://127.0.0.1:$REF_PORT
    ;;
  *)
    serve prefill kv_producer "$PREFILL_PORT" "$PREFILL_DAEMON_PORT" "$PREFILL_GPU" "$PREFILL_GPU_SHARE"
    serve decode kv_consumer "$DECODE_PORT" "$DECODE_DAEMON_PORT" "$DECODE_GPU" "$DECODE_GPU_SHARE"
    ;;
esac

# -- 3. the proxy --------------------------------------------------------------------------
idx=${#PIDS[@]}
start proxy "$LOG_DIR/proxy.log" "${KVFERRY[@]}" proxy --listen "127.0.0.1:$PROXY_PORT" --transfer "$TRANSFER" \
  --prefill "http://127.0.0.1:$PREFILL_PORT=127.0.0.1:$PREFILL_DAEMON_PORT" \
  --decode "http://127.0.0.1:$DECODE_PORT=127.0.0.1:$DECODE_DAEMON_PORT"
wait_log "$idx" "$LOG_DIR/proxy.log" "kvferry proxy serving" "$START_TIMEOUT_S"
if [[ "$VLLM" == skip ]]; then
  say "daemons and proxy serve; VLLM=skip sends no request"
  [[ "$KEEP" == 1 ]] && { say "KEEP=1: serving until Ctrl-C"; wait; }
  exit 0
fi
wait_http "$idx" "$LOG_DIR/proxy.log" "http://127.0.0.1:$PROXY_PORT/health" "$START_TIMEOUT_S" "finds both engines healthy"

# -- 4. the seed's request -----------------------------------------------------------------
say "the seed's request: POST /v1/completions through the proxy"
MODEL="$SERVED_MODEL_NAME" PROMPT="$PROMPT" MAX_TOKENS="$MAX_TOKENS" PROXY_PORT="$PROXY_PORT" \
  OUTPUT="$LOG_DIR/answer.json" bash "$HERE/curl.sh" || die "the seed's request failed (answer in $LOG_DIR/answer.json)"
echo
failed=0
text=$(json_field "$LOG_DIR/answer.json" choices.0.text)
finish=$(json_field "$LOG_DIR/answer.json" choices.0.finish_reason)
tokens=$(json_field "$LOG_DIR/answer.json" usage.completion_tokens)
say "answer: ${#text} characters, $tokens tokens, finish_reason $finish"
if [[ -z "$text" || "$finish" == error ]]; then
  say "FAILED: the answer has no text or ended in error" >&2
  failed=1
fi

# -- 5. did the KV go through kvferry? -----------------------------------------------------
sleep 1 # releases and metrics settle
consumed=$(metric "$DECODE_METRICS_PORT" kvferry_daemon_entries_removed_total 'reason="consumed"')
moved=$(($(metric "$PREFILL_METRICS_PORT" kvferry_daemon_transfer_bytes_total) + $(metric "$DECODE_METRICS_PORT" kvferry_daemon_transfer_bytes_total)))
left=$(($(metric "$PREFILL_METRICS_PORT" kvferry_daemon_entries) + $(metric "$DECODE_METRICS_PORT" kvferry_daemon_entries)))
say "KV moved between the daemons: $moved bytes ($TRANSFER); entries consumed by the decode engine: $consumed; entries left: $left"
if ((moved == 0 || consumed == 0)); then
  say "FAILED: the decode engine did not take the prompt's KV from kvferry (see $LOG_DIR/decode.log)" >&2
  failed=1
fi
if grep -hs "kvferry: cannot load\|is not saved" "$LOG_DIR/prefill.log" "$LOG_DIR/decode.log" | cut -c1-300 | grep .; then
  say "FAILED: the connector logged failed saves or loads (above)" >&2
  failed=1
fi

# -- 6. greedy output: through the proxy and from one engine alone -------------------------
if [[ "$CHECK" == 1 ]]; then
  body=$(node -e 'console.log(JSON.stringify({ model: process.argv[1], prompt: process.argv[2], max_tokens: 32, temperature: 0 }))' \
    "$SERVED_MODEL_NAME" "$PROMPT")
  curl -sS --max-time 300 -o "$LOG_DIR/greedy-proxy.json" "http://127.0.0.1:$PROXY_PORT/v1/completions" \
    -H "Content-Type: application/json" -d "$body" || true
  curl -sS --max-time 300 -o "$LOG_DIR/greedy-reference.json" "$REF_URL/v1/completions" \
    -H "Content-Type: application/json" -d "$body" || true
  via=$(json_field "$LOG_DIR/greedy-proxy.json" choices.0.text)
  ref=$(json_field "$LOG_DIR/greedy-reference.json" choices.0.text)
  say "greedy, 32 tokens, through the proxy: \"${via//$'\n'/\\n}\""
  say "greedy, 32 tokens, one engine alone:  \"${ref//$'\n'/\\n}\""
  if [[ -z "$via" || -z "$ref" ]]; then
    say "FAILED: a greedy request failed (answers in $LOG_DIR/greedy-*.json)" >&2
    failed=1
  elif [[ "$via" == "$ref" ]]; then
    say "greedy outputs identical"
  else
    # The decode engine computes the prompt's last token itself, in a decode step; a near
    # tie between two tokens may fall the other way. A wrong KV gives unrelated text at once.
    say "WARNING: the greedy outputs differ (a near tie, or a wrong KV if they differ from the first words)"
  fi
fi

((failed == 0)) || exit 1
say "OK"
if [[ "$KEEP" == 1 ]]; then
  say "KEEP=1: the proxy serves on http://127.0.0.1:$PROXY_PORT until Ctrl-C (bash $HERE/curl.sh sends the seed's request)"
  wait
fi
