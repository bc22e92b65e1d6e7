namespace KimiLinear;

/// <summary>Temporary.</summary>
public static class Placeholder { }
