#!/usr/bin/env python3
"""Shared-memory bank model of chunk_intra's reads and writes of its k, q, G rows (kda.cu, bf16 inputs, K = 128).

Each pattern lists, per warp instruction, the 32 lanes' word addresses (4-byte words; a 16-byte access covers 4). An
instruction takes as many wavefronts as the most words any one bank is asked for (lanes reading the same word share
it); the ideal is its distinct bytes over 128. Printed per pattern: the modelled instructions (one tensor's; the pair
operands for one warp's pair), their wavefronts and the ideal. The index math copies kda.cu's: change both together.
    python3 kernels/kda/tests/smem_banks.py
"""
K, CHUNK = 128, 64
LD = K + 1   # chunk_intra's row stride in words (odd: the pair loops read 8 rows at once)


def at(r, c):
    return r * LD + c


def wavefronts(lanes):   # lanes: (word, width) per lane
    words = {w + x for w, width in lanes for x in range(width)}
    per_bank = {}
    for w in words:
        per_bank.setdefault(w % 32, set()).add(w)
    return max(len(v) for v in per_bank.values()), max(1, (4 * len(words) + 127) // 128)


def load_stores():   # the load phase: unit u = w + 8i, lane row 4(u & 15) + (l >> 3 & 3), channels 4(8(u >> 4) + (l & 7)) + x
    for w in range(8):
        for i in range(8):
            u = w + 8 * i
            for x in range(4):
                yield [(at(4 * (u & 15) + (l >> 3 & 3), 4 * (8 * (u >> 4) + (l & 7)) + x), 1) for l in range(32)]


def running_sum():   # thread tid < K: column tid of each row
    for w in range(K // 32):
        for r in range(CHUNK):
            yield [(at(r, 32 * w + l), 1) for l in range(32)]


def tiles():   # off-diagonal 4×4 tiles (warps 0-2): tile o = 8w + (l & 7), part l >> 3 takes channels part + 4j
    for w in range(3):
        for i in range(4):
            for j in range(K // 4):
                for column in (False, True):
                    lanes = []
                    for l in range(32):
                        o = 8 * w + (l & 7)
                        lt = o % 6
                        a = 1 if lt < 1 else 2 if lt < 3 else 3
                        ta, tb = 4 * (o // 6) + a, 4 * (o // 6) + lt - a * (a - 1) // 2
                        lanes.append((at(4 * (tb if column else ta) + i, (l >> 3) + 4 * j), 1))
                    yield lanes


def pair_operands():   # warps 5-7's bf16 fragments: lane (g, t), rows 16i + g (+ 8), channels c, c + 1 and c + 32, c + 33
    for i in range(4):
        for ks in range(4 * K // 64):
            for half in range(2):
                for second in range(2):
                    for x in range(2):
                        lanes = []
                        for l in range(32):
                            g, t = l >> 2, l & 3
                            c = 64 * (ks >> 2) + 2 * (ks & 3) + 8 * t + 32 * second + x
                            lanes.append((at(16 * i + g + 8 * half, c), 1))
                        yield lanes


def w_fragments(channel):   # wu_columns' K̃: lane (g, t), rows 16j + 2t + 8e (+ 1), channel(unit, nt, g)
    for u in range(K // 16):
        for j in range(4):
            for nt in range(2):
                for e in range(2):
                    for dr in range(2):
                        yield [(at(16 * j + 2 * (l & 3) + 8 * e + dr, channel(u, nt, l >> 2)), 1) for l in range(32)]


def consecutive(u, nt, g):   # columns 16u + 8nt + g
    return 16 * u + 8 * nt + g


def spread(u, nt, g):   # 32⌊u/2⌋ + 4(u mod 2) + 8⌊g/2⌋ + g mod 2 + 2nt
    return 32 * (u >> 1) + 4 * (u & 1) + 8 * (g >> 1) + (g & 1) + 2 * nt


if __name__ == "__main__":
    assert sorted(spread(u, nt, g) for u in range(K // 16) for nt in range(2) for g in range(8)) == list(range(K))
    patterns = [("load phase stores", load_stores()), ("running sum", running_sum()), ("off-diagonal tiles", tiles()),
                ("pair products' operands", pair_operands()), ("W's K̃, 16 consecutive columns a unit", w_fragments(consecutive)),
                ("W's K̃, columns spread over 32", w_fragments(spread))]
    print(f"{'pattern':44s} {'instructions':>12s} {'wavefronts':>10s} {'ideal':>6s}")
    for name, instructions in patterns:
        n = got = ideal = 0
        for lanes in instructions:
            a, b = wavefronts(lanes)
            n, got, ideal = n + 1, got + a, ideal + b
        print(f"{name:44s} {n:12d} {got:10d} {ideal:6d}")
