# Clock probes for a staged copy of the 32-column wgmma scan (chunk_prefill_wgmma, bf16; run 137): patches
# STAGE/kernels/kda/kda.cu so that lane 0 of every warp sums, over chunks 1 .. n − 1 of its block, clock() at 8 points
# of the chunk minus clock() at the release of the chunk's first barrier, and STAGE/kernels/kda/tests/kda_harness.cu
# with a mode `--scan-clocks`: --profile's launches (intra and the scan once at B = 1, T = 4,096, H = 32, K = V = 128),
# then, per warp, the mean over the 128 blocks of each point's mean per chunk. Never on a checkout's own files (the
# probes are not what ships): stage a copy first, e.g.
#   mkdir -p .gpu-kda/sclk && cp -r --parents kernels/kda/kda.cu kernels/kda/tests/{kda_harness.cu,cuda_emu.h} kernels/*.cuh .gpu-kda/sclk/
#   python3 kernels/kda/tests/scan_clocks.py .gpu-kda/sclk
# then on the GPU machine build that harness as ab.sh does and run it with --scan-clocks and the fixture directory.
# Points (cycles after the chunk's first barrier released the warp): 0 the chunk's copies of W, QG waited for (before
# that barrier, so negative); 1 the next chunk's first barrier released (the chunk's length); 2 the phase-1 product
# done (warpgroups 0, 1); 3 Vn stored and fenced (0); 4 KG, A waited for; 5 the second barrier released; 6 the
# phase-2 product done (1: A·Vn; 2, 3: KGᵀ·Vn); 7 the state stored (2, 3) or O written (1). ptxas may move a clock
# read across its neighbours; the points after barriers are the least exact.
import sys

from probe_patch import add_harness_mode, patch

stage = sys.argv[1]

