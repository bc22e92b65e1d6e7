namespace KimiLinear.BpeTrainer;

/// <summary>
/// Learns byte-level BPE merges from pre-tokenized pieces. Ranks 0..255 are the single bytes in byte order; every
/// later rank is the concatenation of the most frequent adjacent pair at that point (ties broken by the lower ranks),
/// so rank order is merge order, which is what tiktoken's encoder assumes.
/// </summary>
public sealed class BpeTrainer
{
    /// <summary>A distinct piece of the corpus as a sequence of token ranks, with how often the piece occurs.</summary>
    private sealed class Word(int[] symbols, long count)
    {
        public List<int> Symbols { get; } = [.. symbols];
        public long Count { get; } = count;
    }

    private readonly List<Word> _words = [];
    // rank → the token's bytes
    private readonly List<byte[]> _tokens = [];
    // the token's bytes as a Latin-1 string → rank; a merge that rebuilds existing bytes reuses that rank
    private readonly Dictionary<string, int> _rankOfBytes = new(StringComparer.Ordinal);
    // (left, right) packed into a long → summed count over all words
    private readonly Dictionary<long, long> _pairCounts = [];
    // (left, right) → indices of the words that may contain the pair (a superset: stale entries are skipped)
    private readonly Dictionary<long, HashSet<int>> _pairWords = [];

    /// <summary>Starts from the 256 single bytes and the pieces with their counts.</summary>
    public BpeTrainer(IReadOnlyDictionary<string, long> pieceCounts)
    {
        for (int b = 0; b < 256; b++)
            AddToken([(byte)b]);
        foreach (var (piece, count) in pieceCounts.OrderBy(p => p.Key, StringComparer.Ordinal))
        {
            var bytes = System.Text.Encoding.UTF8.GetBytes(piece);
            if (bytes.Length < 2)
                continue; // a single byte never takes part in a merge
            _words.Add(new Word([.. bytes.Select(b => (int)b)], count));
        }
        for (int w = 0; w < _words.Count; w++)
            CountPairs(w, +1);
    }

    /// <summary>Ranks learned so far: index = rank, value = the token's bytes.</summary>
    public IReadOnlyList<byte[]> Tokens => _tokens;

    /// <summary>Merges until there are <paramref name="rankCount"/> ranks in all.</summary>
    /// <exception cref="InvalidOperationException">The pieces run out of pairs before reaching the count.</exception>
    public void Train(int rankCount, Action<int>? progress = null)
    {
        if (rankCount < 256)
            throw new ArgumentOutOfRangeException(nameof(rankCount), rankCount, "A byte-level BPE has at least the 256 single-byte ranks.");
        while (_tokens.Count < rankCount)
        {
            long best = BestPair()
                ?? throw new InvalidOperationException($"The corpus has no pair left to merge after {_tokens.Count} ranks; {rankCount} were asked for.");
            int left = (int)(best >> 32), right = (int)(best & 0xFFFFFFFF);
            byte[] merged = [.. _tokens[left], .. _tokens[right]];
            string key = Latin1(merged);
            if (!_rankOfBytes.TryGetValue(key, out int target))
            {
                target = AddToken(merged);
                progress?.Invoke(_tokens.Count);
            }
            Merge(best, left, right, target);
        }
    }

    private int AddToken(byte[] bytes)
    {
        _tokens.Add(bytes);
        _rankOfBytes.Add(Latin1(bytes), _tokens.Count - 1);
        return _tokens.Count - 1;
    }

    private static string Latin1(byte[] bytes) => System.Text.Encoding.Latin1.GetString(bytes);

    private static long Pack(int left, int right) => ((long)left << 32) | (uint)right;

    // The most frequent pair; ties go to the pair of lower ranks so that training is deterministic.
    private long? BestPair()
    {
        long? best = null;
        long bestCount = 0;
        foreach (var (pair, count) in _pairCounts)
        {
            if (count > bestCount || (count == bestCount && count > 0 && pair < best))
            {
                best = pair;
                bestCount = count;
            }
        }
        return bestCount > 0 ? best : null;
    }

    private void CountPairs(int wordIndex, int sign)
    {
        var word = _words[wordIndex];
        for (int i = 0; i + 1 < word.Symbols.Count; i++)
        {
            long pair = Pack(word.Symbols[i], word.Symbols[i + 1]);
            _pairCounts[pair] = _pairCounts.GetValueOrDefault(pair) + sign * word.Count;
            if (sign > 0)
            {
                if (!_pairWords.TryGetValue(pair, out var set))
                    _pairWords[pair] = set = [];
                set.Add(wordIndex);
            }
        }
    }

    private void Merge(long pair, int left, int right, int target)
    {
        var wordIndices = _pairWords[pair].ToArray();
        foreach (int w in wordIndices)
        {
            var symbols = _words[w].Symbols;
            bool present = false;
            for (int i = 0; i + 1 < symbols.Count && !present; i++)
                present = symbols[i] == left && symbols[i + 1] == right;
            if (!present)
                continue;
            CountPairs(w, -1);
            var merged = new List<int>(symbols.Count);
            for (int i = 0; i < symbols.Count; i++)
            {
                if (i + 1 < symbols.Count && symbols[i] == left && symbols[i + 1] == right)
                {
                    merged.Add(target);
                    i++;
                }
                else
                {
                    merged.Add(symbols[i]);
                }
            }
            symbols.Clear();
            symbols.AddRange(merged);
            CountPairs(w, +1);
        }
        _pairCounts.Remove(pair);
        _pairWords.Remove(pair);
    }
}
