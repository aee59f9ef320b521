"""``BuilderConfig``: MagicMind's JSON build configuration, parsed, merged and validated.

This file owns parsing (``parse_from_string``, ``parse_from_file``), the merge of one parse into
the next, the translation of validation errors into ``MMError`` messages that name the key path,
the bad value and the allowed values, and the read-only view the builder uses. What the keys are
lives in ``mmbuild.config.schema``.

A parse is all or nothing: the merged result is validated before it replaces the current one, so a
refused parse leaves the configuration exactly as it was.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Iterator
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from mmbuild._aliases import CamelCaseAliases
from mmbuild._files import parse_json, read_json_file
from mmbuild.config.schema import IGNORED_KEYS, MAGICMIND_KEYS, BuilderConfigModel
from mmbuild.errors import MMError, Status, did_you_mean

logger = logging.getLogger(__name__)

Loc = tuple[str | int, ...]
#: A builder config file above this size is refused unread.
MAX_CONFIG_BYTES = 16 * 2**20
#: How many problems an error message lists before it gives the count of the rest.
MAX_LISTED_PROBLEMS = 5


class BuilderConfig(CamelCaseAliases):
    """The build configuration, set from MagicMind-style JSON.

    >>> config = BuilderConfig()
    >>> config.precision_mode
    'force_float32'
    >>> config.parse_from_string('{"precision_config": {"precision_mode": "qint8_mixed_float16"}}')
    Status(OK, '')
    >>> config.parse_from_string('{"custom_ranges": {"x": {"min": -1, "max": 1}}}').ok()
    True
    >>> config.precision_mode, config.custom_ranges
    ('qint8_mixed_float16', {'x': ([-1.0], [1.0])})

    Each parse merges into the previous ones: a later key wins, objects merge key by key, and an
    entry of ``custom_ranges`` replaces the earlier entry of the same tensor name. CamelCase
    spellings (``ParseFromString``, ``ParseFromFile``) work too.
    """

    __slots__ = ("_model", "_raw")

    def __init__(self) -> None:
        self._raw: dict[str, Any] = {}
        self._model = BuilderConfigModel()

    # -- parsing -------------------------------------------------------------------------------

    def parse_from_string(self, text: str) -> Status:
        """Merge the JSON object ``text`` into the configuration; raise ``MMError`` if refused.

        >>> BuilderConfig().parse_from_string('{"archs": ["mtp_372"]}').ok()  # ignored key
        True
        """
        if not isinstance(text, str):
            raise MMError(
                f"builder config: parse_from_string expects a str of JSON, got "
                f"{type(text).__name__}"
            )
        where = "builder config"
        if len(text) > MAX_CONFIG_BYTES:
            raise MMError(
                f"{where}: {len(text)} characters is above the limit of {MAX_CONFIG_BYTES}"
            )
        self._merge_in(parse_json(text, where, allow_non_finite=True), where)
        return Status.OK()

    def parse_from_file(self, path: str | os.PathLike[str]) -> Status:
        """Merge the JSON object in the file at ``path``, as ``parse_from_string`` does.

        A missing file raises ``MMError`` with code ``NOT_FOUND``.
        """
        data, where = read_json_file(
            path, "builder config", MAX_CONFIG_BYTES, allow_non_finite=True
        )
        self._merge_in(data, where)
        return Status.OK()

    def _merge_in(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise MMError(
                f"{where}: the top level must be a JSON object "
                f'(like {{"precision_config": {{...}}}}), got {_kind(data)}'
            )
        # "$schema" names the file's JSON Schema for editors (mmbuild.schemas): not a build setting
        if not isinstance(data.pop("$schema", ""), str):
            raise MMError(f'{where}: "$schema" must be a string, the URL or path of a JSON Schema')
        bad = next(_non_finite(data, ()), None)
        if bad is not None:
            raise MMError(
                f"{where}: {_path(bad[0])}: {_show(bad[1])} is not a finite number; "
                "use finite numbers only"
            )
        merged = copy.deepcopy(self._raw)
        _deep_merge(merged, data, ())
        try:
            model = BuilderConfigModel.model_validate(merged)
        except ValidationError as e:
            raise MMError(f"{where}: {_explain(e)}") from None
        self._raw, self._model = merged, model
        ignored = [key for key in data if key in IGNORED_KEYS]
        if ignored:
            logger.warning(
                "%s: ignoring MagicMind keys that have no meaning on a CPU: %s",
                where,
                ", ".join(ignored),
            )

    # -- the view the builder uses -------------------------------------------------------------

    @property
    def model(self) -> BuilderConfigModel:
        """The validated configuration (a frozen pydantic model); treat it as read-only."""
        return self._model

    @property
    def precision_mode(self) -> str:
        """``precision_config.precision_mode``, for example ``'qint8_mixed_float16'``."""
        return self._model.precision_config.precision_mode

    @property
    def weight_quant_granularity(self) -> str:
        """``precision_config.weight_quant_granularity``: ``'per_tensor'`` or ``'per_axis'``."""
        return self._model.precision_config.weight_quant_granularity

    @property
    def weight_quant_range(self) -> str:
        """``precision_config.weight_quant_range``: ``'full'`` or ``'reduced'`` (int8 weights
        within -64..64, for the vpmaddubsw kernels of CPUs without VNNI)."""
        return self._model.precision_config.weight_quant_range

    @property
    def activation_quant_algo(self) -> str:
        """``precision_config.activation_quant_algo``: ``'symmetric'`` or ``'asymmetric'``."""
        return self._model.precision_config.activation_quant_algo

    @property
    def activation_quant_mode(self) -> str:
        """``precision_config.activation_quant_mode``: ``'static'`` (ranges from calibration)
        or ``'dynamic'`` (the inputs of conv, deconv, inner product and matmul with a constant
        weight quantized from each run's values)."""
        return self._model.precision_config.activation_quant_mode

    @property
    def cross_layer_equalization(self) -> bool:
        """``precision_config.cross_layer_equalization``: equalise conv pairs before quantizing."""
        return self._model.precision_config.cross_layer_equalization

    @property
    def bias_correction(self) -> bool:
        """``precision_config.bias_correction``: correct biases for the weights' mean error."""
        return self._model.precision_config.bias_correction

    @property
    def custom_ranges(self) -> dict[str, tuple[list[float], list[float]]]:
        """A fresh copy of ``custom_ranges``: tensor name -> (min list, max list)."""
        return {name: (list(r.min), list(r.max)) for name, r in self._model.custom_ranges.items()}

    def custom_range_for(self, tensor_name: str) -> tuple[list[float], list[float]] | None:
        """The custom range of ``tensor_name``, else the ``""`` entry, else None.

        >>> config = BuilderConfig()
        >>> _ = config.parse_from_string('{"custom_ranges": {"": {"min": -6, "max": 6}}}')
        >>> config.custom_range_for("conv1")
        ([-6.0], [6.0])
        """
        ranges = self._model.custom_ranges
        found = ranges.get(tensor_name, ranges.get(""))
        return None if found is None else (list(found.min), list(found.max))

    # -- MagicMind's model-changing keys, by input / output index -------------------------------

    @property
    def convert_input_layout(self) -> dict[int, tuple[str, str]]:
        """``convert_input_layout``: input index -> (src, dst), e.g. ``{0: ("NCHW", "NHWC")}``."""
        return {int(k): (v.src, v.dst) for k, v in self._model.convert_input_layout.items()}

    @property
    def convert_output_layout(self) -> dict[int, tuple[str, str]]:
        """``convert_output_layout``: output index -> (src, dst)."""
        return {int(k): (v.src, v.dst) for k, v in self._model.convert_output_layout.items()}

    @property
    def insert_bn_before_firstnode(self) -> dict[int, tuple[list[float], list[float]]]:
        """``insert_bn_before_firstnode``: input index -> (mean list, var list)."""
        entries = self._model.insert_bn_before_firstnode
        return {int(k): (list(v.mean), list(v.var)) for k, v in entries.items()}

    @property
    def graph_shape_mutable(self) -> bool:
        """``graph_shape_mutable`` (default True); False fixes the input shapes at build time."""
        return self._model.graph_shape_mutable

    @property
    def dim_range(self) -> dict[int, tuple[list[int], list[int]]]:
        """``dim_range``: input index -> (min dims, max dims)."""
        return {int(k): (list(v.min), list(v.max)) for k, v in self._model.dim_range.items()}

    def ignored_keys(self) -> list[str]:
        """The key paths that were accepted but have no effect, sorted.

        >>> config = BuilderConfig()
        >>> _ = config.parse_from_string('{"opt_config": {"conv_scale_fold": true}}')
        >>> config.ignored_keys()
        ['opt_config']
        """
        return sorted(key for key in IGNORED_KEYS if key in self._model.model_fields_set)

    def to_json(self) -> str:
        """The whole configuration as pretty JSON, defaults included; parsing it gives it back.

        Ignored keys, and the MagicMind keys that change the model (``convert_input_layout``,
        ``insert_bn_before_firstnode``, ``graph_shape_mutable``, ...), appear only when given.
        """
        return json.dumps(self._dump(), indent=2)

    def _dump(self) -> dict[str, Any]:
        data = self._model.model_dump(mode="json")
        for key in (*IGNORED_KEYS, *MAGICMIND_KEYS):
            if key not in self._model.model_fields_set:
                del data[key]
        return data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BuilderConfig):
            return NotImplemented
        return self._dump() == other._dump()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"BuilderConfig(precision_mode={self.precision_mode!r}, "
            f"weight_quant_granularity={self.weight_quant_granularity!r}, "
            f"activation_quant_algo={self.activation_quant_algo!r}, "
            f"custom_ranges={len(self._model.custom_ranges)}, ignored={self.ignored_keys()})"
        )


