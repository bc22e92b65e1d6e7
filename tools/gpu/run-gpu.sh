#!/usr/bin/env bash
# The GPU workflow, local half (docs/gpu.md): stages into STAGE everything one call of the GPU machine needs —
# the packed .NET runtime, the built tests and benchmarks, the kernel sources and remote.sh — and prints the call.
# The device tool is not a shell command, so the call itself is made by whoever runs this script.
#   tools/gpu/run-gpu.sh [STAGE]     STAGE: a git-ignored folder inside the checkout that travels (default .gpu)
# On the GPU machine, remote.sh then builds the PTX with nvcc, runs the GPU tests against it, times the kernels and
# prints a short table; logs, the table and the built PTX come back through $OUT.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
stage=$(mkdir -p "${1:-$repo/.gpu}" && cd "${1:-$repo/.gpu}" && pwd)
pack=${PACK_DOTNET:-$repo/../shared/device/pack-dotnet-runtime.sh}

if [ ! -f "$stage/dotnet-runtime.txz" ]; then
    [ -x "$pack" ] || pack=/work/shared/device/pack-dotnet-runtime.sh
    "$pack" "$stage"
    # Without what the GPU runs never load (the debugger, dump and LTTng tracing libraries, the standalone GCs, VisualBasic, data
    # contracts, ADO.NET, HTTP, mail, TLS, dataflow, PLINQ, async LINQ; tests and benchmarks ran without them on 2026-11-27) and xz-packed, the
    # runtime is ~21 MB of the 64 MiB a call may carry (the checkout is ~41 MB).
    slim=$(mktemp -d)
    tar xzf "$stage/dotnet-runtime.tgz" -C "$slim"
    rm -f "$slim"/shared/Microsoft.NETCore.App/*/{createdump,libmscordbi.so,libmscordaccore.so,libcoreclrtraceptprovider.so,libclrgc.so,libclrgcexp.so,Microsoft.VisualBasic.Core.dll}
    rm -f "$slim"/shared/Microsoft.NETCore.App/*/{System.Private.DataContractSerialization.dll,System.Data.Common.dll,System.Net.Http.dll,System.Linq.AsyncEnumerable.dll}
    rm -f "$slim"/shared/Microsoft.NETCore.App/*/{System.Net.Mail.dll,System.Net.Security.dll,libSystem.Net.Security.Native.so,System.Threading.Tasks.Dataflow.dll,System.Linq.Parallel.dll}
    tar cf - -C "$slim" . | xz -9 -T2 > "$stage/dotnet-runtime.txz" && rm -rf "$slim" "$stage/dotnet-runtime.tgz"
fi
dotnet build "$repo/KimiLinear.Tests" -c Release -v q -nologo
dotnet build "$repo/KimiLinear.Benchmarks" -c Release -v q -nologo
rm -rf "$stage/tests" "$stage/bench" "$stage/kernels" "$stage/apps.txz"
# Test fixtures stay behind: only the CUDA tests run there.
cp -r "$repo/KimiLinear.Tests/bin/Release/net10.0" "$stage/tests" && rm -rf "$stage/tests/Fixtures"
cp -r "$repo/KimiLinear.Benchmarks/bin/Release/net10.0" "$stage/bench"
# The `gpu` mode never runs BenchmarkDotNet's disassembler, tracing or code generation: leave their 25 MB behind.
(cd "$stage/bench" && rm -rf runtimes x86 amd64 arm64 Microsoft.CodeAnalysis*.dll Microsoft.Diagnostics.*.dll Iced.dll)
# Nor the model fixtures the CPU benchmarks read (7 MB) or symbols: without them tests and benchmarks fit in one call.
(cd "$stage/bench" && rm -rf Fixtures ./*.pdb ./*.xml)
# Satellite resources, symbols and XML docs are not needed there; xz halves the rest.
(cd "$stage/tests" && rm -rf cs de es fr it ja ko pl pt-BR ru tr zh-Hans zh-Hant ./*.pdb ./*.xml)
# GPU_APPS=tests leaves the benchmarks behind: with the checkout at ~33 MB, tests + benchmarks (~3.4 MB packed) +
# runtime (~25 MB) come close to the 64 MiB a call may carry; drop the benchmarks when the checkout has grown.
tar cJf "$stage/apps.txz" -C "$stage" ${GPU_APPS:-tests bench} && rm -rf "$stage/tests" "$stage/bench"
# The kernel sources travel with the checkout when the stage lies inside this repository (remote.sh and model-ab.sh
# then build ../kernels): a copy would only spend the 64 MiB. A stage elsewhere (another worktree's) takes a copy.
[ "$(cd "$stage/.." && pwd)" = "$repo" ] || cp -r "$repo/kernels" "$stage/kernels"
cp "$repo/tools/gpu/remote.sh" "$repo/tools/gpu/model-ab.sh" "$stage/"
du -sh "$stage"
echo "Next: device run with command 'bash <STAGE>/remote.sh' and carry ['<STAGE>'] (STAGE relative to the repo root that travels)."
