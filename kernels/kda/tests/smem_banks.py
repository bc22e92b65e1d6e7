#!/usr/bin/env python3
"""Shared-memory bank model of chunk_intra's reads and writes of its k, q, G rows (kda.cu, bf16 inputs, K = 128).

Each pattern lists, per warp instruction, the 32 lanes' word addresses and widths (4-byte words; an 8- or 16-byte access
covers 2 or 4). An instruction takes as many wavefronts as the most words any one bank is asked for (lanes reading the
same word share it); the ideal is its distinct bytes over 128. (For 16-byte accesses the hardware serves a quarter-warp
at a time, so the tiles' loads take 4 wavefronts whenever each quarter-warp's 8 are conflict-free, as here.) Printed per
pattern: the modelled instructions (one tensor's; the pair operands for one warp's pair), their wavefronts and the
ideal. The index math copies kda.cu's (transposed_at, the loops' lane mappings): change both together.
    python3 kernels/kda/tests/smem_banks.py
"""
K, CHUNK = 128, 64
LDT = CHUNK + 4   # kLdT: a channel's row of 64 in shared memory, ≡ 4 mod 32 words


def at(r, c):   # transposed_at: row r of channel c, rows XORed by 4·(⌊c/8⌋ mod 4)
    return c * LDT + (r ^ (4 * ((c >> 3) & 3)))


def wavefronts(lanes):   # lanes: (word, width) per lane
    words = {w + x for w, width in lanes for x in range(width)}
    per_bank = {}
    for w in words:
        per_bank.setdefault(w % 32, set()).add(w)
    return max(len(v) for v in per_bank.values()), max(1, (4 * len(words) + 127) // 128)


def load_stores():   # unit u = w + 8i: lane (j, p) = (l & 7, l >> 3 & 3) stores rows 8(u & 7) + 2p, + 1 of channel 32(u >> 3) + 4j + x
    for w in range(8):
        for i in range(4):
            u = w + 8 * i
            for x in range(4):
                yield [(at(8 * (u & 7) + 2 * (l >> 3 & 3), 32 * (u >> 3) + 4 * (l & 7) + x), 2) for l in range(32)]


def running_sum():   # thread tid < K: its channel's rows, 4 at a time
    for w in range(K // 32):
        for r in range(0, CHUNK, 4):
            yield [(at(r, 32 * w + l), 4) for l in range(32)]


def qg_units():   # unit u: lane (j, p) reads row 4(u & 15) + p of channels 32(u >> 4) + 4j + x, and row 63 of them
    for u in range(4 * K // 8):
        for x in range(4):
            yield [(at(4 * (u & 15) + (l >> 3 & 3), 32 * (u >> 4) + 4 * (l & 7) + x), 1) for l in range(32)]
            yield [(at(CHUNK - 1, 32 * (u >> 4) + 4 * (l & 7) + x), 1) for l in range(32)]


def off_diagonal_tiles():   # warps 0-2: tile o = 8w + (l & 7), part l >> 3 takes channels part + 4j; 4 rows a load
    for w in range(3):
        for j in range(K // 4):
            for column in (False, True):
                lanes = []
                for l in range(32):
                    o = 8 * w + (l & 7)
                    lt = o % 6
                    a = 1 if lt < 1 else 2 if lt < 3 else 3
                    ta, tb = 4 * (o // 6) + a, 4 * (o // 6) + lt - a * (a - 1) // 2
                    lanes.append((at(4 * (tb if column else ta), (l >> 3) + 4 * j), 4))
                yield lanes


def diagonal_tiles():   # warps 3-4: tile 8(w - 3) + (l & 7)
    for w in (3, 4):
        for j in range(K // 4):
            yield [(at(4 * (8 * (w - 3) + (l & 7)), (l >> 3) + 4 * j), 4) for l in range(32)]


def pair_operands():   # warps 5-7's bf16 fragments: lane (g, t), rows 16i + 2g, + 1 of channels 16ks + 2t + {0, 1, 8, 9}
    for i in range(4):
        for ks in range(K // 16):
            for off in (0, 1, 8, 9):
                yield [(at(16 * i + 2 * (l >> 2), 16 * ks + 2 * (l & 3) + off), 2) for l in range(32)]


def w_fragments():   # wu_columns' K̃: lane (g, t), rows 16j + 2t + 8e, + 1 of channel 16u + w_column(nt, g) = 16u + 2g + nt
    for u in range(K // 16):
        for j in range(4):
            for nt in range(2):
                for e in range(2):
                    yield [(at(16 * j + 2 * (l & 3) + 8 * e, 16 * u + 2 * (l >> 2) + nt), 2) for l in range(32)]


if __name__ == "__main__":
    patterns = [("load phase stores", load_stores()), ("running sum", running_sum()), ("QG, KG units", qg_units()),
                ("off-diagonal tiles", off_diagonal_tiles()), ("diagonal tiles", diagonal_tiles()),
                ("pair products' operands", pair_operands()), ("W's K̃", w_fragments())]
    print(f"{'pattern':44s} {'instructions':>12s} {'wavefronts':>10s} {'ideal':>6s}")
    for name, instructions in patterns:
        n = got = ideal = 0
        for lanes in instructions:
            a, b = wavefronts(lanes)
            n, got, ideal = n + 1, got + a, ideal + b
        print(f"{name:44s} {n:12d} {got:10d} {ideal:6d}")
