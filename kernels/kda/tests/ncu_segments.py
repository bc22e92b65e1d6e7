# Splits an ncu SASS source page (ncu -i R --page source --csv --print-source sass, gzipped) at the block and named
# barriers (BAR) and prints, per segment: SASS lines, stall samples, warp instructions a block, the top stall reasons
# and the top opcodes a block. Usage: python3 ncu_segments.py intra-sass.csv.gz [BLOCKS [SEGMENT]]   (BLOCKS: the grid
# size, 2048 for the harness --profile intra launch). With SEGMENT, that segment's SASS lines are also grouped by how
# often each ran a block: code that only some warps run, or runs in a loop, shows up as its own group (intra's pair
# phase, segment 12: the off-diagonal tiles 24 times a block = 3 warps × 8 iterations, the QG/KG units 64, ...). A warp waiting at a barrier is sampled on the instruction after it, so a
# segment's "barrier" share is time spent waiting for the segment before.
import csv, gzip, sys, collections
rows = list(csv.reader(gzip.open(sys.argv[1], 'rt')))
hdr = rows[1]; data = rows[2:]
ix = {h: i for i, h in enumerate(hdr)}
blocks = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
stalls = [h for h in hdr if h.startswith('stall_') and 'Not Issued' not in h]
segs = []; cur = None
def new():
    return {'n': 0, 'samp': 0, 'inst': 0, 'st': collections.Counter(), 'ops': collections.Counter(), 'first': None,
            'by_count': collections.defaultdict(lambda: [0, 0, collections.Counter()])}
cur = new()
for r in data:
    if len(r) < len(hdr): continue
    src = r[ix['Source']].strip()
    op = src.split()[0] if src else ''
    if op.startswith('@'): op = src.split()[1]
    opn = op.split('.')[0]
    if cur['first'] is None: cur['first'] = r[ix['Address']]
    cur['n'] += 1
    s = int(r[ix['Warp Stall Sampling (All Samples)']] or 0); cur['samp'] += s
    n = int(r[ix['Instructions Executed']] or 0); cur['inst'] += n
    for h in stalls: cur['st'][h[6:]] += int(r[ix[h]] or 0)
    cur['ops'][opn] += n
    g = cur['by_count'][n]; g[0] += 1; g[1] += s; g[2][opn] += 1
    if opn == 'BAR':
        segs.append(cur); cur = new()
segs.append(cur)
ts = sum(s['samp'] for s in segs); ti = sum(s['inst'] for s in segs)
print(f"samples {ts}, warp instructions {ti} ({ti/blocks:.0f} a block of {blocks})")
for k, s in enumerate(segs):
    if s['n'] == 0: continue
    top = ', '.join(f"{a} {100*b/max(1,s['samp']):.0f} %" for a, b in s['st'].most_common(4))
    ops = ', '.join(f"{a} {b/blocks:.0f}" for a, b in s['ops'].most_common(6))
    print(f"seg {k}: {s['n']} SASS, samples {100*s['samp']/ts:.1f} %, instructions {s['inst']/blocks:.0f} a block ({100*s['inst']/ti:.1f} %); stalls {top}; ops a block {ops}")
if len(sys.argv) > 3:
    k = int(sys.argv[3]); s = segs[k]
    print(f"seg {k} by executions a block:")
    for n, (lines, samp, ops) in sorted(s['by_count'].items(), key=lambda x: -x[0] * x[1][0]):
        if n * lines < 100 * blocks: continue   # groups under 100 warp instructions a block
        top = ', '.join(f"{a} {b}" for a, b in ops.most_common(8))
        print(f"  {n / blocks:7.1f} times: {lines:5d} SASS, {n * lines / blocks:7.0f} warp instructions a block "
              f"({100 * n * lines / max(1, s['inst']):4.1f} %), samples {100 * samp / max(1, s['samp']):4.1f} %; {top}")
