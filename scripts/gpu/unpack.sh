#!/usr/bin/env bash
# On the GPU machine: puts the bundle of scripts/gpu/pack.sh together from its parts (in
# /tmp/kvf-stage, left by receive.sh, or in .gpu/ when this call carried them), checks their
# sha256s against the manifest, and unpacks it into /tmp/kvf (KVF_DEST):
#   /tmp/kvf/node/bin/node   Node 20        /tmp/kvf/site   vLLM 0.26.0 and what it needs (PYTHONPATH)
#   /tmp/kvf/app             kvferry's runtime (dist, native addon, node_modules, python, connector)
#   /tmp/kvf/bin             vllm, kvferry wrappers
# Idempotent: a bundle already unpacked (same archive sha256) is not unpacked again.
#
#   eval "$(bash scripts/gpu/unpack.sh [--check] [--no-link])"
#
# stdout: the export lines (also in /tmp/kvf/env.sh); everything else goes to stderr.
# --check     then runs scripts/gpu/check.py in that environment (imports, `vllm serve`'s app,
#             a vLLM kernel on the GPU); its failure fails this script.
# --no-link   leave the repository alone; by default dist/, build/ and node_modules/, when this
#             checkout has none, become links into /tmp/kvf/app, so that `node bin/kvferry.js`
#             and test/gpu/vllm_pd.py work from the repository too.
set -euo pipefail
cd "$(dirname "$0")/../.."
STAGE=${KVF_STAGE:-/tmp/kvf-stage}
DEST=${KVF_DEST:-/tmp/kvf}
CHECK=0
LINK=1
for a in "$@"; do
  case $a in
    --check) CHECK=1 ;;
    --no-link) LINK=0 ;;
    *) echo "usage: unpack.sh [--check] [--no-link]" >&2; exit 2 ;;
  esac
done
say() { echo "unpack: $*" >&2; }
die() { say "$*"; exit 1; }

manifest=
for m in "$STAGE/manifest" .gpu/manifest; do
  [[ -f $m ]] && { manifest=$m; break; }
done
if [[ -z $manifest && -f $DEST/.bundle ]]; then
  manifest=$DEST/manifest  # unpacked earlier, stage gone: keep what is there
fi
[[ -n $manifest && -f $manifest ]] || die "no manifest in $STAGE or .gpu/: run receive.sh with the parts first"
archive_sha=$(awk '$1 == "archive" {print $2}' "$manifest")
[[ -n $archive_sha ]] || die "$manifest names no archive"

if [[ -f $DEST/.bundle && $(cat "$DEST/.bundle") == "$archive_sha" ]]; then
  say "$DEST already holds this bundle (${archive_sha:0:12})"
else
  parts=()
  missing=()
  while read -r name sha size; do
    [[ $name == part-* ]] || continue
    found=
    for dir in "$STAGE" .gpu; do
      f=$dir/$name
      [[ -f $f ]] || continue
      if [[ $(stat -c %s "$f") == "$size" && $(sha256sum <"$f" | cut -d' ' -f1) == "$sha" ]]; then
        found=$f
        break
      fi
      say "$f: size or sha256 differs from the manifest's: not used"
    done
    if [[ -n $found ]]; then parts+=("$found"); else missing+=("$name"); fi
  done < <(grep -v '^#' "$manifest")
  ((${#missing[@]} == 0)) || die "missing (or damaged): ${missing[*]}: carry each to a call running receive.sh"
  ((${#parts[@]} > 0)) || die "$manifest lists no parts"
  say "unpacking ${#parts[@]} part(s) into $DEST"
  free_kb=$(df -Pk "$(dirname "$DEST")" | awk 'NR == 2 {print $4}')
  ((free_kb > 2 * 1024 * 1024)) || die "less than 2 GiB free under $(dirname "$DEST")"
  rm -rf "$DEST.new"
  mkdir -p "$DEST.new"
  got_sha=$(cat "${parts[@]}" | sha256sum | cut -d' ' -f1)
  [[ $got_sha == "$archive_sha" ]] || die "the parts put together do not match the archive's sha256"
  cat "${parts[@]}" | xz -dc | tar -x -C "$DEST.new" --strip-components=1 --no-same-owner || die "xz/tar failed"
  [[ -x $DEST.new/node/bin/node && -d $DEST.new/site/vllm && -f $DEST.new/app/bin/kvferry.js ]] || die "the archive did not unpack whole"
  cp "$manifest" "$DEST.new/manifest"
  echo "$archive_sha" >"$DEST.new/.bundle"
  rm -rf "$DEST"
  mv "$DEST.new" "$DEST"
  say "done: $(du -sh "$DEST" | cut -f1)"
fi

if ((LINK)); then
  for d in dist build node_modules; do
    if [[ -L $d ]]; then
      ln -sfn "$DEST/app/$d" "$d"
    elif [[ ! -e $d ]]; then
      ln -s "$DEST/app/$d" "$d"
      say "linked $d -> $DEST/app/$d"
    fi
  done
fi

cat >"$DEST/env.sh" <<EOF
export PATH=$DEST/bin:$DEST/node/bin:\$PATH
export PYTHONPATH=$DEST/site:$DEST/app/python:$DEST/app/connectors/vllm\${PYTHONPATH:+:\$PYTHONPATH}
export KVFERRY_NODE=$DEST/node/bin/node
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
# FlashInfer is not carried: its sampler would import it (vLLM then uses its PyTorch sampler).
export VLLM_USE_FLASHINFER_SAMPLER=0
EOF
if ((CHECK)); then
  say "checking (scripts/gpu/check.py)"
  (
    # shellcheck disable=SC1091
    . "$DEST/env.sh"
    "$DEST/node/bin/node" "$DEST/app/bin/kvferry.js" --version >&2
    "${KVF_PYTHON:-python3}" scripts/gpu/check.py >&2
  ) || die "the check failed"
fi
cat "$DEST/env.sh"
