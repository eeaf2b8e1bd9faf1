"""BaseProcessor: the base class of a processor, as HEAT's guide writes one, and the checks
its default ``validate()`` makes."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Generator, Mapping
from typing import Any, ClassVar, Final

from heat_runtime._errors import PermanentError

__all__ = ["INLINE_HOOKS", "BaseProcessor", "check_task"]


class BaseProcessor:
    """The base of a processor: one Node Template, two hooks.

    ::

        from heat_runtime import BaseProcessor, HeatRuntime


        class SumProcessor(BaseProcessor):
            TEMPLATE_NAME = "generic-sum-csv"  # the Node Template it processes

            async def validate(self, inputs, config):
                await super().validate(inputs, config)
                if "file" not in inputs:
                    raise ValueError("expected 'file' in inputs")

            async def process(self, inputs, config):
                ...
                return {"speed": 120.7, "altitude": 3412, "temperature": None}


        HeatRuntime.register(SumProcessor)
        HeatRuntime().init()

    ``validate()`` rejects a task by raising (any exception) or returning False: the task fails
    permanently. ``process()`` returns the node's outputs (JSON-able: dict, list, str, number,
    bool or None); raising ``PermanentError`` fails the task permanently, any other exception
    fails this attempt and lets the scheduler retry it. Both get ``inputs`` (the upstream
    outputs keyed by upstream node key; files as bytes or a binary file object) and ``config``
    (the node's configuration). Hooks written with ``async def`` run on the event loop; hooks
    written with plain ``def`` run in a worker thread. Annotating ``inputs`` or ``config`` with
    a dataclass or a pydantic model makes the runtime check and convert them first.
    Processing must be idempotent: a task can run more than once.
    """

    TEMPLATE_NAME: ClassVar[str] = ""
    """Name of the Node Template this processor handles (required)."""
    REQUIRED_INPUTS: ClassVar[Collection[str]] = ()
    """Inputs a task must carry (upstream node keys, or file input names such as ``"file"``);
    the default ``validate()`` rejects a task that lacks one or holds null for it."""

    def validate(self, inputs: Any, config: Any) -> Any:
        """The checks the runtime can make, for ``await super().validate(inputs, config)``:

        * ``inputs`` is a mapping keyed by text (or the dataclass/model its hook declares),
          and ``config`` a mapping (or its declared type);
        * every name of ``REQUIRED_INPUTS`` is there and not null;
        * every file input is open for reading.

        A failed check raises ``PermanentError`` at once, so the call works from a
        synchronous ``validate()`` too (``super().validate(inputs, config)``); from an async
        one, await what it returns.
        """
        check_task(self, inputs, config)
        return _CHECKED

    def process(self, inputs: Any, config: Any) -> Any:
        """Do the work; return the outputs. Every processor defines its own."""
        raise NotImplementedError(
            f"{type(self).__name__} does not define process(self, inputs, config)"
        )


class _Checked:
    """An awaitable that is already done (what the default validate() returns)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # makes this a generator: awaiting it finishes at once


_CHECKED: Final = _Checked()

INLINE_HOOKS: Final[frozenset[object]] = frozenset({BaseProcessor.validate})
"""Synchronous hooks that are cheap enough to call on the event loop."""


def check_task(processor: object, inputs: Any, config: Any) -> None:
    """The default validate()'s checks; PermanentError names what is wrong."""
    template = getattr(processor, "TEMPLATE_NAME", "") or type(processor).__name__
    if isinstance(inputs, Mapping):
        for key in inputs:
            if not isinstance(key, str):
                raise PermanentError(
                    f"{template}: inputs are keyed by upstream node key (text), not {key!r}"
                )
        present = {key for key, value in inputs.items() if value is not None}
        for key, value in inputs.items():
            _check_file(template, key, value)
    elif _is_declared(inputs):
        present = {key for key in _names(inputs) if getattr(inputs, key, None) is not None}
    else:
        raise PermanentError(
            f"{template}: inputs must be a mapping of upstream node key to value,"
            f" not {type(inputs).__name__}"
        )
    required = list(getattr(processor, "REQUIRED_INPUTS", ()))
    missing = [name for name in required if name not in present]
    if missing:
        raise PermanentError(
            f"{template} needs the input{'s' if len(missing) > 1 else ''}"
            f" {', '.join(map(repr, missing))}; the task has"
            f" {', '.join(map(repr, sorted(present))) or 'none'}",
            details={"missing_inputs": missing},
        )
    if not isinstance(config, Mapping) and not _is_declared(config):
        raise PermanentError(
            f"{template}: config must be a mapping of setting to value, not {type(config).__name__}"
        )


def _check_file(template: str, key: str, value: Any) -> None:
    if not callable(getattr(value, "read", None)):
        return
    if getattr(value, "closed", False):
        raise PermanentError(f"{template}: the file of input {key!r} is closed")
    readable = getattr(value, "readable", None)
    if callable(readable) and not readable():
        raise PermanentError(f"{template}: the file of input {key!r} is not open for reading")


def _is_declared(value: Any) -> bool:
    """A dataclass instance or a pydantic model: what a typed hook receives."""
    is_model = hasattr(type(value), "model_fields")
    return is_model or (dataclasses.is_dataclass(value) and not isinstance(value, type))


def _names(value: Any) -> list[str]:
    if dataclasses.is_dataclass(value):
        return [field.name for field in dataclasses.fields(value)]
    return list(getattr(type(value), "model_fields", {}))
