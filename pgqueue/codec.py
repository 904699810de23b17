"""Turning a task's call arguments into the JSON input stored in a run, and back.

A task whose only parameter is a pydantic model stores that model's fields as its input
(`{"doc_id": 42}`); any other task stores its arguments by name (`{"a": 1, "b": 2}`). Either
way the stored input is a JSON object that SQL and other languages can write too.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Mapping
from itertools import accumulate
from typing import Any, get_type_hints

import pydantic
import pydantic_core

from .errors import InputTooLarge, InvalidInput, TaskDefinitionError

#: Deepest nesting of objects and arrays a stored JSON value may have: `{"a": [1]}` is 2 deep.
#: The enqueue and payload functions of sql/functions refuse deeper values (pgqueue.max_json_depth
#: there is the same number), and every value read back is checked again, so that a value written
#: around them (a plain INSERT) fails its run instead of the decoder's recursion.
MAX_JSON_DEPTH = 64

#: Names of tasks, queues, schedules, rate limits and events (pgqueue.name_ok in sql/functions is
#: the same rule, and is what SQL producers meet): 1 to 200 ASCII characters, a letter or _ first.
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$")
MAX_NAME_LENGTH = 200


def check_name(what: str, name: str, error: type[Exception] = InvalidInput) -> str:
    """NAME, or `error` saying why it is not a valid name of a WHAT ('task', 'queue', ...)."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        shown = f"of {len(name)} characters" if isinstance(name, str) and len(name) > 80 else repr(name)
        raise error(f"{what} name {shown} is not valid: use 1 to {MAX_NAME_LENGTH} characters, "
                    "a letter or _ first, then letters, digits or _ . : -")
    return name


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_NESTING = {"[": 1, "{": 1, "]": -1, "}": -1}


def json_depth(text: str) -> int:
    """How deeply the objects and arrays of a JSON text nest (0 for a scalar), without recursion."""
    if text.count("[") + text.count("{") == 0:
        return 0
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_NESTING.__getitem__, brackets)), default=0)


def too_deep_message(what: str, depth: int) -> str:
    return (f"{what} nests objects and arrays {depth} levels deep, over the limit of {MAX_JSON_DEPTH} "
            "levels; flatten it (or store it elsewhere and pass a reference)")


def loads_bounded(data: str | bytes, what: str = "the stored JSON") -> Any:
    """`json.loads` that refuses values nested deeper than MAX_JSON_DEPTH with InvalidInput
    (json.loads itself would recurse until RecursionError)."""
    text = data.decode() if isinstance(data, (bytes, bytearray, memoryview)) else data
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and (depth := json_depth(text)) > MAX_JSON_DEPTH:
        raise InvalidInput(too_deep_message(what, depth))
    return json.loads(text)


def check_stored(text: str, what: str, max_bytes: int | None) -> str:
    """TEXT (JSON about to be stored by a batched write, where one refused row would fail the whole
    batch), or InputTooLarge / InvalidInput when over the size or nesting limit."""
    size = len(text.encode())
    if max_bytes is not None and size > max_bytes:
        raise InputTooLarge(f"{what} is {size} bytes, over the limit of {max_bytes} bytes. Store large blobs "
                            "elsewhere (a table, object storage) and pass a reference.")
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and (depth := json_depth(text)) > MAX_JSON_DEPTH:
        raise InvalidInput(too_deep_message(what, depth))
    return text


class UndecodableJSON(str):
    """Stands in, when rows are read, for a stored JSON value that cannot be decoded (nested
    too deeply): a listing or a run page shows this text instead of failing as a whole, and the
    code that needs the value itself (the executor, a handle, a step's replay) raises InvalidInput."""

    def error(self) -> InvalidInput:
        return InvalidInput(str(self))


def decoded(value: Any) -> Any:
    """A value read from the database, or InvalidInput if it could not be decoded."""
    if isinstance(value, UndecodableJSON):
        raise value.error()
    return value


