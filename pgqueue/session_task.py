"""Declaring a keyed session (`@app.session`): a task whose invocations of one key run one at a
time, in arrival order, with the key's durable state in `ctx.state` (see `pgqueue.sessions`)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, overload

from .codec import InputCodec
from .context import current_run
from .database import engine_call
from .errors import TaskDefinitionError
from .flow import Concurrency
from .registry import TaskRegistry
from .sessions import SessionState
from .task import Task

P = ParamSpec("P")
R = TypeVar("R")


class SessionDecorator:
    """What `@app.session(...)` returns: typed so that `Task[P, R]` keeps the function's signature."""

    def __init__(self, registry: TaskRegistry, name: str, key: str, options: dict[str, Any]) -> None:
        self.registry = registry
        self.name = name
        self.key = key
        self.options = options

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Task[P, R]: ...

    def __call__(self, fn: Callable[P, Any]) -> Task[P, Any]:
        return declare_session(self.registry, self.name, self.key, fn, self.options)


def declare_session(registry: TaskRegistry, name: str, key: str, fn: Callable[..., Any],
                    options: dict[str, Any]) -> Task[Any, Any]:
    """Register `fn` as the task `name`, keyed by its input field `key`."""
    if not callable(fn):
        raise TaskDefinitionError(f"@app.session decorates a function, not {fn!r}")
    if "concurrency" in options:
        raise TaskDefinitionError(f"session {name!r}: a session runs one invocation per key at a time; "
                                  "it takes no concurrency= (its key is the concurrency key)")
    if not isinstance(key, str) or not key:
        raise TaskDefinitionError(f"session {name!r}: key= must name an input field, e.g. key=\"user_id\"")
    codec = InputCodec(name, fn)
    if key not in codec.model.model_fields:
        fields = ", ".join(codec.model.model_fields) or "none"
        raise TaskDefinitionError(f"session {name!r}: key={key!r} is not a field of its input (fields: {fields}); "
                                  "name the parameter (or model field) that holds the session key")
    invoke = _async_invoker(name, fn) if inspect.iscoroutinefunction(fn) else _sync_invoker(name, fn)
    # the key is the concurrency key (limit 1): the claim serves keys round-robin, and even a run
    # admitted by mistake could not run beside its key's holder
    task = registry.register(invoke, name=name, codec=codec, concurrency=Concurrency(key=key, max_running=1),
                             **options)
    registry.sessions[name] = key
    return task


def _async_invoker(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def invoke(*args: Any, **kwargs: Any) -> Any:
        ctx = current_run()
        state = SessionState(name, ctx.durable().fence)
        with engine_call(f"run {ctx.run_id}'s session state"):
            await ctx.database().execute_async(state.begin_op())
        ctx._session = state
        result = await fn(*args, **kwargs)
        await ctx.save_state()  # before the outcome: the next invocation starts from it
        return result
    return invoke


def _sync_invoker(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def invoke(*args: Any, **kwargs: Any) -> Any:
        ctx = current_run()
        state = SessionState(name, ctx.durable().fence)
        with engine_call(f"run {ctx.run_id}'s session state"):
            ctx.database().execute(state.begin_op())
        ctx._session = state
        result = fn(*args, **kwargs)
        ctx.save_state_sync()
        return result
    return invoke
