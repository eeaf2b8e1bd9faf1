"""What the runtime learns from a processor class when it is registered: its template, how to
call each hook (on the event loop or in a worker thread) and which types its hooks declare.

Everything that can be wrong with a processor's shape is a TypeError at registration, naming
the class and what to change, rather than a failure of every task later.
"""

from __future__ import annotations

import functools
import inspect
import logging
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from heat_runtime._processor import INLINE_HOOKS, BaseProcessor
from heat_runtime._typed import Converter, converter, is_typed_class

__all__ = ["Hook", "Plan", "Registration", "plan_of", "registration"]

log = logging.getLogger("heat_runtime")

HOOKS = ("validate", "process")


@dataclass(frozen=True, slots=True)
class Hook:
    """How to call one hook."""

    name: str
    mode: Literal["async", "sync", "inline"]
    """async: awaited on the loop; sync: run in a worker thread; inline: called on the loop."""
    inputs: Converter | None = None
    """Converts the inputs to the declared type; None: the hook gets them as they are."""
    config: Converter | None = None
    """Converts the config to the declared type; None: the hook gets it as it is."""


@dataclass(frozen=True, slots=True)
class Plan:
    """A processor class as the runtime calls it."""

    template: str
    validate: Hook
    process: Hook


@dataclass(frozen=True, slots=True)
class Registration:
    """A registered processor: an instance, or a class instantiated when serving starts."""

    target: object
    plan: Plan

    def instance(self) -> object:
        if not isinstance(self.target, type):
            return self.target
        try:
            return self.target()
        except TypeError as error:
            name = self.target.__name__
            raise TypeError(
                f"cannot create {name}() to serve {self.plan.template!r}: {error}; give it a"
                f" constructor without arguments, or register an instance: register({name}(...))"
            ) from error


def registration(target: object) -> Registration:
    """Check a processor (instance or class) and plan how to call it; TypeError says what is
    wrong."""
    return Registration(target, plan_of(target))


def plan_of(target: object) -> Plan:
    cls = target if isinstance(target, type) else type(target)
    name = cls.__name__
    template = getattr(target, "TEMPLATE_NAME", None)
    if not isinstance(template, str) or not template:
        raise TypeError(
            f"{name} has no TEMPLATE_NAME; give the class"
            ' TEMPLATE_NAME = "<node template name>" (the Node Template it processes)'
        )
    if issubclass(cls, BaseProcessor) and getattr(cls, "process", None) is BaseProcessor.process:
        raise TypeError(
            f"{name} does not define process(); a processor needs"
            " async def process(self, inputs, config) (or a plain def)"
        )
    converters: dict[type, Converter] = {}
    hooks = [_hook(target, cls, hook, converters) for hook in HOOKS]
    return Plan(template, *hooks)


def _hook(target: object, cls: type, name: str, converters: dict[type, Converter]) -> Hook:
    attribute = getattr(target, name, None)
    if not callable(attribute):
        raise TypeError(
            f"{cls.__name__} has no {name}() method; a processor needs"
            f" async def {name}(self, inputs, config)"
        )
    function = getattr(attribute, "__func__", attribute)
    callable_ = attribute
    static = inspect.getattr_static(cls, name, None)
    if isinstance(target, type) and not isinstance(static, staticmethod | classmethod):
        callable_ = functools.partial(attribute, None)  # as bound to an instance
    try:
        parameters = list(inspect.signature(callable_).parameters.values())
        inspect.signature(callable_).bind(None, None)
    except (TypeError, ValueError):
        raise TypeError(
            f"{cls.__name__}.{name}() must take the two arguments (inputs, config)"
        ) from None
    if inspect.isasyncgenfunction(function) or inspect.isgeneratorfunction(function):
        raise TypeError(
            f"{cls.__name__}.{name}() is a generator; make it async def {name}(self, inputs,"
            " config) returning its result"
        )
    mode: Literal["async", "sync", "inline"] = "sync"
    if function in INLINE_HOOKS:
        mode = "inline"
    elif inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004 - a callable object's own __call__
    ):
        mode = "async"
    declared = [_declared(cls, name, function, p) for p in parameters[:2]]
    inputs, config = (_converter(tp, converters) for tp in declared)
    return Hook(name, mode, inputs, config)


def _converter(tp: Any, converters: dict[type, Converter]) -> Converter | None:
    if not is_typed_class(tp):
        return None
    if tp not in converters:
        converters[tp] = converter(tp)
    return converters[tp]


def _declared(cls: type, hook: str, function: Callable[..., Any], parameter: Any) -> Any:
    """The type a hook's parameter is annotated with; None when there is none or it cannot be
    resolved (the hook then gets plain values)."""
    annotation = parameter.annotation
    if annotation is inspect.Parameter.empty:
        return None
    if not isinstance(annotation, str):
        return annotation
    try:
        return typing.get_type_hints(function).get(parameter.name)
    except Exception:  # noqa: S110 - another annotation may be the unresolvable one
        pass
    namespace = getattr(function, "__globals__", {})
    try:
        return eval(annotation, namespace)  # noqa: S307 - the processor's own annotation
    except Exception as error:
        log.warning(
            "cannot resolve the annotation %r of %s.%s(%s) (%s: %s); it gets plain values",
            annotation,
            cls.__name__,
            hook,
            parameter.name,
            type(error).__name__,
            error,
        )
        return None