def load_stored_json(data: str | bytes) -> Any:
    """The JSON loader of every connection pgqueue opens (see config.connect)."""
    try:
        return loads_bounded(data)
    except InvalidInput as exc:
        return UndecodableJSON(str(exc))


def describe_validation_error(exc: pydantic.ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "input"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


class InputCodec:
    """Validates task inputs against the function's signature and converts them to JSON."""

    def __init__(self, task_name: str, fn: Callable[..., Any]) -> None:
        self.task_name = task_name
        self.signature = inspect.signature(fn)
        try:
            hints = get_type_hints(fn)
        except Exception as exc:  # unresolvable forward references and the like
            raise TaskDefinitionError(f"task {task_name!r}: cannot read its type hints ({exc}); "
                                      "define the types it uses at module level") from None
        params = list(self.signature.parameters.values())
        for param in params:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TaskDefinitionError(
                    f"task {task_name!r}: *args/**kwargs cannot be stored as a run input; "
                    "declare named parameters or one pydantic model parameter")
        self.model_param: str | None = None
        annotation = hints.get(params[0].name) if len(params) == 1 else None
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            self.model_param = params[0].name
            self.model: type[pydantic.BaseModel] = annotation
        else:
            fields: dict[str, Any] = {
                p.name: (hints.get(p.name, Any), ... if p.default is p.empty else p.default)
                for p in params
            }
            self.model = pydantic.create_model(
                f"{task_name}_input", __config__=pydantic.ConfigDict(extra="forbid"), **fields)
        self.output = pydantic.TypeAdapter(hints.get("return", Any))

    def _invalid(self, exc: pydantic.ValidationError, where: str = "") -> InvalidInput:
        return InvalidInput(f"invalid input for task {self.task_name!r}{where}: {describe_validation_error(exc)}")

    def encode_call(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        """JSON input of a call such as `task.enqueue(doc_id=1)`."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidInput(f"invalid arguments for task {self.task_name!r}: {exc}") from None
        if self.model_param is not None:
            return self.encode_item(bound.arguments[self.model_param])
        return self.encode_item(dict(bound.arguments))

    def encode_item(self, item: Any, where: str = "") -> str:
        """JSON input of one element of a bulk enqueue: a model instance or a mapping of arguments."""
        try:
            if isinstance(item, self.model):
                # validated again: model_construct() or attribute assignment can bypass checks
                # (from its fields directly: cheaper than a model_dump() first)
                validated = self.model.model_validate({**item.__dict__, **(item.__pydantic_extra__ or {})})
            elif isinstance(item, (str, bytes)):
                validated = self.model.model_validate_json(item)
            else:
                validated = self.model.model_validate(item)
        except pydantic.ValidationError as exc:
            raise self._invalid(exc, where) from None
        except RecursionError:
            raise InvalidInput(f"input of task {self.task_name!r}{where} nests too deeply: at most "
                               f"{MAX_JSON_DEPTH} levels of objects and arrays") from None
        try:
            return validated.model_dump_json()
        except (pydantic_core.PydanticSerializationError, RecursionError) as exc:
            # e.g. pydantic's own depth limit, deeper than MAX_JSON_DEPTH anyway
            raise InvalidInput(f"input of task {self.task_name!r}{where} cannot be stored as JSON: {exc}; "
                               f"at most {MAX_JSON_DEPTH} levels of objects and arrays") from None

    def decode(self, data: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Call arguments from a stored input (validated again: SQL may have written it)."""
        try:
            validated = self.model.model_validate(data)
        except pydantic.ValidationError as exc:
            raise self._invalid(exc) from None
        if self.model_param is not None:
            return (validated,), {}
        return (), {name: getattr(validated, name) for name in type(validated).model_fields}

    def encode_output(self, value: Any) -> Any:
        return self.output.dump_python(value, mode="json")

    def decode_output(self, data: Any) -> Any:
        return self.output.validate_python(data)


def parse_json_object(text: str, what: str = "input") -> dict[str, Any]:
    """A JSON object from text, with a clear error for anything else."""
    try:
        value = loads_bounded(text, what)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object of the task's arguments, e.g. {{\"doc_id\": 42}}")
    return value
