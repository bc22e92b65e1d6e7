#!/usr/bin/env bash
# One GPU call for a KDA kernel change: the commit call of this checkout (its PTX built from the sources, the CUDA test
# classes run against it) and an A/B of staged candidates against it, with the harnesses built on the CPU while the
# PTX builds and the tests run, so the benchmarks start on an idle card. GPU half; the local half:
#   rm -rf KimiLinear.Cuda/Kernels/ptx && GPU_APPS=tests tools/gpu/run-gpu.sh .gpu    (built without the committed PTX,
#   git checkout -- KimiLinear.Cuda/Kernels/ptx && mv KimiLinear.Cuda/Kernels/ptx /tmp/ptx-keep   which stays behind)
#   kernels/kda/tests/stage-ab.sh NAME=REV ...
# then device run(command: "bash kernels/kda/tests/commit-ab.sh", carry: [".gpu", ".gpu-kda"]); ptx.tgz comes back in
# $OUT (unpack it over the restored KimiLinear.Cuda/Kernels/ptx). MODE, ROUNDS, GREP as ab.sh's; TEST_CLASSES (default
# "KdaKernelTests CudaModelTests").
set -uo pipefail
AB_STEP=build bash kernels/kda/tests/ab.sh "${STAGE:-.gpu-kda}" > /tmp/ab-build.log 2>&1 &
harnesses=$!
TEST_CLASSES=${TEST_CLASSES:-KdaKernelTests CudaModelTests} ROUNDS=0 timeout 330 bash .gpu/model-ab.sh 2>&1 | tail -6
wait $harnesses
cat /tmp/ab-build.log
AB_STEP=run bash kernels/kda/tests/ab.sh "${STAGE:-.gpu-kda}"
