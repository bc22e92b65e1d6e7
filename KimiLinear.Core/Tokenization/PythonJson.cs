using System.Globalization;
using System.Text;
using System.Text.Json;

namespace KimiLinear.Tokenization;

/// <summary>
/// Re-serializes JSON text exactly as Python's <c>json.dumps(json.loads(text), ensure_ascii=False,
/// separators=(',', ':'))</c> would, which is what the chat template's <c>tools | tojson(separators=(',', ':'))</c>
/// writes under Hugging Face transformers (its <c>tojson</c> is plain <c>json.dumps</c> with <c>ensure_ascii=False</c>).
/// The model saw these exact bytes in training, so key order, escapes and float spelling all matter.
/// </summary>
internal static class PythonJson
{
    /// <summary>Compact Python spelling of <paramref name="json"/>.</summary>
    /// <exception cref="JsonException">The text is not valid JSON.</exception>
    public static string Compact(string json)
    {
        using var document = JsonDocument.Parse(json);
        var output = new StringBuilder(json.Length);
        Write(document.RootElement, output);
        return output.ToString();
    }

    private static void Write(JsonElement element, StringBuilder output)
    {
        switch (element.ValueKind)
        {
            case JsonValueKind.Object:
                // A Python dict keeps a repeated key at its first position with its last value.
                var properties = new List<(string Name, JsonElement Value)>();
                var index = new Dictionary<string, int>(StringComparer.Ordinal);
                foreach (var property in element.EnumerateObject())
                {
                    if (index.TryGetValue(property.Name, out int at))
                        properties[at] = (property.Name, property.Value);
                    else
                    {
                        index.Add(property.Name, properties.Count);
                        properties.Add((property.Name, property.Value));
                    }
                }
                output.Append('{');
                for (int i = 0; i < properties.Count; i++)
                {
                    if (i > 0) output.Append(',');
                    WriteString(properties[i].Name, output);
                    output.Append(':');
                    Write(properties[i].Value, output);
                }
                output.Append('}');
                break;
            case JsonValueKind.Array:
                output.Append('[');
                bool first = true;
                foreach (var item in element.EnumerateArray())
                {
                    if (!first) output.Append(',');
                    first = false;
                    Write(item, output);
                }
                output.Append(']');
                break;
            case JsonValueKind.String:
                WriteString(element.GetString()!, output);
                break;
            case JsonValueKind.Number:
                output.Append(Number(element.GetRawText()));
                break;
            case JsonValueKind.True: output.Append("true"); break;
            case JsonValueKind.False: output.Append("false"); break;
            default: output.Append("null"); break;
        }
    }

    private static void WriteString(string value, StringBuilder output)
    {
        output.Append('"');
        foreach (char c in value)
        {
            switch (c)
            {
                case '"': output.Append("\\\""); break;
                case '\\': output.Append("\\\\"); break;
                case '\n': output.Append("\\n"); break;
                case '\r': output.Append("\\r"); break;
                case '\t': output.Append("\\t"); break;
                case '\b': output.Append("\\b"); break;
                case '\f': output.Append("\\f"); break;
                default:
                    if (c < ' ') output.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else output.Append(c);
                    break;
            }
        }
        output.Append('"');
    }

    /// <summary>An int literal stays as written (Python ints are exact); a float is spelled as Python's <c>repr</c>.</summary>
    internal static string Number(string literal)
    {
        if (literal.AsSpan().IndexOfAny('.', 'e', 'E') < 0)
            return literal == "-0" ? "0" : literal;

        double value = double.Parse(literal, NumberStyles.Float, CultureInfo.InvariantCulture);
        if (double.IsInfinity(value)) return value > 0 ? "Infinity" : "-Infinity";
        if (value == 0) return double.IsNegative(value) ? "-0.0" : "0.0";

        // Shortest round-trip digits (the same digits Python's repr picks), then Python's layout: positional for
        // decimal exponents -4..15, otherwise d.ddde±XX.
        string shortest = Math.Abs(value).ToString("R", CultureInfo.InvariantCulture);
        int ePos = shortest.IndexOf('E');
        int exponent = ePos < 0 ? 0 : int.Parse(shortest.AsSpan(ePos + 1), CultureInfo.InvariantCulture);
        string mantissa = ePos < 0 ? shortest : shortest[..ePos];
        int point = mantissa.IndexOf('.');
        string allDigits = mantissa.Replace(".", "", StringComparison.Ordinal);
        int leadingZeros = allDigits.Length - allDigits.TrimStart('0').Length;
        string digits = allDigits.Trim('0');
        int decimalExponent = (point < 0 ? mantissa.Length : point) - leadingZeros - 1 + exponent;

        var text = new StringBuilder(value < 0 ? "-" : "");
        if (decimalExponent is >= -4 and < 16)
        {
            if (decimalExponent >= 0)
            {
                text.Append(digits.Length > decimalExponent ? digits[..(decimalExponent + 1)] : digits.PadRight(decimalExponent + 1, '0'));
                text.Append('.').Append(digits.Length > decimalExponent + 1 ? digits[(decimalExponent + 1)..] : "0");
            }
            else
                text.Append("0.").Append('0', -decimalExponent - 1).Append(digits);
        }
        else
        {
            text.Append(digits[0]);
            if (digits.Length > 1) text.Append('.').Append(digits, 1, digits.Length - 1);
            text.Append('e').Append(decimalExponent < 0 ? '-' : '+')
                .Append(Math.Abs(decimalExponent).ToString("00", CultureInfo.InvariantCulture));
        }
        return text.ToString();
    }
}
