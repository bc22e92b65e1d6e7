using KimiLinear.Generation;

namespace KimiLinear.Tests.Generation;

public class GenerationOptionsTests
{
    public static TheoryData<string, GenerationOptions> OutOfRange => new()
    {
        { nameof(GenerationOptions.MaxTokens), new GenerationOptions { MaxTokens = 0 } },
        { nameof(GenerationOptions.Temperature), new GenerationOptions { Temperature = -0.1f } },
        { nameof(GenerationOptions.Temperature), new GenerationOptions { Temperature = float.NaN } },
        { nameof(GenerationOptions.Temperature), new GenerationOptions { Temperature = 1000f } },
        { nameof(GenerationOptions.TopP), new GenerationOptions { TopP = 1.01f } },
        { nameof(GenerationOptions.TopP), new GenerationOptions { TopP = 0f } },
        { nameof(GenerationOptions.TopK), new GenerationOptions { TopK = -1 } },
        { nameof(GenerationOptions.MinP), new GenerationOptions { MinP = 1.5f } },
        { nameof(GenerationOptions.RepetitionPenalty), new GenerationOptions { RepetitionPenalty = 0f } },
        { nameof(GenerationOptions.RepetitionPenalty), new GenerationOptions { RepetitionPenalty = float.PositiveInfinity } },
    };

    [Theory]
    [MemberData(nameof(OutOfRange))]
    public void Out_of_range_option_is_named(string option, GenerationOptions options)
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(options.Validate);
        Assert.Equal(option, e.ParamName);
        Assert.Contains(option, e.Message);
    }

    [Fact]
    public void Empty_stop_sequence_is_rejected()
    {
        var e = Assert.Throws<ArgumentException>(new GenerationOptions { StopSequences = ["ok", ""] }.Validate);
        Assert.Equal(nameof(GenerationOptions.StopSequences), e.ParamName);
    }

    [Fact]
    public void Defaults_are_valid() => new GenerationOptions().Validate();
}
