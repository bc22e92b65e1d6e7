#!/usr/bin/env bash
# Builds every kernel source into the images KimiLinear.Cuda embeds, and writes manifest.json (sha256 of each source)
# so the CPU-side tests can tell when a source changed without its PTX being rebuilt.
# Sources: kernels/<family>.cu, and kernels/<family>/<family>.cu for a family that keeps its own notes and tests beside
# it (kernels/kda/). The module name is <family>:
#   <family>.sm90.ptx     compute_90 PTX: Hopper and newer (the driver JIT-compiles it for the card)
#   <family>.sm80.ptx     compute_80 PTX: Ampere and Ada
#   <family>.sm90a.cubin  only for sources marked KIMI_REQUIRES_SM90A (Hopper-only instructions such as wgmma)
# Every source is built for sm90 and sm80 unless a line of it says otherwise, e.g. `// KIMI_PTX_TARGETS: sm90` for a
# source that needs Hopper (kda.cu: its scan takes up to 205 KiB of shared memory a block). KernelCatalog.TargetsOf in C# must agree; the
# freshness tests check that it does.
# Needs nvcc (the GPU machine has CUDA 13.0). The PTX then declares ISA 9.0 and needs a CUDA 13 driver (>= 580);
# building with NVCC=/path/to/a/12.x/nvcc gives PTX that CUDA 12 drivers load (the kernels use nothing newer).
# Usage: kernels/build.sh [output-folder]   (default: KimiLinear.Cuda/Kernels/ptx)
# KIMI_BUILD_ONLY="moe gemv" builds those families alone and writes no manifest (tools/gpu/variants.sh builds a candidate
# change's families so, over a copy of the committed PTX).
# Also prints ptxas's resource report (registers, shared memory, spills) for sm_90, and for sm_90a where a source needs it;
# exit status 1 if any build failed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../KimiLinear.Cuda/Kernels/ptx}
nvcc=${NVCC:-nvcc}
flags=(-std=c++17 -O3)
mkdir -p "$out"
status=0

# The sources, relative to kernels/ (the manifest's keys), in file-name order.
sources=$(cd "$here" && for f in *.cu */*.cu; do [ "$(basename "$f" .cu)" = "$(dirname "$f")" ] || [ "$(dirname "$f")" = . ] && echo "$f"; done | LC_ALL=C sort)
if [ -n "${KIMI_BUILD_ONLY:-}" ]; then
    sources=$(for f in $sources; do for only in $KIMI_BUILD_ONLY; do [ "$(basename "$f" .cu)" = "$only" ] && echo "$f"; done; done)
fi

# One source: its images, then ptxas's report; output to stdout, nonzero exit if an image failed.
build_one() {
    local cu=$here/$1 name status=0 target arch targets
    name=$(basename "$cu" .cu)
    targets=$(sed -n 's|^// KIMI_PTX_TARGETS:[[:space:]]*||p' "$cu" | head -n 1)
    for target in ${targets:-sm90 sm80}; do
        arch=${target#sm}
        "$nvcc" "${flags[@]}" -ptx -arch=compute_$arch -o "$out/$name.sm$arch.ptx" "$cu" 2>&1 || { echo "FAILED: $name compute_$arch"; status=1; }
    done
    if grep -q KIMI_REQUIRES_SM90A "$cu"; then
        "$nvcc" "${flags[@]}" -cubin -gencode=arch=compute_90a,code=sm_90a -o "$out/$name.sm90a.cubin" "$cu" 2>&1 || { echo "FAILED: $name sm_90a"; status=1; }
    fi
    echo "== $name: ptxas resource report (sm_90)"
    "$nvcc" "${flags[@]}" -cubin -arch=sm_90 -Xptxas -v -o /dev/null "$cu" 2>&1 | grep -E "Compiling|registers|spill|error" | sed 's/^/   /'
    # The sm_90 report shows the wgmma kernels as the trap stubs they are there; their real code is the sm_90a cubin's
    # (C75xx: ptxas's performance warnings, e.g. C7508 setmaxnreg ignored, C7513 wgmma serialised).
    if grep -q KIMI_REQUIRES_SM90A "$cu"; then
        echo "== $name: ptxas resource report (sm_90a)"
        "$nvcc" "${flags[@]}" -cubin -gencode=arch=compute_90a,code=sm_90a -Xptxas -v -o /dev/null "$cu" 2>&1 | grep -E "Compiling|registers|spill|error|C75" | sed 's/^/   /'
    fi
    return $status
}

# The sources build in parallel (nvcc is single-threaded; the heavy ones take tens of seconds); logs print in order.
logs=$(mktemp -d)
for src in $sources; do
    name=$(basename "$src" .cu)
    (build_one "$src" > "$logs/$name.log"; echo $? > "$logs/$name.status") &
done
wait
for src in $sources; do
    name=$(basename "$src" .cu)
    cat "$logs/$name.log"
    [ "$(cat "$logs/$name.status")" = 0 ] || status=1
done
rm -rf "$logs"

[ -n "${KIMI_BUILD_ONLY:-}" ] && exit $status
# The manifest: one sha256 per source (the .cu files above and the headers beside them), in path order.
{
    echo "{"
    echo "  \"nvcc\": \"$("$nvcc" --version | tail -n 2 | head -n 1 | sed 's/"/\\"/g')\","
    echo "  \"sources\": {"
    files=$( (echo "$sources"; cd "$here" && ls *.cuh */*.cuh 2>/dev/null) | LC_ALL=C sort)
    last=$(echo "$files" | tail -n 1)
    for f in $files; do
        sep=","; [ "$f" = "$last" ] && sep=""
        echo "    \"$f\": \"$(sha256sum "$here/$f" | cut -d' ' -f1)\"$sep"
    done
    echo "  }"
    echo "}"
} > "$out/manifest.json"
exit $status
