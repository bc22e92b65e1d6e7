using KimiLinear.Loading;

namespace KimiLinear.Tests.Loading;

/// <summary>Every malformed checkpoint gives an exception that names the file and tensor, never a crash or a silent load.</summary>
public sealed class CheckpointErrorTests
{
    [Fact]
    public void MissingShardNamesTheShard()
    {
        using var dir = TempDirectory.WithTinyModel();
        File.Delete(dir.File("model-00002-of-00002.safetensors"));
        var error = Assert.Throws<FileNotFoundException>(() => KimiModel.Load(dir.Path));
        Assert.Contains("model-00002-of-00002.safetensors", error.Message);
        Assert.Contains("model.safetensors.index.json", error.Message);
    }

    [Fact]
    public void TruncatedShardIsDetectedAtOpen()
    {
        using var dir = TempDirectory.WithTinyModel();
        string shard = dir.File("model-00001-of-00002.safetensors");
        using (var stream = new FileStream(shard, FileMode.Open))
            stream.SetLength(stream.Length / 2);
        var error = Assert.Throws<InvalidDataException>(() => KimiModel.Load(dir.Path));
        Assert.Contains("model-00001-of-00002.safetensors", error.Message);
        Assert.Contains("truncated", error.Message);
    }

    [Fact]
    public void HeaderLengthPastTheEndOfTheFile()
    {
        using var dir = new TempDirectory();
        var bytes = new SafetensorsBuilder().Add("x", "F32", [2], new byte[8]).Build();
        BitConverter.GetBytes(1_000_000L).CopyTo(bytes, 0);
        File.WriteAllBytes(dir.File("model.safetensors"), bytes);
        var error = Assert.Throws<InvalidDataException>(() => SafeTensorFile.Open(dir.File("model.safetensors")));
        Assert.Contains("header length 1000000", error.Message);
    }

    [Fact]
    public void TooShortFileAndMalformedHeaderJson()
    {
        using var dir = new TempDirectory();
        File.WriteAllBytes(dir.File("short.safetensors"), [1, 2, 3]);
        Assert.Contains("too short", Assert.Throws<InvalidDataException>(() => SafeTensorFile.Open(dir.File("short.safetensors"))).Message);
        var json = "{\"x\": {\"dtype\": "u8.ToArray();
        File.WriteAllBytes(dir.File("bad.safetensors"), [.. BitConverter.GetBytes((long)json.Length), .. json]);
        Assert.Contains("not valid JSON", Assert.Throws<InvalidDataException>(() => SafeTensorFile.Open(dir.File("bad.safetensors"))).Message);
    }

    [Fact]
    public void OverlappingOffsetsAreRejected()
    {
        using var dir = new TempDirectory();
        var bytes = new SafetensorsBuilder()
            .Add("a", "F32", [2], new byte[8])
            .Add("b", "F32", [2], new byte[8])
            .Build(name => name == "b" ? (4, 12) : null);
        File.WriteAllBytes(dir.File("model.safetensors"), bytes);
        var error = Assert.Throws<InvalidDataException>(() => SafeTensorFile.Open(dir.File("model.safetensors")));
        Assert.Contains("overlap", error.Message);
        Assert.Contains("'a'", error.Message);
    }

    [Fact]
    public void OffsetsOutOfRangeOrNotMatchingTheShapeAreRejected()
    {
        using var dir = new TempDirectory();
        File.WriteAllBytes(dir.File("a.safetensors"), new SafetensorsBuilder().Add("a", "F32", [2], new byte[8]).Build(_ => (0, 16)));
        Assert.Contains("past the end", Assert.Throws<InvalidDataException>(() => SafeTensorFile.Open(dir.File("a.safetensors"))).Message);
        File.WriteAllBytes(dir.File("b.safetensors"), new SafetensorsBuilder().Add("b", "F32", [3], new byte[8]).Build());
        Assert.Contains("needs 12 bytes", Assert.Throws<InvalidDataException>(() => SafeTensorFile.Open(dir.File("b.safetensors"))).Message);
    }

