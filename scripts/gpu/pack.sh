#!/usr/bin/env bash
# Packs what a bare GPU machine of the device tool lacks to run real vLLM 0.26.0 (`vllm serve`,
# attention backend TRITON_ATTN) with kvferry, into .gpu/part-1 .. part-N (one tar.xz, split;
# each part at most 60 MiB, one `carry` of one device call) and .gpu/manifest (sha256s).
#
#   bash scripts/gpu/pack.sh          # here, on a machine with the registry, after `npm run build`
#
# On the GPU machine, one call per part, then one that unpacks (see scripts/gpu/README.md):
#   carry [.gpu/part-K, .gpu/manifest]:  bash scripts/gpu/receive.sh part-K
#   then:  eval "$(bash scripts/gpu/unpack.sh --check)"    # /tmp/kvf: node, site, app
#
# The bundle (kvf/ in the archive, /tmp/kvf there):
#   node/bin/node   this machine's Node 20, symbols stripped
#   site/           PYTHONPATH: vLLM 0.26.0 unpacked from its wheel, less what TRITON_ATTN on an
#                   H200 never loads (below), and the cp312 wheels of scripts/gpu/wheels.txt
#   app/            kvferry's runtime: dist/, build/Release/*.node, bin/, package.json, the
#                   production node_modules (no dev dependencies, no .map/.d.ts/.md), python/kvferry,
#                   connectors/vllm/kvferry_vllm
#   bin/vllm, bin/kvferry   wrappers;  MANIFEST.txt  what is in it
#
# Left out of vLLM (the import of every module of the serving path still works without them):
#   vllm_flash_attn/_vllm_fa2_C, _vllm_fa3_C   FlashAttention 2/3 kernels (435 MiB): only the
#       FLASH_ATTN backends, MLA and vision encoders call them. vllm_flash_attn/__init__.py raises
#       when neither is there; that raise is patched out, so the package reports FA2/FA3
#       unavailable (as on a GPU it does not support) and fa_utils still imports.
#   _moe_C_stable_libtorch                      MoE kernels (45 MiB): mixture-of-experts models only;
#                                               vLLM imports it under contextlib.suppress(ImportError)
#   vllm-rs                                     the Rust frontend binary (41 MiB): VLLM_USE_RUST_FRONTEND only
#   third_party/deep_gemm, third_party/fmha_sm100   FP8 DeepGEMM (probed with try/except) and
#                                               Blackwell sparse attention sources (65 MiB)
#   _flashmla_C, _flashmla_extension_C, _qutlass_C, _rust_tool_parser (4 MiB): MLA attention,
#       QuTLASS FP4 quantization, the Rust tool-call parser; each imported under try/except or lazily
#   _C_stable_libtorch (kept: layernorm, rotary, activations, cache ops, sampling... of every
#       model) loses the machine code that an sm_90 GPU never loads (scripts/gpu/fatbin.py, 40 MiB
#       of zstd-compressed payloads zeroed in place): the SASS of sm_75/80/86/89/100/120, and the PTX
#       of the compiled files that carry sm_90 SASS; the PTX of the others stays (the driver
#       JIT-compiles it). KVF_KEEP_SM=all keeps everything (the bundle then needs 2 parts).
# Left out of vLLM's requirements (imported lazily, by features a Llama on TRITON_ATTN does not
# use): flashinfer, cutlass-dsl, quack, tilelang, tokenspeed-mla, humming-kernels, torchcodec,
# PyNvVideoCodec, nvtx, fastsafetensors, compressed-tensors, mistral_common, lm-format-enforcer,
# outlines_core, lark, jsonschema, anthropic, mcp, opentelemetry-*, depyf, blake3, ijson,
# setproctitle, python-json-logger, nvidia-cudnn-frontend; numba, opencv, pillow, einops, ninja,
# tiktoken, sentencepiece ... are in the image.
#
# Environment: VLLM_WHEEL (the vllm-0.26.0 wheel; else found in .gpu/wheels or /tmp/vwheels, else
# downloaded), KVF_NODE (node binary, default `command -v node`), KVF_KEEP_SM (default 90),
# KVF_PART_SIZE (default 60M). Needs python3 with pip, npm, xz, unzip, split, sha256sum.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=$ROOT/.gpu
BUILD=$OUT/build
WHEELS=$OUT/wheels
VLLM_VERSION=0.26.0
KEEP_SM=${KVF_KEEP_SM:-90}
PART_SIZE=${KVF_PART_SIZE:-60M}
NODE_BIN=${KVF_NODE:-$(command -v node || true)}
say() { echo "pack: $*" >&2; }
die() { say "$*"; exit 1; }

# .gpu/ must never travel unasked (nor be committed): ignore it through .git/info/exclude.
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo /.gpu/ >>"$exclude"

