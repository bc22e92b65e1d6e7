using System.Buffers;
using System.Buffers.Text;

namespace KimiLinear.Tokenization;

/// <summary>
/// Reads and checks a <c>tiktoken.model</c> file: one <c>&lt;base64 bytes&gt; &lt;rank&gt;</c> line per BPE token
/// (LF or CRLF endings, empty lines ignored, as tiktoken's loader does). Every error names the file and line, because
/// Microsoft.ML.Tokenizers' loader reports neither, and because a file that loads with gaps or a missing byte would
/// give wrong ids or throw in the middle of encoding.
/// </summary>
internal static class TiktokenModelFile
{
    /// <summary>The file's bytes (handed unchanged to <c>TiktokenTokenizer</c>) and each rank's token bytes.</summary>
    public sealed record Contents(byte[] FileBytes, byte[][] TokensByRank);

    /// <summary>Reads <paramref name="path"/>; ranks must be exactly 0..N-1 with distinct byte strings and all 256 single bytes.</summary>
    public static Contents Read(string path)
    {
        byte[] file = File.ReadAllBytes(path);
        var tokens = new List<(byte[] Bytes, int Rank, int Line)>(capacity: 1 << 17);

        int lineNumber = 0;
        for (int start = 0; start < file.Length;)
        {
            lineNumber++;
            int newline = file.AsSpan(start).IndexOf((byte)'\n');
            int end = newline < 0 ? file.Length : start + newline;
            var line = file.AsSpan(start, end - start);
            if (!line.IsEmpty && line[^1] == '\r') line = line[..^1];
            start = end + 1;
            if (line.IsEmpty)
                continue;
            tokens.Add(ParseLine(line, path, lineNumber));
        }

        if (tokens.Count == 0)
            throw new InvalidDataException($"{path}: holds no tokens; expected lines of '<base64 bytes> <rank>'.");

        var byRank = new byte[tokens.Count][];
        var lineOfRank = new int[tokens.Count];
        var rankOfBytes = new Dictionary<byte[], int>(tokens.Count, ByteStringComparer.Instance);
        foreach (var (bytes, rank, line) in tokens)
        {
            if (rank >= tokens.Count)
                throw new InvalidDataException($"{path}: line {line}: rank {rank} is not below the number of tokens ({tokens.Count}); ranks must run 0..{tokens.Count - 1} without gaps.");
            if (byRank[rank] is not null)
                throw new InvalidDataException($"{path}: line {line}: duplicate rank {rank} (first on line {lineOfRank[rank]}).");
            if (!rankOfBytes.TryAdd(bytes, rank))
                throw new InvalidDataException($"{path}: line {line}: the bytes of rank {rank} duplicate those of rank {rankOfBytes[bytes]} (line {lineOfRank[rankOfBytes[bytes]]}).");
            byRank[rank] = bytes;
            lineOfRank[rank] = line;
        }

        Span<byte> single = stackalloc byte[1];
        for (int b = 0; b < 256; b++)
        {
            single[0] = (byte)b;
            if (!rankOfBytes.ContainsKey(single.ToArray()))
                throw new InvalidDataException($"{path}: no token for the single byte 0x{b:X2}; byte-level BPE needs all 256 single bytes.");
        }
        return new Contents(file, byRank);
    }

    private static (byte[] Bytes, int Rank, int Line) ParseLine(ReadOnlySpan<byte> line, string path, int lineNumber)
    {
        int space = line.IndexOf((byte)' ');
        if (space <= 0 || space == line.Length - 1 || line[(space + 1)..].IndexOf((byte)' ') >= 0)
            throw new InvalidDataException($"{path}: line {lineNumber}: expected '<base64 bytes> <rank>' with one space, found '{Preview(line)}'.");

        var base64 = line[..space];
        var bytes = new byte[Base64.GetMaxDecodedFromUtf8Length(base64.Length)];
        if (Base64.DecodeFromUtf8(base64, bytes, out _, out int written) != OperationStatus.Done || written == 0)
            throw new InvalidDataException($"{path}: line {lineNumber}: '{Preview(base64)}' is not valid base64 for a non-empty token.");

        var rankText = line[(space + 1)..];
        if (!Utf8Parser.TryParse(rankText, out int rank, out int consumed) || consumed != rankText.Length || rank < 0)
            throw new InvalidDataException($"{path}: line {lineNumber}: rank '{Preview(rankText)}' is not a non-negative integer.");

        return (bytes.AsSpan(0, written).ToArray(), rank, lineNumber);
    }

    private static string Preview(ReadOnlySpan<byte> bytes)
    {
        const int max = 60;
        string text = System.Text.Encoding.UTF8.GetString(bytes[..Math.Min(bytes.Length, max)]);
        return bytes.Length > max ? text + "…" : text;
    }

    /// <summary>Compares byte strings by content.</summary>
    private sealed class ByteStringComparer : IEqualityComparer<byte[]>
    {
        public static readonly ByteStringComparer Instance = new();

        public bool Equals(byte[]? x, byte[]? y) => x.AsSpan().SequenceEqual(y);

        public int GetHashCode(byte[] bytes)
        {
            var hash = new HashCode();
            hash.AddBytes(bytes);
            return hash.ToHashCode();
        }
    }
}
