"""Op declarations. Importing this package imports every module in it, which registers each op
(see ``registry``); the public names of each module (its ``__all__``) are re-exported here and
from ``mmbuild``. ``OPS`` maps op names to node classes.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from mmbuild.ops.registry import OPS, get_op, register_op

__all__ = ["OPS", "get_op", "register_op"]


def _load_all() -> dict[str, Any]:
    exported: dict[str, Any] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "registry":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name in getattr(module, "__all__", ()):
            exported[name] = getattr(module, name)
    return exported


PUBLIC = _load_all()
globals().update(PUBLIC)
__all__ += sorted(PUBLIC)
