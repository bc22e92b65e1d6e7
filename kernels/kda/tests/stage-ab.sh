#!/usr/bin/env bash
# KDA kernel candidates against this checkout in one GPU call, local half: copies each NAME=REV's kda.cu, harness,
# emulator header and the headers in kernels/ into STAGE/NAME/kernels/ (git show: no worktree, no build). Then, on the GPU machine (kernels/kda/tests/ab.sh):
#   device run(command: "bash kernels/kda/tests/ab.sh STAGE", carry: ["STAGE"])
#   kernels/kda/tests/stage-ab.sh [--stage STAGE] NAME=REV [NAME=REV ...]    (STAGE default .gpu-kda, git-ignored)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../../.." && pwd)
stage=$repo/.gpu-kda
if [ "${1:-}" = --stage ]; then stage=$2; shift 2; fi
[ $# -gt 0 ] || { echo "usage: stage-ab.sh [--stage STAGE] NAME=REV [NAME=REV ...]" >&2; exit 2; }
rm -rf "$stage" && mkdir -p "$stage"
for spec in "$@"; do
    name=${spec%%=*} rev=${spec#*=}
    [[ "$name" =~ ^[A-Za-z0-9_-]+$ && "$name" != head && "$spec" == *=* ]] || { echo "bad candidate '$spec' (NAME=REV, NAME not 'head')" >&2; exit 2; }
    mkdir -p "$stage/$name/kernels/kda/tests"
    headers=$(git -C "$repo" ls-tree --name-only "$rev" kernels/ | grep '\.cuh$')   # kda.cu includes some since v11
    for f in kernels/kda/kda.cu kernels/kda/tests/kda_harness.cu kernels/kda/tests/cuda_emu.h $headers; do
        git -C "$repo" show "$rev:$f" > "$stage/$name/$f"
    done
    echo "$name = $(git -C "$repo" rev-parse --short "$rev")"
done
echo "Next: device run with command 'bash kernels/kda/tests/ab.sh $(realpath --relative-to="$repo" "$stage")' and carry ['$(realpath --relative-to="$repo" "$stage")']."
