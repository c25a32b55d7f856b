#!/usr/bin/env bash
# On the GPU machine: keeps the bundle parts this call carried (.gpu/PART, .gpu/manifest) in
# /tmp/kvf-stage (KVF_STAGE), where the next calls find them (while the machine stays warm), and
# says which parts are there, verified, and which are still to come.
#
#   bash scripts/gpu/receive.sh part-2 [part-3 ...]
#
# A manifest of another bundle than the one staged empties the stage first. Exit status 0 when
# the parts named arrived intact (all parts there or not), 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/../.."
STAGE=${KVF_STAGE:-/tmp/kvf-stage}
say() { echo "receive: $*" >&2; }

[[ -f .gpu/manifest ]] || { say "no .gpu/manifest here: carry it with every part"; exit 1; }
mkdir -p "$STAGE"
if [[ -f $STAGE/manifest ]] && ! cmp -s .gpu/manifest "$STAGE/manifest"; then
  say "the stage held another bundle: emptied"
  rm -f "$STAGE"/part-* "$STAGE/manifest"
fi
cp .gpu/manifest "$STAGE/manifest"

status=0
for p in "$@"; do
  p=$(basename "$p")
  if [[ ! -f .gpu/$p ]]; then
    say "$p did not come: name .gpu/$p in carry"
    status=1
    continue
  fi
  want=$(awk -v n="$p" '$1 == n {print $2}' "$STAGE/manifest")
  [[ -n $want ]] || { say "$p is not in the manifest"; status=1; continue; }
  cp ".gpu/$p" "$STAGE/$p.tmp"
  if [[ $(sha256sum <"$STAGE/$p.tmp" | cut -d' ' -f1) != "$want" ]]; then
    say "$p: sha256 differs from the manifest's: not kept"
    rm -f "$STAGE/$p.tmp"
    status=1
    continue
  fi
  mv "$STAGE/$p.tmp" "$STAGE/$p"
done

missing=0
while read -r name _sha size; do
  [[ $name == part-* ]] || continue
  if [[ -f $STAGE/$name ]]; then
    echo "  $name  $size bytes  there"
  else
    echo "  $name  $size bytes  MISSING"
    missing=$((missing + 1))
  fi
done < <(grep -v '^#' "$STAGE/manifest")
if ((missing)); then
  echo "receive: $missing part(s) still to come"
else
  echo "receive: all parts there: bash scripts/gpu/unpack.sh"
fi
exit $status
