namespace KimiLinear.Cuda.Interop;

/// <summary>
/// The driver API's <c>CUresult</c>. Only the codes this library reacts to are named; every other code still reaches
/// <see cref="CudaException"/> with the driver's own name and description.
/// </summary>
public enum CuResult
{
    /// <summary>CUDA_SUCCESS.</summary>
    Success = 0,
    /// <summary>CUDA_ERROR_INVALID_VALUE.</summary>
    InvalidValue = 1,
    /// <summary>CUDA_ERROR_OUT_OF_MEMORY.</summary>
    OutOfMemory = 2,
    /// <summary>CUDA_ERROR_NOT_INITIALIZED.</summary>
    NotInitialized = 3,
    /// <summary>CUDA_ERROR_DEINITIALIZED: the driver is shutting down (process exit); frees then have nothing to do.</summary>
    Deinitialized = 4,
    /// <summary>CUDA_ERROR_NO_DEVICE.</summary>
    NoDevice = 100,
    /// <summary>CUDA_ERROR_INVALID_DEVICE.</summary>
    InvalidDevice = 101,
    /// <summary>CUDA_ERROR_INVALID_IMAGE.</summary>
    InvalidImage = 200,
    /// <summary>CUDA_ERROR_NO_BINARY_FOR_GPU.</summary>
    NoBinaryForGpu = 209,
    /// <summary>CUDA_ERROR_INVALID_PTX.</summary>
    InvalidPtx = 218,
    /// <summary>CUDA_ERROR_UNSUPPORTED_PTX_VERSION: the PTX was made by a newer toolkit than the driver understands.</summary>
    UnsupportedPtxVersion = 222,
    /// <summary>CUDA_ERROR_NOT_FOUND (e.g. a kernel name the module lacks).</summary>
    NotFound = 500,
    /// <summary>CUDA_ERROR_NOT_READY.</summary>
    NotReady = 600,
}
