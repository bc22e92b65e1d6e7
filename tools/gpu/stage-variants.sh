#!/usr/bin/env bash
# Several candidate changes timed in one GPU call (docs/gpu.md, "Many candidates in one call"), local half: for each
# NAME=REV packs into STAGE/variants/NAME.txz the kernel sources in which REV differs from this checkout, with the
# families tools/gpu/variants.sh must rebuild for it (none when REV changes C# only; all when a shared header changed),
# and, where REV's C# differs, its KimiLinear DLLs (the benchmark built at REV in a temporary worktree).
#   tools/gpu/stage-variants.sh [--stage STAGE] NAME=REV [NAME=REV ...]    (STAGE default .gpu; stage the rest with
#   GPU_APPS=bench tools/gpu/run-gpu.sh first: the benchmark of this checkout is the baseline, "head")
# A variant is a few KB, or ~0.6 MB (xz) where its C# differs: several fit beside the runtime and the checkout in the
# 64 MiB a call carries.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
stage=$repo/.gpu
if [ "${1:-}" = --stage ]; then stage=$2; shift 2; fi
[ $# -gt 0 ] || { echo "usage: stage-variants.sh [--stage STAGE] NAME=REV [NAME=REV ...]" >&2; exit 2; }
mkdir -p "$stage/variants" && stage=$(cd "$stage" && pwd)
rm -f "$stage"/variants/*.txz
cp "$repo/tools/gpu/variants.sh" "$stage/"

for spec in "$@"; do
    name=${spec%%=*} rev=${spec#*=}
    [[ "$name" =~ ^[A-Za-z0-9_-]+$ && "$name" != head && "$spec" == *=* ]] || { echo "bad variant '$spec' (NAME=REV, NAME not 'head')" >&2; exit 2; }
    tree=$(mktemp -d)
    git -C "$repo" worktree add -q --detach "$tree/src" "$rev"
    mkdir -p "$tree/pack/dlls" "$tree/pack/kernels"
    # The DLLs only where the library or benchmark differs, its PTX aside (~0.6 MB packed, the Cuda one embedding its
    # PTX): a kernel-only candidate runs in head's benchmark with its kernels rebuilt there.
    if ! git -C "$repo" diff --quiet HEAD "$rev" -- KimiLinear.Core KimiLinear.Cuda KimiLinear.Benchmarks Directory.Build.props \
            ':(exclude)KimiLinear.Cuda/Kernels/ptx'; then
        dotnet build "$tree/src/KimiLinear.Benchmarks" -c Release -v q -nologo > "$tree/build.log" 2>&1 || { tail -20 "$tree/build.log"; exit 1; }
        cp "$tree"/src/KimiLinear.Benchmarks/bin/Release/net10.0/KimiLinear.*.dll "$tree/pack/dlls/"
    fi
    # The kernel sources that differ from this checkout's, and the families to rebuild from them.
    changed=$(git -C "$repo" diff --name-only HEAD "$rev" -- kernels | grep -E '\.(cu|cuh)$' | grep -v '/tests/' || true)
    families=""
    for f in $changed; do
        [ -f "$tree/src/$f" ] || { echo "$name: $f is deleted at $rev; variants.sh cannot build that" >&2; exit 1; }
        mkdir -p "$tree/pack/$(dirname "$f")" && cp "$tree/src/$f" "$tree/pack/$f"
        case "$f" in
            *.cuh) families=all ;;
            *) [ "$families" = all ] || families="$families $(basename "$f" .cu)" ;;
        esac
    done
    families=${families# }
    echo "$families" > "$tree/pack/families"
    commit=$(git -C "$repo" rev-parse --short "$rev")
    echo "$commit" > "$tree/pack/commit"
    tar cJf "$stage/variants/$name.txz" -C "$tree/pack" .
    git -C "$repo" worktree remove --force "$tree/src" && rm -rf "$tree"
    echo "$name = $commit: rebuild [${families:-none}] ($(du -h "$stage/variants/$name.txz" | cut -f1))"
done
echo "Next: device run with command 'bash <STAGE>/variants.sh' and carry ['<STAGE>']."
