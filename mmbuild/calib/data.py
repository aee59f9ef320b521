"""``CalibDataInterface``: the base class a user subclasses to feed calibration data.

One instance serves one network input. The calibrator drives it as MagicMind's does: ``reset()``
once, then ``next()`` until it returns a Status with code ``OUT_OF_RANGE``, reading
``get_shape()``, ``get_data_type()`` and ``get_sample()`` after each OK. The calibrator calls these
snake_case names, which are the spelling of MagicMind's Python API; a subclass overrides them.
"""

from __future__ import annotations

import numpy as np

from mmbuild._aliases import CamelCaseAliases
from mmbuild.errors import MMError, Status
from mmbuild.ir.types import DataType, Dims

#: The methods a data source overrides, in the order the calibrator calls them.
DATA_METHODS: tuple[str, ...] = ("reset", "next", "get_shape", "get_data_type", "get_sample")


class CalibDataInterface(CamelCaseAliases):
    """One network input's calibration batches. Subclass it and override the five methods.

    >>> import mmbuild as mm
    >>> class TwoBatches(CalibDataInterface):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.batches, self.i = [np.zeros((1, 4), np.float32)] * 2, -1
    ...     def get_shape(self): return mm.Dims(self.batches[self.i].shape)
    ...     def get_data_type(self): return mm.DataType.FLOAT32
    ...     def get_sample(self): return self.batches[self.i]
    ...     def next(self):
    ...         self.i += 1
    ...         if self.i >= len(self.batches):
    ...             return mm.Status(mm.Code.OUT_OF_RANGE, "end of data")
    ...         return mm.Status.OK()
    ...     def reset(self):
    ...         self.i = -1
    ...         return mm.Status.OK()
    >>> data = TwoBatches()
    >>> data.reset().ok(), data.next().ok(), data.get_shape()
    (True, True, Dims([1, 4]))

    A method left as it is raises ``MMError`` naming it:

    >>> CalibDataInterface().get_sample()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mmbuild.errors.MMError: CalibDataInterface.get_sample() is not implemented; override it ...
    """

    def __init__(self) -> None:
        pass

    def get_shape(self) -> Dims:
        """The shape of the current batch, as ``mm.Dims``."""
        raise self._not_overridden("get_shape", "return the current batch's shape as mm.Dims")

    def get_data_type(self) -> DataType:
        """The ``mm.DataType`` of the current batch (the network input's declared type)."""
        raise self._not_overridden("get_data_type", "return the batch's mm.DataType")

    def get_sample(self) -> np.ndarray:
        """The current batch: a numpy array of ``get_shape()`` and ``get_data_type()``."""
        raise self._not_overridden("get_sample", "return the current batch as a numpy array")

    def next(self) -> Status:
        """Move to the next batch: ``Status.OK()``, or ``Status(Code.OUT_OF_RANGE, ...)`` at the
        end of the data."""
        raise self._not_overridden(
            "next",
            "move to the next batch and return mm.Status.OK(), or a Status with code "
            "mm.Code.OUT_OF_RANGE after the last batch",
        )

    def reset(self) -> Status:
        """Go back to before the first batch, so that ``next()`` gives batch 0 again."""
        raise self._not_overridden("reset", "go back to the start and return mm.Status.OK()")

    def _not_overridden(self, method: str, what: str) -> MMError:
        cls = type(self).__name__
        camel = "".join(part.capitalize() for part in method.split("_"))
        hint = ""
        if callable(getattr(type(self), camel, None)):
            # a C++-style override: the Python API (and the calibrator) uses the snake_case name
            hint = f" ({cls} defines {camel}; the calibrator calls the Python spelling {method})"
        return MMError(
            f"{cls}.{method}() is not implemented; override it in your subclass to {what}{hint}"
        )