for f in dist/cli/main.js build/Release/kvferry_native.node node_modules package-lock.json; do
  [[ -e $f ]] || die "$f is missing: run \`npm install\` / \`npm run build\` first"
done
[[ -x $NODE_BIN ]] || die "no node binary (set KVF_NODE)"
node_version=$("$NODE_BIN" --version)
[[ $node_version == v20.* ]] || die "$NODE_BIN is $node_version, not Node 20"
for t in python3 npm xz unzip split sha256sum; do command -v $t >/dev/null || die "$t is needed"; done

# 1. The wheels: cp312 (the image's Python 3.12), manylinux x86_64.
mkdir -p "$WHEELS"
PLATFORMS=()
for p in manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_26 \
         manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do
  PLATFORMS+=(--platform "${p}_x86_64")
done
PIP_TARGET_ARGS=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none "${PLATFORMS[@]}")
say "fetching the wheels of scripts/gpu/wheels.txt (cp312) into $WHEELS"
python3 -m pip download -q --disable-pip-version-check --no-deps "${PIP_TARGET_ARGS[@]}" -d "$WHEELS" -r scripts/gpu/wheels.txt

VLLM_WHEEL=${VLLM_WHEEL:-}
if [[ -z $VLLM_WHEEL ]]; then
  for w in "$WHEELS/vllm-$VLLM_VERSION-"*.whl "/tmp/vwheels/vllm-$VLLM_VERSION-"*.whl; do
    [[ -f $w ]] && { VLLM_WHEEL=$w; break; }
  done
fi
if [[ -z $VLLM_WHEEL ]]; then
  say "downloading vllm==$VLLM_VERSION (~300 MB)"
  python3 -m pip download -q --disable-pip-version-check --no-deps "${PIP_TARGET_ARGS[@]}" -d "$WHEELS" "vllm==$VLLM_VERSION"
  VLLM_WHEEL=$(ls "$WHEELS"/vllm-$VLLM_VERSION-*.whl)
fi
say "vLLM wheel: $VLLM_WHEEL"

# 2. The tree.
rm -rf "$BUILD"
K=$BUILD/kvf
mkdir -p "$K/site" "$K/node/bin" "$K/app/build/Release" "$K/app/python" "$K/app/connectors/vllm" "$K/bin"
say "site: the wheels"
python3 -m pip install -q --disable-pip-version-check --no-deps --no-compile --no-index --find-links "$WHEELS" \
  "${PIP_TARGET_ARGS[@]}" --target "$K/site" -r scripts/gpu/wheels.txt
rm -rf "$K/site/bin"

say "site: vLLM $VLLM_VERSION, stripped"
unzip -q "$VLLM_WHEEL" -d "$K/site" \
  -x 'vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so' 'vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so' \
     'vllm/_moe_C_stable_libtorch.abi3.so' 'vllm/vllm-rs' \
     'vllm/third_party/deep_gemm/*' 'vllm/third_party/fmha_sm100/*' 'vllm-*.dist-info/RECORD' \
     'vllm/_flashmla_C.abi3.so' 'vllm/_flashmla_extension_C.abi3.so' 'vllm/_qutlass_C.abi3.so' \
     'vllm/_rust_tool_parser.abi3.so'
V=$K/site/vllm
[[ -f $V/_C_stable_libtorch.abi3.so && -f $V/platforms/cuda.py ]] || die "$VLLM_WHEEL does not look like vLLM $VLLM_VERSION"
python3 - "$V/vllm_flash_attn/__init__.py" <<'EOF'
import sys
p = sys.argv[1]
s = open(p).read()
old = "if not (FA2_AVAILABLE or FA3_AVAILABLE):\n    raise ImportError("
new = "if False and not (FA2_AVAILABLE or FA3_AVAILABLE):  # kvferry scripts/gpu: FA kernels left out\n    raise ImportError("
if old not in s:
    sys.exit(f"{p}: the FA2/FA3 check to patch is not there (another vLLM?)")
open(p, "w").write(s.replace(old, new, 1))
EOF
if [[ $KEEP_SM != all ]]; then
  # shellcheck disable=SC2086
  python3 scripts/gpu/fatbin.py "$V/_C_stable_libtorch.abi3.so" --keep-sass $KEEP_SM --drop-shadowed-ptx >&2
fi

say "node: $NODE_BIN ($node_version)"
if command -v strip >/dev/null; then
  strip --strip-all -o "$K/node/bin/node" "$NODE_BIN"
else
  cp "$NODE_BIN" "$K/node/bin/node"
fi
chmod 755 "$K/node/bin/node"
"$K/node/bin/node" --version >/dev/null