    [Fact]
    public void UnknownDtypeNamesTensorAndDtype()
    {
        using var dir = new TempDirectory();
        File.WriteAllBytes(dir.File("model.safetensors"), new SafetensorsBuilder().Add("w", "F8_E4M3", [4], new byte[4]).Build());
        var error = Assert.Throws<InvalidDataException>(() => SafeTensorFile.Open(dir.File("model.safetensors")));
        Assert.Contains("'w'", error.Message);
        Assert.Contains("F8_E4M3", error.Message);
    }

    [Fact]
    public void WrongShapeNamesTensorFileExpectedAndActual()
    {
        using var dir = TempDirectory.WithTinyModel();
        File.Delete(dir.File("model.safetensors.index.json"));
        const string tensor = "model.layers.0.self_attn.b_proj.weight"; // [H = 4, D = 256]
        File.WriteAllBytes(dir.File("model.safetensors"), SafetensorsBuilder.FromTinyModel(
            info => info.Name == tensor ? ("BF16", [2, 512]) : (info.DType.ToString(), info.Shape)).Build());
        var error = Assert.Throws<InvalidDataException>(() => KimiModel.Load(dir.Path));
        Assert.Contains(tensor, error.Message);
        Assert.Contains("model.safetensors", error.Message);
        Assert.Contains("[2, 512]", error.Message);
        Assert.Contains("[4, 256]", error.Message);
    }

    [Fact]
    public void WrongDtypeNamesTensorAndDtype()
    {
        using var dir = TempDirectory.WithTinyModel();
        File.Delete(dir.File("model.safetensors.index.json"));
        const string tensor = "model.layers.1.self_attn.dt_bias"; // fp32 [256] → same bytes as I32
        File.WriteAllBytes(dir.File("model.safetensors"), SafetensorsBuilder.FromTinyModel(
            info => info.Name == tensor ? ("I32", info.Shape) : (info.DType.ToString(), info.Shape)).Build());
        var error = Assert.Throws<InvalidDataException>(() => KimiModel.Load(dir.Path));
        Assert.Contains(tensor, error.Message);
        Assert.Contains("I32", error.Message);
    }

    [Fact]
    public void MissingTensorIsNamed()
    {
        using var dir = TempDirectory.WithTinyModel();
        File.Delete(dir.File("model.safetensors.index.json"));
        File.WriteAllBytes(dir.File("model.safetensors"), SafetensorsBuilder.FromTinyModel(
            info => info.Name == "lm_head.weight" ? null : (info.DType.ToString(), info.Shape)).Build());
        var error = Assert.Throws<InvalidDataException>(() => KimiModel.Load(dir.Path));
        Assert.Contains("'lm_head.weight'", error.Message);
        Assert.Contains("[512, 256]", error.Message);
    }

    [Fact]
    public void IndexNamingATensorItsShardLacks()
    {
        using var dir = TempDirectory.WithTinyModel();
        string index = File.ReadAllText(dir.File("model.safetensors.index.json"));
        File.WriteAllText(dir.File("model.safetensors.index.json"),
            index.Replace("\"weight_map\": {", "\"weight_map\": {\"model.extra.weight\": \"model-00001-of-00002.safetensors\",", StringComparison.Ordinal));
        var error = Assert.Throws<InvalidDataException>(() => KimiModel.Load(dir.Path));
        Assert.Contains("model.extra.weight", error.Message);
    }

    [Fact]
    public void SingleFileCheckpointLoadsAndGivesTheSameLogits()
    {
        using var dir = TempDirectory.WithTinyModel();
        File.Delete(dir.File("model.safetensors.index.json"));
        File.WriteAllBytes(dir.File("model.safetensors"), SafetensorsBuilder.FromTinyModel().Build());
        using var single = KimiModel.Load(dir.Path);
        using var sharded = KimiModel.Load(FixturePaths.TinyModel);
        int[] ids = [5, 77, 300, 2];
        TensorAssert.Close(single.CreateSession().Forward(ids), sharded.CreateSession().Forward(ids), 0, "single-file vs sharded");
    }
}
