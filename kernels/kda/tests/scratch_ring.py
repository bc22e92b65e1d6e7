# What the scratch between intra and the scan costs in DRAM traffic (run 157): patches a staged copy of kda.cu so that
# intra writes, and both bf16 scans read, each chunk's scratch at chunk index (c·H + h) mod RING instead of c·H + h.
# With RING · 144.5 KiB well inside L2 (64: 9 MB of the H200's 60 MiB) the scratch stays there, and the harness's
# --bench-prefill times the two kernels without its DRAM round trip. The results are wrong (the harness's prefill
# checks fail): a timing-only variant, never a checkout's own files. Stage a copy first, e.g.
#   mkdir -p .gpu-kda/ring64 && cp -r --parents kernels/kda/kda.cu kernels/kda/tests/{kda_harness.cu,cuda_emu.h} kernels/*.cuh .gpu-kda/ring64/
#   python3 kernels/kda/tests/scratch_ring.py .gpu-kda/ring64 64
# then kernels/kda/tests/ab.sh .gpu-kda on the GPU machine (MODE=--bench-prefill) runs it beside this checkout.
import sys

from probe_patch import patch

stage, ring = sys.argv[1], int(sys.argv[2])
kda = stage + '/kernels/kda/kda.cu'
s = open(kda).read()
scan_index = '    auto chunk_index = [&](int ci) { return (size_t)(c0 + ci) * H + h; };'
assert s.count(scan_index) == 3, 'the scans\' chunk_index moved: ' + str(s.count(scan_index))   # 32-column, mma.sync, wide
s = s.replace(scan_index, '    auto chunk_index = [&](int ci) { return ((size_t)(c0 + ci) * H + h) %% %d; };' % ring)
open(kda, 'w').write(s)
patch(kda, [('    const size_t cc = (size_t)c * H + h;', '    const size_t cc = ((size_t)c * H + h) %% %d;' % ring)])
print('patched %s: scratch at chunk index mod %d' % (kda, ring))