say "app: kvferry (dist, native addon, production node_modules, python client, vLLM connector)"
cp -a dist bin package.json "$K/app/"
cp -a build/Release/kvferry_native.node "$K/app/build/Release/"
NPM=$BUILD/npm
mkdir -p "$NPM"
cp -a package.json package-lock.json node_modules "$NPM/"
(cd "$NPM" && npm prune --omit=dev --ignore-scripts --no-audit --no-fund >/dev/null)
find "$NPM/node_modules" -type f \( -name '*.map' -o -name '*.d.ts' -o -name '*.d.mts' -o -name '*.d.cts' -o -name '*.md' -o -name '*.markdown' \) -delete
mv "$NPM/node_modules" "$K/app/node_modules"
rm -rf "$NPM"
cp -a python/kvferry "$K/app/python/"
cp -a connectors/vllm/kvferry_vllm "$K/app/connectors/vllm/"
find "$K" -name __pycache__ -type d -prune -exec rm -rf {} +

cat >"$K/bin/vllm" <<'EOF'
#!/bin/sh
# `vllm` as its console script would be (vLLM is on PYTHONPATH, not pip-installed).
exec "${KVF_PYTHON:-python3}" -m vllm.entrypoints.cli.main "$@"
EOF
cat >"$K/bin/kvferry" <<'EOF'
#!/bin/sh
d=$(dirname "$(readlink -f "$0")")/..
exec "$d/node/bin/node" "$d/app/bin/kvferry.js" "$@"
EOF
chmod 755 "$K/bin/vllm" "$K/bin/kvferry"

{
  echo "kvferry GPU bundle: made $(date -u +%FT%TZ) from $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src native 2>/dev/null || echo ' (+ local changes)')"
  echo "node $node_version (stripped)"
  echo "vllm $VLLM_VERSION from $(basename "$VLLM_WHEEL"); kept SASS: sm_$KEEP_SM (+ PTX it does not shadow); left out: FA2/FA3, _moe_C, vllm-rs, deep_gemm, fmha_sm100, _flashmla_C, _flashmla_extension_C, _qutlass_C, _rust_tool_parser"
  echo "wheels:"
  grep -v '^#' scripts/gpu/wheels.txt | sed 's/ *#.*//; /^$/d; s/^/  /'
} >"$K/MANIFEST.txt"

# 3. One tar.xz, split.
say "compressing (xz -9e; a few minutes)"
rm -f "$OUT"/part-* "$OUT/manifest" "$OUT/kvf.tar.xz"
tar -C "$BUILD" --sort=name --owner=0 --group=0 --numeric-owner -cf - kvf | xz -9e -T0 >"$OUT/kvf.tar.xz"
split -b "$PART_SIZE" -a 1 --numeric-suffixes=1 "$OUT/kvf.tar.xz" "$OUT/part-"
parts=("$OUT"/part-*)
{
  echo "# kvferry GPU bundle: $(head -1 "$K/MANIFEST.txt" | sed 's/^kvferry GPU bundle: //')"
  echo "# name sha256 bytes (archive = the parts concatenated, a tar.xz)"
  echo "archive $(sha256sum <"$OUT/kvf.tar.xz" | cut -d' ' -f1) $(stat -c %s "$OUT/kvf.tar.xz")"
  for p in "${parts[@]}"; do
    echo "$(basename "$p") $(sha256sum <"$p" | cut -d' ' -f1) $(stat -c %s "$p")"
  done
} >"$OUT/manifest"
rm -f "$OUT/kvf.tar.xz"
unpacked=$(du -s --apparent-size --block-size=1 "$K" | cut -f1 | numfmt --to=iec-i --suffix=B)
rm -rf "$BUILD"

echo "${#parts[@]} part(s), $(cat "${parts[@]}" | wc -c | numfmt --to=iec-i --suffix=B) ($unpacked unpacked):"
for p in "${parts[@]}"; do
  echo "  .gpu/$(basename "$p")  $(stat -c %s "$p" | numfmt --to=iec-i --suffix=B)"
done
echo "manifest: .gpu/manifest"
if ((${#parts[@]} == 1)); then
  echo "On the GPU machine, one call with carry [\".gpu/part-1\", \".gpu/manifest\"]:"
  echo "  eval \"\$(bash scripts/gpu/unpack.sh --check)\" && ...your commands..."
else
  echo "On the GPU machine, for each part K but the last, a call with carry [\".gpu/part-K\", \".gpu/manifest\"]:"
  echo "  bash scripts/gpu/receive.sh part-K"
  echo "then, within ~30 s, the last part's call:"
  echo "  bash scripts/gpu/receive.sh part-${#parts[@]} && eval \"\$(bash scripts/gpu/unpack.sh --check)\" && ...your commands..."
fi
