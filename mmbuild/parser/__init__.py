"""Model parsers: ``mm.Parser(mm.ModelKind.kOnnx)`` imports ONNX models into an ``mm.Network``.

See ``model`` (the Parser), ``walk`` (the graph walk and names), ``fold`` (parse-time folding),
``table`` (the import table) and the ``ops_*`` modules (the handlers, by op family).
"""

from __future__ import annotations

from mmbuild.parser.model import ModelKind, Parser

__all__ = ["ModelKind", "Parser"]
