#!/usr/bin/env bash
# Builds every kernels/<family>.cu into the images KimiLinear.Cuda embeds, and writes manifest.json (sha256 of each
# source) so the CPU-side tests can tell when a source changed without its PTX being rebuilt.
#   <family>.sm90.ptx     compute_90 PTX: Hopper and newer (the driver JIT-compiles it for the card)
#   <family>.sm80.ptx     compute_80 PTX: Ampere and Ada
#   <family>.sm90a.cubin  only for sources marked KIMI_REQUIRES_SM90A (Hopper-only instructions such as wgmma)
# Needs nvcc (the GPU machine has CUDA 13.0). The PTX then declares ISA 9.0 and needs a CUDA 13 driver (>= 580);
# building with NVCC=/path/to/a/12.x/nvcc gives PTX that CUDA 12 drivers load (the kernels use nothing newer).
# Usage: kernels/build.sh [output-folder]   (default: KimiLinear.Cuda/Kernels/ptx)
# Also prints ptxas's resource report (registers, shared memory, spills) for sm_90; exit status 1 if any build failed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../KimiLinear.Cuda/Kernels/ptx}
nvcc=${NVCC:-nvcc}
flags=(-std=c++17 -O3)
mkdir -p "$out"
status=0

for cu in "$here"/*.cu; do
    name=$(basename "$cu" .cu)
    for arch in 90 80; do
        "$nvcc" "${flags[@]}" -ptx -arch=compute_$arch -o "$out/$name.sm$arch.ptx" "$cu" || { echo "FAILED: $name compute_$arch"; status=1; }
    done
    if grep -q KIMI_REQUIRES_SM90A "$cu"; then
        "$nvcc" "${flags[@]}" -cubin -gencode=arch=compute_90a,code=sm_90a -o "$out/$name.sm90a.cubin" "$cu" || { echo "FAILED: $name sm_90a"; status=1; }
    fi
    echo "== $name: ptxas resource report (sm_90)"
    "$nvcc" "${flags[@]}" -cubin -arch=sm_90 -Xptxas -v -o /dev/null "$cu" 2>&1 | grep -E "Compiling|registers|spill|error" | sed 's/^/   /'
done

# The manifest: one sha256 per source (.cu and the headers they include), in file-name order.
{
    echo "{"
    echo "  \"nvcc\": \"$("$nvcc" --version | tail -n 2 | head -n 1 | sed 's/"/\\"/g')\","
    echo "  \"sources\": {"
    files=$(cd "$here" && ls *.cu *.cuh | LC_ALL=C sort)
    last=$(echo "$files" | tail -n 1)
    for f in $files; do
        sep=","; [ "$f" = "$last" ] && sep=""
        echo "    \"$f\": \"$(sha256sum "$here/$f" | cut -d' ' -f1)\"$sep"
    done
    echo "  }"
    echo "}"
} > "$out/manifest.json"
exit $status
