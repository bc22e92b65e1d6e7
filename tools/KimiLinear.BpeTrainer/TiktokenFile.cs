using System.Text;

namespace KimiLinear.BpeTrainer;

/// <summary>The tiktoken BPE file format: one <c>base64(token bytes) rank</c> line per rank, LF endings.</summary>
public static class TiktokenFile
{
    /// <summary>Writes <paramref name="tokens"/> (index = rank) to <paramref name="path"/>.</summary>
    public static void Write(string path, IReadOnlyList<byte[]> tokens)
    {
        var text = new StringBuilder();
        for (int rank = 0; rank < tokens.Count; rank++)
            text.Append(Convert.ToBase64String(tokens[rank])).Append(' ').Append(rank).Append('\n');
        File.WriteAllText(path, text.ToString(), new UTF8Encoding(encoderShouldEmitUTF8Identifier: false));
    }
}