# -- JSON ----------------------------------------------------------------------------------------


def _non_finite(value: Any, loc: Loc) -> Iterator[tuple[Loc, float]]:
    # json.loads accepts NaN, Infinity and 1e999; none of them belongs in a config.
    if isinstance(value, float) and not math.isfinite(value):
        yield loc, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _non_finite(v, (*loc, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _non_finite(v, (*loc, i))


_WHOLE_ENTRIES = {("custom_ranges",), *((k,) for k in MAGICMIND_KEYS)}


def _deep_merge(base: dict[str, Any], update: dict[str, Any], loc: Loc) -> None:
    """Merge ``update`` into ``base`` in place: objects key by key, anything else replaced.

    An entry of ``custom_ranges`` (or of an index-keyed MagicMind key such as ``dim_range``) is
    replaced as a whole: a range is one value, and merging a new ``min`` with an old ``max`` of
    another length would make a range nobody wrote.
    """
    replace_children = loc in _WHOLE_ENTRIES
    for key, value in update.items():
        old = base.get(key)
        if isinstance(old, dict) and isinstance(value, dict) and not replace_children:
            _deep_merge(old, value, (*loc, key))
        else:
            base[key] = copy.deepcopy(value)


# -- error messages ------------------------------------------------------------------------------


def _strip(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _resolve(loc: Loc) -> tuple[type[BaseModel] | None, Any]:
    """Walk ``loc`` through the models: the model that holds the last key, and that key's type.

    Both are None where ``loc`` leaves the schema (an unknown key, or inside an ignored key).
    """
    node: Any = BuilderConfigModel
    holder: type[BaseModel] | None = None
    for seg in loc:
        node = _strip(node)
        if isinstance(node, type) and issubclass(node, BaseModel) and isinstance(seg, str):
            holder = node
            field = node.model_fields.get(seg)
            node = None if field is None else field.annotation
        elif get_origin(node) in (dict, list):
            holder, node = None, get_args(node)[-1]
        else:
            return None, None
    return holder, _strip(node)


def _path(loc: Loc) -> str:
    """``('precision_config', 'precision_mode')`` -> ``precision_config.precision_mode``.

    Tensor names (keys of ``custom_ranges``) and list indices go in brackets, so that a name with a
    dot, or the empty name, stays readable: ``custom_ranges[""].min[0]``.
    """
    out = ""
    node: Any = BuilderConfigModel
    for seg in loc:
        node = _strip(node)
        if isinstance(seg, int):
            out += f"[{seg}]"
            node = get_args(node)[-1] if get_origin(node) is list else None
        elif get_origin(node) is dict:
            out += f"[{json.dumps(seg)}]"
            node = get_args(node)[-1]
        else:
            out += f".{seg}" if out else seg
            field = node.model_fields.get(seg) if _is_model(node) else None
            node = None if field is None else field.annotation
    return out or "(top level)"


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _show(value: Any) -> str:
    """A user's value as they would recognise it: strings quoted, others as JSON."""
    if isinstance(value, str):
        text = repr(value)
    else:
        try:
            text = json.dumps(value, allow_nan=True)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    for t, name in names.items():
        if isinstance(value, t):
            return f"{name} ({_show(value)})"
    if value is None:
        return "null"
    return f"a number ({_show(value)})"


def _keys_of(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _explain(error: ValidationError) -> str:
    """The first ``MAX_LISTED_PROBLEMS`` problems, then how many more there are."""
    count = error.error_count()
    lines = [_explain_one(e) for e in error.errors(include_url=False)[:MAX_LISTED_PROBLEMS]]
    if count == 1:
        return lines[0]
    more = f" (and {count - len(lines)} more)" if count > len(lines) else ""
    return f"{count} problems: " + "; ".join(lines) + more


def _explain_one(err: Any) -> str:
    loc: Loc = tuple(err["loc"])
    kind, value = err["type"], err.get("input")
    path = _path(loc)
    if kind == "extra_forbidden":
        key = str(loc[-1])
        holder, _ = _resolve(loc)
        allowed = _keys_of(holder or BuilderConfigModel)
        inside = f"in {_path(loc[:-1])}" if len(loc) > 1 else "at the top level"
        return (
            f"unknown key {path!r}{did_you_mean(key, allowed)}; "
            f"allowed keys {inside}: {', '.join(allowed)}"
        )
    _, annotation = _resolve(loc)
    if kind == "literal_error":
        allowed = [str(a) for a in get_args(annotation)]
        hint = did_you_mean(value, allowed) if isinstance(value, str) else ""
        return (
            f"{path}: {_show(value)} is not an allowed value{hint}; "
            f"allowed values: {', '.join(repr(a) for a in allowed)}"
        )
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        keys = f" with keys {', '.join(_keys_of(annotation))}" if _is_model(annotation) else ""
        return f"{path}: expected a JSON object{keys}, got {_kind(value)}"
    if kind == "missing":
        holder, _ = _resolve(loc)
        needed = [k for k, f in holder.model_fields.items() if f.is_required()] if holder else []
        needs = f" (an entry needs {' and '.join(map(repr, needed))})" if needed else ""
        return f"{path}: required key is missing{needs}"
    if kind in ("float_type", "float_parsing"):
        if isinstance(value, int) and not isinstance(value, bool):
            return (
                f"{path}: the integer {_show(value)} ({len(str(abs(value)))} digits) is too "
                "large for a float; use a number of magnitude below 1.8e308"
            )
        return f"{path}: expected a number, got {_kind(value)}"
    if kind == "bool_type":
        return f"{path}: expected true or false, got {_kind(value)}"
    if kind in ("int_type", "int_from_float"):
        return f"{path}: expected a whole number, got {_kind(value)}"
    if kind == "list_type":
        return f"{path}: expected a number or a list of numbers, got {_kind(value)}"
    if kind == "too_short":
        return f"{path}: must not be empty; give at least one number"
    if kind == "value_error":
        return f"{path}: {err.get('ctx', {}).get('error', err['msg'])}"
    return f"{path}: {err['msg']}, got {_kind(value)}"
