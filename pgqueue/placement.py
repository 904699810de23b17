"""Placement of runs on workers: labels, slot cost, sticky runs, version pinning (docs/placement.md).

A worker advertises labels (`gpu=a100`) and a code version; a task declares the labels a worker
must have (`required_labels`), those it prefers (`preferred_labels`, for `prefer_wait` seconds),
the worker slots one run takes (`slots`), whether its later attempts and wake-ups prefer the
worker of its last attempt (`sticky`), and whether a started run stays on the code version that
started it (`pin_version`). Workers write a task's placement to `pgqueue.task_placement` at start;
a trigger copies it onto each ready row (any enqueue: Python, SQL, a retry, a wake-up), and the
claim matches it in SQL (sql/functions/placement.sql). This module checks the options and writes
the registration; it does no I/O of its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import ConfigurationError, TaskDefinitionError
from .ops import Op, statement

#: most labels a worker or a task may declare (each is matched in the claim)
MAX_LABELS = 32
#: a label's name: a letter or digit first, then letters, digits or _ . -
LABEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}\Z")
#: a label's value (and a worker's version): 1 to 128 printable characters, no space
LABEL_VALUE = re.compile(r"[!-~]{1,128}\Z")
#: the default seconds a preferred or sticky run waits for the worker it prefers
DEFAULT_PREFER_WAIT = 2.0
#: most slots a task may take
MAX_SLOTS = 10000


def label_entries(what: str, labels: Mapping[str, str] | None,
                  error: type[Exception] = ConfigurationError) -> list[str]:
    """LABELS as the sorted 'name=value' entries the database matches, or `error` naming what is wrong."""
    if labels is None:
        return []
    if not isinstance(labels, Mapping):
        raise error(f"{what} take a mapping of label names to values, e.g. {{'gpu': 'a100'}}, not {labels!r}")
    if len(labels) > MAX_LABELS:
        raise error(f"{what}: {len(labels)} labels, over the limit of {MAX_LABELS}")
    entries = []
    for name, value in labels.items():
        if not isinstance(name, str) or not LABEL_NAME.match(name):
            raise error(f"{what}: label name {name!r} is not valid: use 1 to 63 characters, a letter or digit "
                        "first, then letters, digits or _ . -")
        if not isinstance(value, str) or not LABEL_VALUE.match(value):
            raise error(f"{what}: the value {value!r} of label {name!r} is not valid: use 1 to 128 printable "
                        "characters without spaces")
        entries.append(f"{name}={value}")
    return sorted(entries)


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    """`['gpu=a100', 'model=llama3']` (the CLI's repeated --label) as a mapping, checked."""
    labels: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigurationError(f"label {item!r} has no value: write it name=value, e.g. --label gpu=a100")
        if name in labels:
            raise ConfigurationError(f"label {name!r} is given twice ({name}={labels[name]}, {item})")
        labels[name] = value
    label_entries("worker labels", labels)
    return labels


def check_version(version: str | None) -> str | None:
    if version is not None and (not isinstance(version, str) or not LABEL_VALUE.match(version)):
        raise ConfigurationError(f"worker version {version!r} is not valid: use 1 to 128 printable characters "
                                 "without spaces (a release tag or a commit hash)")
    return version


def worker_claim_labels(labels: Mapping[str, str], version: str | None) -> list[str] | None:
    """What a worker claims with: its labels and '@version=V' (None when it has neither, the
    claim's cheapest form)."""
    entries = label_entries("worker labels", labels)
    if version is not None:
        entries.append(f"@version={version}")
    return entries or None


class PlacementOptions(Protocol):
    """The placement options of a task's settings (task.TaskSettings)."""

    @property
    def name(self) -> str: ...
    @property
    def required_labels(self) -> Mapping[str, str] | None: ...
    @property
    def preferred_labels(self) -> Mapping[str, str] | None: ...
    @property
    def prefer_wait(self) -> float: ...
    @property
    def slots(self) -> int: ...
    @property
    def sticky(self) -> bool: ...
    @property
    def pin_version(self) -> bool: ...


@dataclass(frozen=True)
class TaskPlacement:
    """A task's placement, as checked from its settings."""

    required: list[str]
    preferred: list[str]
    prefer_wait: float
    slots: int
    sticky: bool
    pin_version: bool

    @property
    def any(self) -> bool:
        return bool(self.required or self.preferred or self.slots > 1 or self.sticky or self.pin_version)


def task_placement(settings: PlacementOptions) -> TaskPlacement:
    """The placement options of a task, or TaskDefinitionError naming the bad one."""
    what = f"task {settings.name!r}"
    required = label_entries(f"{what}: required_labels", settings.required_labels, TaskDefinitionError)
    preferred = label_entries(f"{what}: preferred_labels", settings.preferred_labels, TaskDefinitionError)
    slots = settings.slots
    if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= MAX_SLOTS:
        raise TaskDefinitionError(f"{what}: slots must be a whole number from 1 to {MAX_SLOTS} (the worker "
                                  f"slots one run takes), not {slots!r}")
    wait = settings.prefer_wait
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= 86400:
        raise TaskDefinitionError(f"{what}: prefer_wait must be seconds from 0 to 86400, not {wait!r}")
    return TaskPlacement(required, preferred, float(wait), slots, bool(settings.sticky), bool(settings.pin_version))


def register_op(settings: Sequence[PlacementOptions]) -> Op[None]:
    """Write the placement of these tasks (and forget that of those declaring none)."""
    unplaced = []
    for s in settings:
        p = task_placement(s)
        if not p.any:
            unplaced.append(s.name)
            continue
        yield statement("placement.register", {
            "task": s.name, "required": p.required, "preferred": p.preferred, "wait": p.prefer_wait,
            "slots": p.slots, "sticky": p.sticky, "pin": p.pin_version})
    if unplaced:
        yield statement("placement.forget", {"tasks": unplaced})
