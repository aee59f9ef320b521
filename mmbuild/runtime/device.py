"""MagicMind's runtime objects, as they mean on a CPU: System, Device, Queue and EngineConfig.

A MagicMind script initialises the system, activates an MLU, creates a queue (a stream of work
on the device), runs contexts on that queue and waits for it:

>>> import mmbuild as mm
>>> sys_ = mm.System(); sys_.initialize().ok()
True
>>> dev = mm.Device(); dev.id = 0; dev.active().ok()
True
>>> queue = dev.create_queue(); queue.sync().ok()
True

On the CPU there is one device, id 0: the process itself. Runs are synchronous, so
``context.enqueue(inputs, outputs, queue)`` has finished when it returns and ``queue.sync()``
only confirms it. A queue belongs to the first context that runs on it (as a stream orders the
work of its context); running another context on it is refused, since the order the queue
promises would then mean nothing. ``Model.EngineConfig().device_type`` may be "MLU" or "CPU":
both run here, on the CPU.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

from mmbuild._aliases import CamelCaseAliases
from mmbuild.errors import MMError, Status

log = logging.getLogger(__name__)

#: The device types an EngineConfig accepts; both run on this CPU.
DEVICE_TYPES: tuple[str, ...] = ("MLU", "CPU")


class System(CamelCaseAliases):
    """MagicMind's ``mm.System``: ``initialize()`` and ``destroy()`` return Status OK.

    Nothing needs setting up on the CPU (kernels compile lazily, on first use), so both only
    record the state; calling either twice is harmless.
    """

    def __init__(self) -> None:
        self._initialized = False

    def initialize(self) -> Status:
        self._initialized = True
        return Status.OK()

    def destroy(self) -> Status:
        self._initialized = False
        return Status.OK()

    @property
    def initialized(self) -> bool:
        return self._initialized

    def __repr__(self) -> str:
        return f"System(initialized={self._initialized})"


def _check_device_id(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MMError(f"{what}: the device id is {value!r}; give the integer 0")
    if value != 0:
        raise MMError(
            f"{what}: device id {value} does not exist; mmbuild runs on this CPU, which is "
            "device 0 (the only one)"
        )
    return 0


class Device(CamelCaseAliases):
    """MagicMind's ``mm.Device``: the CPU, ``id`` 0. ``active()`` makes it current (a no-op)."""

    def __init__(self) -> None:
        self._id = 0
        self._active = False

    @property
    def id(self) -> int:
        return self._id

    @id.setter
    def id(self, value: int) -> None:
        self._id = _check_device_id(value, "Device.id")

    def get_id(self) -> int:
        return self._id

    def set_id(self, value: int) -> Status:
        self.id = value
        return Status.OK()

    def active(self) -> Status:
        """Make this device current for the calling thread: OK (there is only the CPU)."""
        self._active = True
        return Status.OK()

    @property
    def is_active(self) -> bool:
        return self._active

    def create_queue(self) -> Queue:
        """A new queue on this device."""
        return Queue(self)

    def __repr__(self) -> str:
        return f"Device(id={self._id})"


class Queue(CamelCaseAliases):
    """A queue of work on the device. Runs are synchronous on the CPU, so ``sync()`` returns
    OK at once; ``with dev.create_queue() as queue:`` syncs on leaving the block.

    The first ``context.enqueue(..., queue)`` binds the queue to that context; another context
    is refused (create one queue per context with ``dev.create_queue()``).
    """

    def __init__(self, device: Device) -> None:
        if not isinstance(device, Device):
            raise MMError(
                f"Queue: device must be an mm.Device, not {type(device).__name__}; "
                "create queues with dev.create_queue()"
            )
        self._device = device
        self._owner: weakref.ref[Any] | None = None
        self._lock = threading.Lock()

    @property
    def device(self) -> Device:
        return self._device

    def sync(self) -> Status:
        """Wait for the work on this queue: it is already done (runs are synchronous)."""
        return Status.OK()

    def _bind(self, context: object) -> None:
        """Bind the queue to ``context`` on its first run; refuse any other context after."""
        with self._lock:
            owner = self._owner() if self._owner is not None else None
            if owner is None:  # first run, or its context is gone
                self._owner = weakref.ref(context)
            elif owner is not context:
                raise MMError(
                    "enqueue: queue is the queue of another context; a queue orders the runs "
                    "of one context. Create one queue per context with dev.create_queue()"
                )

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sync()

    def __repr__(self) -> str:
        return f"Queue(device={self._device.id})"


class EngineConfig(CamelCaseAliases):
    """MagicMind's ``mm.Model.EngineConfig``: ``device_type`` "MLU" (the default) or "CPU".

    Both run on this CPU; any other type is refused when set. Spellings in other cases
    ("mlu", "cpu") are accepted and stored upper case.

    >>> econfig = EngineConfig(); econfig.device_type = "CPU"; econfig.device_type
    'CPU'
    """

    def __init__(self) -> None:
        self._device_type = "MLU"

    @property
    def device_type(self) -> str:
        return self._device_type

    @device_type.setter
    def device_type(self, value: str) -> None:
        if not isinstance(value, str) or value.upper() not in DEVICE_TYPES:
            raise MMError(
                f"EngineConfig.device_type: {value!r} is not a device type mmbuild runs on; "
                f"use one of {', '.join(map(repr, DEVICE_TYPES))} (both run on this CPU)"
            )
        self._device_type = value.upper()

    def get_device_type(self) -> str:
        return self._device_type

    def set_device_type(self, value: str) -> Status:
        self.device_type = value
        return Status.OK()

    def __repr__(self) -> str:
        return f"EngineConfig(device_type={self._device_type!r})"


def check_device(device: Any, what: str) -> Device:
    """``device`` if it is an ``mm.Device`` of id 0 (or the id 0 itself); else MMError."""
    if isinstance(device, Device):
        return device
    if isinstance(device, int) and not isinstance(device, bool):
        _check_device_id(device, what)
        return Device()
    raise MMError(f"{what}: expected an mm.Device (or the device id 0), not {device!r}")
