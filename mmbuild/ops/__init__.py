"""Op declarations: importing this package registers every op (see ``registry``).

Each module declares one family; ``OPS`` maps op names to their node classes.
"""

from __future__ import annotations

from mmbuild.ops import activation, const, conv, elementwise  # noqa: F401 - registration
from mmbuild.ops.activation import ACTIVATIONS, IActivation, IActivationNode, IClipNode
from mmbuild.ops.const import IConstNode
from mmbuild.ops.conv import IConvNode, IPaddingMode
from mmbuild.ops.elementwise import IElementwise, IElementwiseNode
from mmbuild.ops.registry import OPS, get_op, register_op

__all__ = [
    "ACTIVATIONS",
    "OPS",
    "IActivation",
    "IActivationNode",
    "IClipNode",
    "IConstNode",
    "IConvNode",
    "IElementwise",
    "IElementwiseNode",
    "IPaddingMode",
    "get_op",
    "register_op",
]
