# Clock probes for a staged copy of intra (runs 71, 74, 76): patches STAGE/kernels/kda/kda.cu so that lane 0 of every
# warp stores its clock() at 10 phase boundaries of chunk_intra (bf16 inputs, the first 2,048 blocks), and
# STAGE/kernels/kda/tests/kda_harness.cu with a mode `--phase-clocks`: --profile's launches (intra once at B=1 T=4,096
# H=32 K=V=128), then, per warp, the mean over blocks of each point's clock minus warp 0's at the block's start. (Runs
# 71, 74 and 76 took the third of three launches; this takes --profile's one.) Never on a
# checkout's own files (the probes are not what ships): stage a copy first, e.g.
#   mkdir -p .gpu-kda/clk && cp -r --parents kernels/kda/kda.cu kernels/kda/tests/{kda_harness.cu,cuda_emu.h} kernels/*.cuh .gpu-kda/clk/
#   python3 kernels/kda/tests/phase_clocks.py .gpu-kda/clk
# then on the GPU machine build that harness as ab.sh does and run it with --phase-clocks and the fixture directory.
# Points: 1 inputs loaded, norms and β stored; 2 after the running sum; 3 QG/KG written; 4 pair products summed;
# 5 after their barrier; 6 L and A stored; 7 after the barrier; 8 solve done (warps 0-3) / A out and v staged (4-7);
# 9 after the barrier; 10 W and U written. (Point 5 has read earlier than other warps' point 4, run 187: its clock read
# seems scheduled above the barrier; take point 6 as the first after it.)
# The patch anchors on source lines; a failed assertion names the one moved.
import sys

from probe_patch import add_harness_mode, patch

stage = sys.argv[1]

def line_with(path, start):   # the whole source line that begins with `start` (after indentation)
    s = open(path).read()
    i = s.index(start)
    return s[s.rindex('\n', 0, i) + 1:s.index('\n', i)]

kda = stage + '/kernels/kda/kda.cu'
pair_call = line_with(kda, 'pair_products<Tin, KC>(K, tid,')
wu_last = line_with(kda, 'else wu_columns<false, KC>(')
patch(kda, [
    ('namespace kda {\n', '''namespace kda {
constexpr int kPhaseBlocks = 2048, kPhases = 12;
__device__ unsigned kda_phase_clocks[kPhaseBlocks * 8 * kPhases];
#define PHASE(i) do { const int pb_ = blockIdx.x + gridDim.x * blockIdx.y; \\
    if ((threadIdx.x & 31) == 0 && pb_ < kPhaseBlocks && sizeof(Tin) == 2) \\
        kda_phase_clocks[(pb_ * 8 + (threadIdx.x >> 5)) * kPhases + (i)] = (unsigned)clock(); } while (0)
'''),
    ('tid = threadIdx.x;\n    int t0, len;\n    chunk_span(c, num_seqs, cu_seqlens, chunk_offsets, t0, len);',
     'tid = threadIdx.x;\n    PHASE(0);\n    int t0, len;\n    chunk_span(c, num_seqs, cu_seqlens, chunk_offsets, t0, len);'),
    ('    if (tid < kChunk) sb[tid] = beta_t;\n    __syncthreads();', '    if (tid < kChunk) sb[tid] = beta_t;\n    PHASE(1);\n    __syncthreads();'),
    ('        mild = mild && !whole;\n    }\n', '        mild = mild && !whole;\n    }\n    PHASE(2);\n'),
    (pair_call + '\n    __syncthreads();', '    PHASE(3);\n' + pair_call + '\n    PHASE(6);\n    __syncthreads();\n    PHASE(7);'),
    ('    __syncthreads();   // q is dead', '    PHASE(4);\n    __syncthreads();   // q is dead'),
    ('''            stage_v_rows(V, H, h, t0, len, tid - 128, kIntraThreads - 128, v, reinterpret_cast<uint16_t*>(sa));
        }
        __syncthreads();''', '''            stage_v_rows(V, H, h, t0, len, tid - 128, kIntraThreads - 128, v, reinterpret_cast<uint16_t*>(sa));
        }
        PHASE(8);
        __syncthreads();
        PHASE(9);'''),
    (wu_last + '\n        }', wu_last + '\n        }\n        PHASE(10);'),
])
# point 5: the line after the barrier "q̂ is dead"
patch(kda, [('    __syncthreads();   // q is dead: L and A take its place\n', '    __syncthreads();   // q is dead: L and A take its place\n    PHASE(5);\n')])

harness = stage + '/kernels/kda/tests/kda_harness.cu'
add_harness_mode(harness, '--phase-clocks', 'phase', 'print_phase_clocks', r'''
static void print_phase_clocks() {   // after profile_once's launch of intra (B=1 T=4,096)
    std::vector<unsigned> c(kda::kPhaseBlocks * 8 * kda::kPhases);
    CK(cudaMemcpyFromSymbol(c.data(), kda::kda_phase_clocks, c.size() * 4));
    std::printf("PHASES mean cycles after the block's start (warp 0's), %d blocks\n", kda::kPhaseBlocks);
    for (int w = 0; w < 8; ++w) {
        std::printf("PHASES warp %d:", w);
        for (int p = 1; p <= 10; ++p) {
            double sum = 0;
            for (int b = 0; b < kda::kPhaseBlocks; ++b) sum += double(c[(b * 8 + w) * kda::kPhases + p] - c[(b * 8 + 0) * kda::kPhases + 0]);
            std::printf(" %d:%7.0f", p, sum / kda::kPhaseBlocks);
        }
        std::printf("\n");
    }
}

''')
print("patched", kda, "and", harness)
