using System.Security.Cryptography;
using System.Text;
using KimiLinear.Tokenization;

namespace KimiLinear.Chat;

/// <summary>
/// The file a <see cref="ChatSession"/> is saved to. Layout: magic <c>KIMICHAT</c>, format version (int32), SHA-256 of the
/// body (32 bytes), then the body: the messages, the pending messages, the tokens fed, whether the
/// last turn is open, and last <see cref="KimiSession.SaveState"/>'s bytes (KDA states of fixed size plus the MLA latent
/// cache, which grows with the conversation). The checksum is verified before anything is parsed, so a damaged file is
/// reported as such instead of as a confusing parse error.
/// </summary>
internal static class ChatSessionFile
{
    private static ReadOnlySpan<byte> Magic => "KIMICHAT"u8;
    private const int Version = 1;
    private const int HashOffset = 12;        // after magic and version
    private const int BodyOffset = HashOffset + SHA256.HashSizeInBytes;

    public static void Write(string path, ChatSession chat)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        // Write beside the target and move over it, so a crash mid-save never destroys the previous save.
        var temp = path + ".tmp";
        using (var file = new FileStream(temp, FileMode.Create, FileAccess.ReadWrite, FileShare.None))
        {
            using (var writer = new BinaryWriter(file, Encoding.UTF8, leaveOpen: true))
            {
                writer.Write(Magic);
                writer.Write(Version);
                writer.Write(new byte[SHA256.HashSizeInBytes]);
                WriteMessages(writer, chat.Messages);
                WriteMessages(writer, chat.PendingMessages);
                writer.Write(chat.Tokens.Count);
                foreach (var token in chat.Tokens)
                    writer.Write(token);
                writer.Write(chat.TurnOpen);
            }
            chat.Session.SaveState(file);
            file.Position = BodyOffset;
            var hash = SHA256.HashData(file);
            file.Position = HashOffset;
            file.Write(hash);
        }
        File.Move(temp, path, overwrite: true);
    }

    public static ChatSession Read(string path, KimiModel model)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(model);
        using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        try
        {
            using var reader = new BinaryReader(file, Encoding.UTF8, leaveOpen: true);
            if (file.Length < BodyOffset || !reader.ReadBytes(Magic.Length).AsSpan().SequenceEqual(Magic))
                throw Corrupt(path, "it does not start with the KIMICHAT header of a saved chat session");
            var version = reader.ReadInt32();
            if (version != Version)
                throw Corrupt(path, $"its format version is {version}; this library reads version {Version}");
            var expected = reader.ReadBytes(SHA256.HashSizeInBytes);
            if (!SHA256.HashData(file).AsSpan().SequenceEqual(expected))
                throw Corrupt(path, "its checksum does not match its contents (the file is damaged or truncated)");

            file.Position = BodyOffset;
            var messages = ReadMessages(reader, path);
            var pending = ReadMessages(reader, path);
            var tokenCount = reader.ReadInt32();
            if (tokenCount < 0 || tokenCount > model.MaxSequenceLength)
                throw Corrupt(path, $"it holds {tokenCount} tokens; the model's context is {model.MaxSequenceLength}");
            var tokens = new int[tokenCount];
            for (var i = 0; i < tokens.Length; i++)
                tokens[i] = reader.ReadInt32();
            var turnOpen = reader.ReadBoolean();
            return ChatSession.Restore(model, messages, pending, tokens, turnOpen, session =>
            {
                // The state checks that it belongs to a model of this shape.
                try
                {
                    session.RestoreState(file);
                }
                catch (InvalidDataException e)
                {
                    throw new InvalidDataException($"Cannot resume the chat session in '{path}': {e.Message}", e);
                }
                if (session.Length != tokenCount)
                    throw Corrupt(path, $"its model state holds {session.Length} tokens but its transcript {tokenCount}");
            });
        }
        catch (EndOfStreamException e)
        {
            throw new InvalidDataException($"Cannot resume the chat session in '{path}': it ends early.", e);
        }
    }

    private static void WriteMessages(BinaryWriter writer, IReadOnlyList<KimiChatMessage> messages)
    {
        writer.Write(messages.Count);
        foreach (var m in messages)
        {
            writer.Write(m.Role);
            WriteOptional(writer, m.Content);
            WriteOptional(writer, m.Name);
            WriteOptional(writer, m.ToolCallId);
            writer.Write(m.ToolCalls?.Count ?? -1);
            foreach (var call in m.ToolCalls ?? [])
            {
                writer.Write(call.Id);
                writer.Write(call.ArgumentsJson);
            }
        }
    }

    private static List<KimiChatMessage> ReadMessages(BinaryReader reader, string path)
    {
        var count = reader.ReadInt32();
        // Each message takes at least 8 bytes, which bounds a sane count by what is left of the file.
        if (count < 0 || count > (reader.BaseStream.Length - reader.BaseStream.Position) / 8)
            throw Corrupt(path, $"its message count {count} is impossible");
        var messages = new List<KimiChatMessage>(count);
        for (var i = 0; i < count; i++)
        {
            var role = reader.ReadString();
            var content = ReadOptional(reader);
            var name = ReadOptional(reader);
            var toolCallId = ReadOptional(reader);
            var callCount = reader.ReadInt32();
            if (callCount < -1 || callCount > (reader.BaseStream.Length - reader.BaseStream.Position) / 2)
                throw Corrupt(path, $"message {i} has an impossible tool-call count {callCount}");
            List<KimiToolCall>? calls = callCount < 0 ? null : new(callCount);
            for (var j = 0; j < callCount; j++)
                calls!.Add(new KimiToolCall(reader.ReadString(), reader.ReadString()));
            messages.Add(new KimiChatMessage(role, content) { Name = name, ToolCallId = toolCallId, ToolCalls = calls });
        }
        return messages;
    }

    private static void WriteOptional(BinaryWriter writer, string? value)
    {
        writer.Write(value is not null);
        if (value is not null)
            writer.Write(value);
    }

    private static string? ReadOptional(BinaryReader reader) => reader.ReadBoolean() ? reader.ReadString() : null;

    private static InvalidDataException Corrupt(string path, string why) =>
        new($"Cannot resume the chat session in '{path}': {why}.");
}
