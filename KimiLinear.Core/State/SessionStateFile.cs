using System.Runtime.InteropServices;
using System.Text;
using KimiLinear.Backends;

namespace KimiLinear.State;

/// <summary>
/// The saved-state format: "KIMISTATE" magic, format version, a fingerprint of the model's shapes, the sequence length,
/// then every state tensor as fp32 (KDA: q/k/v conv windows and the recurrent state; MLA: the valid latent rows).
/// Reading validates everything into a fresh state before anything is replaced.
/// </summary>
internal static class SessionStateFile
{
    private static readonly byte[] Magic = "KIMISTATE"u8.ToArray();
    private const int Version = 2; // 2: conv windows stored [W−1, C] (1 was [C, W−1])

    public static void Write(Stream stream, KimiModel model, SessionState state)
    {
        using var writer = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
        writer.Write(Magic);
        writer.Write(Version);
        writer.Write(Fingerprint(model));
        writer.Write(state.Length);
        var backend = model.Backend;
        for (int i = 0; i < state.Kda.Length; i++)
        {
            if (state.Kda[i] is { } kda)
                foreach (var t in kda.Tensors)
                    WriteRows(writer, backend, t, t.Rows);
            if (state.Mla[i] is { } mla)
                WriteRows(writer, backend, mla.Latent, state.Length);
        }
    }

    public static SessionState Read(Stream stream, KimiModel model)
    {
        try
        {
            using var reader = new BinaryReader(stream, Encoding.UTF8, leaveOpen: true);
            if (!reader.ReadBytes(Magic.Length).AsSpan().SequenceEqual(Magic))
                throw new InvalidDataException("Not a KimiLinear saved session state (magic bytes differ).");
            int version = reader.ReadInt32();
            if (version != Version)
                throw new InvalidDataException($"Saved state has format version {version}; this library reads version {Version}.");
            string fingerprint = reader.ReadString();
            if (fingerprint != Fingerprint(model))
                throw new InvalidDataException($"Saved state was made by a model of a different shape ({fingerprint}); this model is {Fingerprint(model)}.");
            int length = reader.ReadInt32();
            if (length < 0 || length > model.MaxSequenceLength)
                throw new InvalidDataException($"Saved state holds {length} tokens; expected 0..{model.MaxSequenceLength}.");
            var state = model.CreateState();
            try
            {
                state.Length = length;
                var backend = model.Backend;
                for (int i = 0; i < state.Kda.Length; i++)
                {
                    if (state.Kda[i] is { } kda)
                        foreach (var t in kda.Tensors)
                            ReadRows(reader, backend, t, t.Rows);
                    if (state.Mla[i] is { } mla)
                    {
                        if (length > mla.Latent.Rows)
                            mla.Latent = backend.GrowRows(mla.Latent, 0, length);
                        ReadRows(reader, backend, mla.Latent, length);
                    }
                }
                if (stream.CanSeek && stream.Position != stream.Length)
                    throw new InvalidDataException($"Saved state has {stream.Length - stream.Position} unexpected bytes after its end.");
            }
            catch
            {
                state.Dispose(); // a GPU state's buffers go back at once
                throw;
            }
            return state;
        }
        catch (EndOfStreamException e)
        {
            throw new InvalidDataException("Saved state is truncated.", e);
        }
    }

    /// <summary>Shapes that must match for a state to fit: layer kinds and every state dimension.</summary>
    private static string Fingerprint(KimiModel model)
    {
        var c = model.Config;
        string kinds = string.Concat(c.LayerKinds.Select(k => k == Configuration.LayerKind.Kda ? 'K' : 'M'));
        return $"{kinds};kda={c.KdaHeads}x{c.KdaHeadDim}w{c.KdaConvSize};mla={c.KvLoraRank}+{c.QkRopeHeadDim}";
    }

    private static void WriteRows(BinaryWriter writer, IKimiBackend backend, Tensor tensor, int rows)
    {
        var all = new float[tensor.Length];
        backend.Download(tensor, all);
        writer.Write(MemoryMarshal.AsBytes(all.AsSpan(0, rows * tensor.Cols)));
    }

    private static void ReadRows(BinaryReader reader, IKimiBackend backend, Tensor tensor, int rows)
    {
        var all = new float[tensor.Length];
        var bytes = MemoryMarshal.AsBytes(all.AsSpan(0, rows * tensor.Cols));
        if (reader.Read(bytes) != bytes.Length)
            throw new EndOfStreamException();
        foreach (float value in all.AsSpan(0, rows * tensor.Cols))
            if (!float.IsFinite(value))
                throw new InvalidDataException("Saved state contains a non-finite value; the file is corrupt.");
        backend.Upload(all, tensor);
    }
}