kda = stage + '/kernels/kda/kda.cu'
patch(kda, [
    ('namespace kda {\n', '''namespace kda {
constexpr int kScanClockBlocks = 128, kScanPoints = 8;
__device__ unsigned kda_scan_clocks[kScanClockBlocks * 16 * kScanPoints];
'''),
    ('''    Ops ops(K, tid);
    auto chunk_index = [&](int ci) { return (size_t)(c0 + ci) * H + h; };''', '''    Ops ops(K, tid);
    auto chunk_index = [&](int ci) { return (size_t)(c0 + ci) * H + h; };
    const int clk_block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned clk_sum[kScanPoints] = {}, clk_ref = 0;
    int clk_ci = 0;
    auto point = [&](int i) {
        const unsigned now = (unsigned)clock();
        if (clk_ci > 0) clk_sum[i] += now - clk_ref;
        if (i == 1) clk_ref = now;
    };
    auto flush_clocks = [&] {
        if ((tid & 31) == 0 && clk_block < kScanClockBlocks)
            for (int i = 0; i < kScanPoints; ++i) kda_scan_clocks[(clk_block * 16 + (tid >> 5)) * kScanPoints + i] = clk_sum[i] / max(1, nchunks - 1);
    };'''),
    ('''    auto before_phase1 = [&](int ci) {
        ops.wait(2 * ci);    // W_ci, QG_ci
        __syncwarp();
        __syncthreads();     // ... for every thread; the state is stored; chunk ci − 1 no longer reads KG, A, γ, Vn
        if (tid == 0 && ci + 1 < nchunks) ops.copy_rows(in, chunk_index(ci + 1), ci + 1);
    };
    auto before_phase2 = [&](int ci) {
        ops.wait(2 * ci + 1);   // KG_ci, A_ci, γ_ci
        __syncwarp();
        __syncthreads();        // Vn complete; W_ci, QG_ci and the stored state no longer read
        if (tid == 0 && ci + 1 < nchunks) ops.copy_kg(in, chunk_index(ci + 1), ci + 1, K);
    };''', '''    auto before_phase1 = [&](int ci) {
        ops.wait(2 * ci);    // W_ci, QG_ci
        clk_ci = ci; point(0);
        __syncwarp();
        __syncthreads();     // ... for every thread; the state is stored; chunk ci − 1 no longer reads KG, A, γ, Vn
        point(1);
        if (tid == 0 && ci + 1 < nchunks) ops.copy_rows(in, chunk_index(ci + 1), ci + 1);
    };
    auto before_phase2 = [&](int ci) {
        ops.wait(2 * ci + 1);   // KG_ci, A_ci, γ_ci
        point(4);
        __syncwarp();
        __syncthreads();        // Vn complete; W_ci, QG_ci and the stored state no longer read
        point(5);
        if (tid == 0 && ci + 1 < nchunks) ops.copy_kg(in, chunk_index(ci + 1), ci + 1, K);
    };'''),
    ('''            Ops::template split_product<1>(snew, scor, kChunk / 16, [&](int plane, int kk) { return ops.kgt_desc(ci, plane, d0, kk); }, vn_desc);''',
     '''            Ops::template split_product<1>(snew, scor, kChunk / 16, [&](int plane, int kk) { return ops.kgt_desc(ci, plane, d0, kk); }, vn_desc);
            point(6);'''),
    ('''            store_state();   // nobody reads the stored state between the barrier above and the next one
        }
        if (holds)''', '''            store_state();   // nobody reads the stored state between the barrier above and the next one
            point(7);
        }
        flush_clocks();
        if (holds)'''),
    ('''            Ops::template split_product<0>(vacc, vcor, KP / 16, [&](int plane, int kk) { return ops.x_desc(ci, false, plane, kk); }, s_desc);''',
     '''            Ops::template split_product<0>(vacc, vcor, KP / 16, [&](int plane, int kk) { return ops.x_desc(ci, false, plane, kk); }, s_desc);
            point(2);'''),
    ('''            ops.store_vn(vn, tid);
            fence_proxy_async();''', '''            ops.store_vn(vn, tid);
            fence_proxy_async();
            point(3);'''),
    ('''            if (ci + 1 < nchunks) load_u(ci + 1);
            before_phase2(ci);
        }''', '''            if (ci + 1 < nchunks) load_u(ci + 1);
            before_phase2(ci);
        }
        flush_clocks();'''),
    ('''            Ops::template split_product<0>(oacc, ocor, KP / 16, [&](int plane, int kk) { return ops.x_desc(ci, true, plane, kk); }, s_desc);''',
     '''            Ops::template split_product<0>(oacc, ocor, KP / 16, [&](int plane, int kk) { return ops.x_desc(ci, true, plane, kk); }, s_desc);
            point(2);'''),
    ('''            Ops::template split_product<0>(oacc, ocor, kChunk / 16, [&](int plane, int kk) { return ops.a_desc(ci, plane, kk); }, vn_desc);''',
     '''            Ops::template split_product<0>(oacc, ocor, kChunk / 16, [&](int plane, int kk) { return ops.a_desc(ci, plane, kk); }, vn_desc);
            point(6);'''),
    ('''                        make_uint4(pair(0), pair(2), pair(4), pair(6));
            }
        }''', '''                        make_uint4(pair(0), pair(2), pair(4), pair(6));
            }
            point(7);
        }
        flush_clocks();'''),
])

harness = stage + '/kernels/kda/tests/kda_harness.cu'
add_harness_mode(harness, '--scan-clocks', 'scan_clocks', 'print_scan_clocks', r'''
static void print_scan_clocks() {   // after profile_once's launch of the 32-column scan (B=1 T=4,096)
    std::vector<unsigned> c(kda::kScanClockBlocks * 16 * kda::kScanPoints);
    CK(cudaMemcpyFromSymbol(c.data(), kda::kda_scan_clocks, c.size() * 4));
    std::printf("SCANCLK mean cycles a chunk after its first barrier's release, %d blocks\n", kda::kScanClockBlocks);
    for (int w = 0; w < 16; ++w) {
        std::printf("SCANCLK warp %2d (wg %d):", w, w / 4);
        for (int p = 0; p < kda::kScanPoints; ++p) {
            double sum = 0;
            for (int b = 0; b < kda::kScanClockBlocks; ++b) sum += double(int(c[(b * 16 + w) * kda::kScanPoints + p]));
            std::printf(" %d:%6.0f", p, sum / kda::kScanClockBlocks);
        }
        std::printf("\n");
    }
}

''')
print("patched", kda, "and", harness)
