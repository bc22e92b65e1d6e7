namespace KimiLinear.Tests;

public class SmokeTests
{
    [Fact]
    public void CoreAssemblyLoads() => Assert.Equal("KimiLinear.Core", typeof(KimiLinear.Placeholder).Assembly.GetName().Name);
}
