#!/usr/bin/env bash
# Whole-model A/B (docs/gpu.md, "Deciding a change"), local half: builds the benchmark at COMMIT in a temporary
# worktree and packs its KimiLinear DLLs (which embed that commit's committed kernels) into STAGE/base.txz, the
# baseline tools/gpu/model-ab.sh times against this checkout.
#   tools/gpu/stage-base.sh COMMIT [STAGE]     (STAGE default .gpu; stage the rest with tools/gpu/run-gpu.sh first)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
commit=${1:?usage: stage-base.sh COMMIT [STAGE]}
stage=$(mkdir -p "${2:-$repo/.gpu}" && cd "${2:-$repo/.gpu}" && pwd)
tree=$(mktemp -d)
trap 'git -C "$repo" worktree remove --force "$tree" >/dev/null 2>&1 || true; rm -rf "$tree"' EXIT
git -C "$repo" worktree add -q --detach "$tree" "$commit"
dotnet build "$tree/KimiLinear.Benchmarks" -c Release -v q -nologo
mkdir -p "$tree/base" && cp "$tree"/KimiLinear.Benchmarks/bin/Release/net10.0/KimiLinear.*.dll "$tree/base/"
tar cJf "$stage/base.txz" -C "$tree" base
echo "baseline $(git -C "$repo" rev-parse --short "$commit") staged in $stage/base.txz ($(du -h "$stage/base.txz" | cut -f1))"
