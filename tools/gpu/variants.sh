#!/usr/bin/env bash
# Several candidate changes timed in one GPU call (docs/gpu.md, "Many candidates in one call"), GPU-machine half: run
# from the repository root as `bash STAGE/variants.sh` after GPU_APPS=bench tools/gpu/run-gpu.sh and
# tools/gpu/stage-variants.sh. The baseline "head" is this checkout's benchmark with its committed kernels; each
# variant is its commit's KimiLinear DLLs over a copy of that benchmark (head's own where its C# is head's), with the
# kernel families it changed rebuilt from its sources (over a copy of head's committed PTX; all variants build in
# parallel). Then the model benchmark's greedy decode is timed for head and every variant in turn, ROUNDS times, so
# each round compares them on one card at about the same temperature. Variants are for choosing: a winner still goes through model-ab.sh with its tests.
# Environment: MODEL (proxy | real, default real), ROUNDS (2), CONTEXTS ("1024"), BATCHES (batched decode sizes of
# the first round, default none), BUDGET (seconds for the timing rounds, 400).
# $OUT: variants.tgz (every report, log and build log); the table is printed.
set -uo pipefail
stage=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$stage/.." && pwd)
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out" "$stage/apps" /tmp/dn && tar xJf "$stage/apps.txz" -C "$stage/apps" && tar xf "$stage/dotnet-runtime.txz" -C /tmp/dn
export DOTNET_ROOT=/tmp/dn DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
lt=$(ls /usr/local/cuda/lib64/libcublasLt.so.* 2>/dev/null | head -n 1); [ -n "$lt" ] && export KIMILINEAR_CUBLASLT=$lt
nvidia-smi --query-gpu=name,temperature.gpu,clocks_throttle_reasons.active --format=csv,noheader

work=/tmp/variants; rm -rf "$work" && mkdir -p "$work/logs"
names=(head)
for archive in "$stage"/variants/*.txz; do
    [ -e "$archive" ] || continue
    name=$(basename "$archive" .txz); dir=$work/$name
    mkdir -p "$dir/pack" && tar xJf "$archive" -C "$dir/pack"
    if compgen -G "$dir/pack/dlls/*.dll" > /dev/null; then cp -r "$stage/apps/bench" "$dir/bench" && cp "$dir"/pack/dlls/*.dll "$dir/bench/"
    else ln -s "$stage/apps/bench" "$dir/bench"; fi   # a kernel-only candidate: head's benchmark
    families=$(cat "$dir/pack/families")
    if [ -n "$families" ]; then
        cp -r "$root/kernels" "$dir/kernels" && cp -r "$dir/pack/kernels/." "$dir/kernels/"
        cp -r "$root/KimiLinear.Cuda/Kernels/ptx" "$dir/ptx"
        [ "$families" = all ] && only="" || only=$families
        (KIMI_BUILD_ONLY="$only" bash "$dir/kernels/build.sh" "$dir/ptx" > "$work/logs/build-$name.log" 2>&1; echo $? > "$dir/build.rc") &
    fi
    names+=("$name")
done
wait
for name in "${names[@]:1}"; do
    dir=$work/$name
    echo "$name ($(cat "$dir/pack/commit")): rebuilt [$(cat "$dir/pack/families")]$([ -f "$dir/build.rc" ] && echo " rc=$(cat "$dir/build.rc")")" \
         "$(grep -E 'spill stores' "$work/logs/build-$name.log" 2>/dev/null | grep -vE ' 0 bytes spill stores' | sort -u | tr -s ' ' | head -3 | tr '\n' ';')"
done

start=$(date +%s)
for round in $(seq "${ROUNDS:-2}"); do
    for name in "${names[@]}"; do
        [ $(( $(date +%s) - start )) -gt "${BUDGET:-400}" ] && break 2
        if [ "$name" = head ]; then bench=$stage/apps/bench; kernels=; else bench=$work/$name/bench; kernels=; [ -d "$work/$name/ptx" ] && kernels=$work/$name/ptx; fi
        batches=""; [ "$round" = 1 ] && batches=${BATCHES-}
        KIMILINEAR_KERNEL_DIR=$kernels KIMI_BENCH_PREFILLS= KIMI_BENCH_BATCHES=$batches timeout 200 \
            /tmp/dn/dotnet "$bench/KimiLinear.Benchmarks.dll" model "${MODEL:-real}" "$work/logs/$name-$round.md" ${CONTEXTS:-1024} \
            > "$work/logs/$name-$round.log" 2>&1
        rc=$?
        printf '%-16s round %s rc=%s %s\n' "$name" "$round" "$rc" \
            "$(grep -E '^\| (decode, greedy generation|batched)' "$work/logs/$name-$round.md" 2>/dev/null | cut -d'|' -f3-5 | tr -s ' ' | tr '\n' ';')"
    done
done
nvidia-smi --query-gpu=name,temperature.gpu,clocks_throttle_reasons.active --format=csv,noheader
tar czf "$out/variants.tgz" -C "$work" logs
