using KimiLinear.Cuda;
using KimiLinear.Cuda.Kernels;
using KimiLinear.Cuda.Memory;

namespace KimiLinear.Tests.Cuda;

/// <summary>Softmax, argmax and top-k/top-p sampling on the GPU against the CPU reference.</summary>
[Collection("GPU")]
public sealed class SamplingKernelTests
{
    private const int Vocabulary = 163_840;

    [Theory]
    [InlineData(3, Vocabulary)]
    [InlineData(2, 1001)]
    [InlineData(1, 1)]
    public void Softmax_MatchesReference(int t, int v)
    {
        CudaContext gpu = Gpu.Require();
        float[] logits = Gpu.RandomF32(new Random(v + t), (long)t * v, 4f);
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<float> dLogits = gpu.Upload(stream, logits), dOut = gpu.Poisoned(stream, (long)t * v, float.NaN);
        SamplingKernels.Softmax(stream, dOut, dLogits, t, v);
        float[] got = dOut.ToArray(stream);
        TensorAssert.Close(CpuReference.Softmax(logits, t, v), got, 1e-5, 1e-12, "softmax");
        for (long i = (long)t * v; i < got.Length; i++) Assert.True(float.IsNaN(got[i]), $"tail element {i} overwritten");
    }

    [Theory]
    [InlineData(6, Vocabulary)]
    [InlineData(6, 1001)]  // odd V: the element-wise path, row starts not 16-byte aligned
    [InlineData(6, 4100)]  // V % 4 == 0 but past one block's 4,096 values: a second, nearly empty block
    public void Argmax_TakesTheFirstMaximumAndSkipsNaN(int t, int v)
    {
        CudaContext gpu = Gpu.Require();
        var random = new Random(v - t);
        float[] logits = Gpu.RandomF32(random, (long)t * v);
        // Row 0: a tie for the maximum (in different blocks where V > 4,096; the lower index must win); row 1: NaN before the maximum;
        // row 2: all -inf; row 3: all NaN; row 4: the maximum 0 with -0 first (they compare equal: the first wins);
        // row 5: the maximum in the last element.
        logits[17] = logits[v - 3] = 50f;
        logits[v + 2] = float.NaN;
        logits[v + 900] = 60f;
        for (int i = 0; i < v; i++)
        {
            logits[2L * v + i] = float.NegativeInfinity;
            logits[3L * v + i] = float.NaN;
            logits[4L * v + i] = -1f - logits[4L * v + i] * logits[4L * v + i];
        }
        logits[4L * v + 5] = -0f;
        logits[4L * v + v - 2] = 0f;
        logits[6L * v - 1] = 70f;
        using CudaStream stream = gpu.CreateStream();
        using var scratch = new ArgmaxScratch(stream, t);
        // A second call on the same scratch, with each row reversed and 100 lower: its maxima sit elsewhere and below the
        // first call's, so a key or arrival count the first call left behind would give a wrong index or none. It also
        // writes a copy into mapped host memory (how a greedy step's choice reaches the host).
        float[] second = new float[logits.Length];
        for (int r = 0; r < t; r++)
            for (int i = 0; i < v; i++) second[(long)r * v + i] = logits[(long)r * v + v - 1 - i] - 100f;
        using var hostCopy = new MappedHostBuffer<int>(gpu, t + 1);
        for (int call = 0; call < 2; call++)
        {
            float[] rows = call == 0 ? logits : second;
            using DeviceBuffer<float> dLogits = gpu.Upload(stream, rows);
            using DeviceBuffer<int> dOut = gpu.Poisoned(stream, t, -7);
            if (call == 0)
                SamplingKernels.Argmax(stream, dOut, dLogits, t, v, scratch);
            else
            {
                hostCopy.Mapped.Fill(-7, stream);
                SamplingKernels.Argmax(stream, dOut, dLogits, t, v, scratch, hostCopy.Mapped.Slice(1, t));
            }
            int[] got = dOut.ToArray(stream);
            for (int r = 0; r < t; r++) Assert.Equal(CpuReference.Argmax(rows.AsSpan(r * v, v)), got[r]);
            if (call == 0) Assert.Equal([17, 900, 0, -1, 5, v - 1], got[..t]);
            Gpu.AssertTailUntouched(got, t, -7);
        }
        stream.Synchronize();
        int[] copied = Enumerable.Range(0, t + 1).Select(i => hostCopy[i]).ToArray();
        Assert.Equal([-7, .. Enumerable.Range(0, t).Select(r => CpuReference.Argmax(second.AsSpan(r * v, v)))], copied);
    }

