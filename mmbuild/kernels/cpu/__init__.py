"""numba kernels for the CPU.

- :mod:`.features`: which instruction sets this process may use (``MMBUILD_PORTABLE=1`` forces
  the portable kernels);
- :mod:`.simd`: 512-bit vector types, the intrinsics of the micro-kernels, fp16 conversion;
- :mod:`.codegen`: generated micro-kernel source and the per-user cache it is imported from;
- :mod:`.gemm` (with :mod:`.gemm_pack`: epilogues and packed weights, :mod:`.gemm_codegen`: the
  generated micro-kernels): int8, int16 and float GEMM with weights packed at build time, fused
  epilogues and an implicit-GEMM entry for convolution;
- :mod:`.convert`: whole-array fp16/fp32 conversion, quantization and dequantization;
- :mod:`.qcommon`: what the quantized kernels share (scales, weight quantization, epilogues);
- the kernel entries of the table (:mod:`.all` lists them): :mod:`.conv_ops`, :mod:`.deconv_ops`,
  :mod:`.linear_ops`, :mod:`.pointwise`, :mod:`.normalize`, :mod:`.movement`, :mod:`.window`.

Submodules are imported on use: importing this package compiles nothing.
"""
