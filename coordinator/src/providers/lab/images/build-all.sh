#!/usr/bin/env bash
# build-all.sh: build (or find up to date) every lab image; prints one `name=tag` line per image
# on stdout, progress on stderr. Stops at the first failure (exit status of that recipe).
# Usage: bash build-all.sh [--force]    Env: see common.sh (FLOTILLA_*).
set -Eeuo pipefail
FLOTILLA_IMAGES_DIR="${FLOTILLA_IMAGES_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
export FLOTILLA_IMAGES_DIR
unset FLOTILLA_RECIPE_HASH   # each recipe hashes its own text
t0=$SECONDS
out=()
for name in hello registry consul host; do
  s=$SECONDS
  tag=$(bash "$FLOTILLA_IMAGES_DIR/$name.sh" "$@" | tail -n 1)
  [[ $tag == "flotilla/lab-$name:"* ]] || { echo "==> [build-all] $name.sh gave no tag" >&2; exit 1; }
  echo "==> [build-all] $name done in $((SECONDS - s))s" >&2
  out+=("$name=$tag")
done
echo "==> [build-all] all done in $((SECONDS - t0))s" >&2
printf '%s\n' "${out[@]}"