    [Theory]
    [InlineData(1, 1.0f, 1.0f)]     // top-1: must be the argmax
    [InlineData(50, 0.7f, 0.9f)]
    [InlineData(1000, 1.3f, 0.95f)]
    [InlineData(1024, 1.0f, 1.0f)]  // the largest k, no top-p cut
    [InlineData(7, 2.0f, 0.3f)]     // a tight top-p
    public void SampleTopKTopP_PicksTheReferenceToken(int k, float temperature, float topP)
    {
        CudaContext gpu = Gpu.Require();
        const int T = 8;
        int v = Vocabulary;
        var random = new Random(k * 13 + (int)(topP * 100));
        var logits = new float[(long)T * v];
        var uniforms = new float[T];
        var expected = new int[T];
        for (int r = 0; r < T; r++)
        {
            Span<float> row = logits.AsSpan(r * v, v);
            for (int attempt = 0; ; attempt++)
            {
                Assert.True(attempt < 20, "could not draw an unambiguous row (is the reference's margin too wide?)");
                for (int i = 0; i < v; i++) row[i] = Gpu.Normal(random) * 2f;
                if (r % 2 == 0)
                {
                    // Ties at the k-th place: the kernel must take the tied entries with the lowest indices, as the reference does.
                    float kth = row.ToArray().OrderDescending().ElementAt(k - 1);
                    for (int j = 0; j < 3; j++) row[random.Next(v)] = kth;
                }
                else if (r == 1)
                {
                    // The same with −0 and +0 at the k-th place: they compare equal, so the lowest indices win there too.
                    float kth = row.ToArray().OrderDescending().ElementAt(k - 1);
                    for (int i = 0; i < v; i++) row[i] -= kth;
                    for (int j = 0; j < 3; j++) row[random.Next(v)] = -0f;
                }
                uniforms[r] = random.NextSingle();
                expected[r] = CpuReference.SampleTopKTopP(row, k, temperature, topP, uniforms[r], out bool cutAmbiguous, out bool drawAmbiguous);
                if (cutAmbiguous) continue;
                for (int draw = 0; drawAmbiguous && draw < 20; draw++)
                {
                    uniforms[r] = random.NextSingle();
                    expected[r] = CpuReference.SampleTopKTopP(row, k, temperature, topP, uniforms[r], out _, out drawAmbiguous);
                }
                if (!drawAmbiguous) break;
            }
        }
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<float> dLogits = gpu.Upload(stream, logits), dU = gpu.Upload(stream, uniforms);
        using DeviceBuffer<int> dOut = gpu.Poisoned(stream, T, -7);
        SamplingKernels.SampleTopKTopP(stream, dOut, dLogits, dU, T, v, k, temperature, topP);
        int[] got = dOut.ToArray(stream);
        Assert.Equal(expected, got[..T]);
        Gpu.AssertTailUntouched(got, T, -7);
    }

    [Fact]
    public void SampleTopKTopP_RejectsBadSettings()
    {
        CudaContext gpu = Gpu.Require();
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<float> logits = gpu.Allocate<float>(2000);
        using DeviceBuffer<int> tokens = gpu.Allocate<int>(1);
        Assert.Throws<ArgumentOutOfRangeException>(() => SamplingKernels.SampleTopKTopP(stream, tokens, logits, logits, 1, 2000, 1025, 1f, 1f));
        Assert.Throws<ArgumentOutOfRangeException>(() => SamplingKernels.SampleTopKTopP(stream, tokens, logits, logits, 1, 2000, 5, 0f, 1f));
        Assert.Throws<ArgumentOutOfRangeException>(() => SamplingKernels.SampleTopKTopP(stream, tokens, logits, logits, 1, 2000, 5, 1f, 0f));
    }
}
