#!/usr/bin/env bash
# The GPU workflow, GPU-machine half (docs/gpu.md). Run from the repository root there as `bash STAGE/remote.sh`:
#   1. unpacks the .NET runtime,  2. builds the kernels with nvcc (kernels/build.sh) into /tmp/ptx,
#   3. runs the CUDA tests against that fresh PTX (KIMILINEAR_KERNEL_DIR),  4. times the kernels (Benchmarks `gpu`),
#   5. leaves in $OUT: build.log, tests.log, bench.log, bench.md, ptx.tgz (commit its contents to KimiLinear.Cuda/Kernels/ptx).
# Set SKIP_BENCH=1 (or stage without the benchmarks, GPU_APPS=tests) to stop after the tests, BENCH_RUNS=n to repeat the benchmarks,
# BENCH_ONLY=moe or mla times only the copy and those kernels. Exit status: nonzero if the build or a test failed.
set -uo pipefail
stage=$(cd "$(dirname "$0")" && pwd)
# The built tests and benchmarks travel xz-packed (the whole call may carry 64 MiB, the checkout included). They
# unpack inside the stage so that tests looking for kernels/ above their folder find the stage's copy.
apps=$stage/apps
mkdir -p "$apps" && tar xJf "$stage/apps.txz" -C "$apps"
out=${OUT:-/tmp/gpu-out}
# /tmp/ptx is emptied first: on a warm machine it still holds the images of the previous caller's build.
rm -rf /tmp/ptx
mkdir -p "$out" /tmp/dn /tmp/ptx
tar xf "$stage/dotnet-runtime.txz" -C /tmp/dn
export DOTNET_ROOT=/tmp/dn DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"

echo "== building kernels"
sources=$stage/kernels; [ -d "$sources" ] || sources=$stage/../kernels   # a stage's own copy, else the checkout's
bash "$sources/build.sh" /tmp/ptx > "$out/build.log" 2>&1
build=$?
grep -E "FAILED|error|registers|spill|C75" "$out/build.log" | head -60
tar czf "$out/ptx.tgz" -C /tmp/ptx .
export KIMILINEAR_KERNEL_DIR=/tmp/ptx

# cuBLASLt is optional: point the library at it where the toolkit or PyTorch installed it.
lt=$(ls /usr/local/cuda/lib64/libcublasLt.so.* 2>/dev/null | head -n 1)
[ -n "$lt" ] || lt=$(find / -xdev -name 'libcublasLt.so.1[0-9]*' 2>/dev/null | head -n 1)
[ -n "$lt" ] && export KIMILINEAR_CUBLASLT=$lt && echo "cuBLASLt: $lt"

echo "== tests"
# The test fixtures are tracked files, so they travel with the checkout: the staged tests use them in place.
[ -e "$apps/tests/Fixtures" ] || ln -s "$(cd "$stage/.." && pwd)/KimiLinear.Tests/Fixtures" "$apps/tests/Fixtures"
# One process per test class, each under a time limit, so a hung kernel cannot eat the whole call.
tests=0
: > "$out/tests.log"
# TEST_CLASSES="A B" runs only those classes of KimiLinear.Tests.Cuda (default: all of them below).
for class in ${TEST_CLASSES:-CudaRuntimeTests ElementwiseKernelTests ActivationKernelTests MatmulKernelTests SamplingKernelTests KdaKernelTests KernelFreshnessTests}; do
    timeout "${TEST_TIMEOUT:-150}" /tmp/dn/dotnet "$apps/tests/KimiLinear.Tests.dll" -class "KimiLinear.Tests.Cuda.$class" -noColor >> "$out/tests.log" 2>&1
    rc=$?
    [ $rc -eq 124 ] && echo "TIMEOUT: $class" | tee -a "$out/tests.log"
    [ $rc -ne 0 ] && tests=$rc
done
grep -E "\[FAIL\]|Total:|TIMEOUT" "$out/tests.log"

bench=0
if [ -z "${SKIP_BENCH:-}" ] && [ -d "$apps/bench" ]; then
    echo "== benchmarks"
    # BENCH_RUNS=n repeats the whole benchmark to show the run-to-run spread; bench.md keeps the last run.
    for run in $(seq "${BENCH_RUNS:-1}"); do
        timeout "${BENCH_TIMEOUT:-180}" /tmp/dn/dotnet "$apps/bench/KimiLinear.Benchmarks.dll" gpu "$out/bench.md" ${BENCH_ONLY:-} >> "$out/bench.log" 2>&1
        bench=$?
        cat "$out/bench.md"
    done
fi
echo "build=$build tests=$tests bench=$bench"
[ $build -eq 0 ] && [ $tests -eq 0 ] && [ $bench -eq 0 ]
