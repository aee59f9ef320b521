"""Imports every module that declares kernel entries, so that the kernel table is complete
(``mmbuild.kernels.table.load_kernels`` imports this module)."""

from __future__ import annotations

import importlib

KERNEL_MODULES = (
    "pointwise",  # activation, clip, cast
    "elementwise",  # elementwise
    "normalize",  # fused_batch_norm, layer_norm, softmax, reduce
    "movement",  # reshape, squeeze, unsqueeze, permute, concat, split, slice, pad
    "window",  # maxpool2d, avgpool2d, resize
    "conv_ops",  # conv
    "deconv_ops",  # deconv
    "linear_ops",  # inner_product, matmul
)

for _name in KERNEL_MODULES:
    importlib.import_module(f"mmbuild.kernels.cpu.{_name}")
