"""numba kernels for the CPU.

- :mod:`.features`: the instruction-set level of this process (avx512_vnni, avx512, avx_vnni,
  avx2, portable; ``MMBUILD_ISA=<level>`` forces one the CPU runs);
- :mod:`.vector` and :mod:`.dot`: SIMD vector types of every width, the intrinsics of the
  micro-kernels and the int8 dot product of each level; :mod:`.simd`: scalar fp16 conversion;
- :mod:`.fastmath`: float32 exp, sigmoid, SiLU, tanh, GELU and ELU that vectorise;
- :mod:`.codegen`: generated micro-kernel source and the per-user cache it is imported from;
- :mod:`.gemm` (with :mod:`.gemm_pack`: epilogues and packed weights, :mod:`.gemm_codegen`: the
  generated micro-kernels): int8, int16 and float GEMM with weights packed at build time, fused
  epilogues and an implicit-GEMM entry for convolution;
- :mod:`.convert`: whole-array fp16/fp32 conversion, quantization and dequantization;
- :mod:`.qcommon`: what the quantized kernels share (scales, weight quantization, epilogues);
- the kernel entries of the table (:mod:`.all` lists them): :mod:`.conv_ops`, :mod:`.deconv_ops`,
  :mod:`.linear_ops`, :mod:`.pointwise`, :mod:`.elementwise`, :mod:`.normalize`,
  :mod:`.movement`, :mod:`.window`.

Submodules are imported on use: importing this package compiles nothing.
"""
