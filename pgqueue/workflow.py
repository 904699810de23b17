"""DAG workflows: tasks with parents, whose outputs feed their children.

    ingest = app.workflow("ingest")

    @ingest.node()
    async def fetch(doc: DocRef) -> Text: ...          # a root gets the workflow's input

    @ingest.node(parents=[fetch])
    async def embed(fetch: Text) -> list[float]: ...   # parents' outputs, by parameter name

    @ingest.node(parents=[fetch])
    async def summarize(fetch: Text) -> str: ...

    @ingest.node(parents=[embed, summarize])
    async def store(embed: list[float], summarize: str) -> int: ...

    ingest.enqueue(DocRef(id=42)).result()

Each node is a task of its own (named `workflow.node`) run as a child of the workflow's run.
The workflow's run is an orchestrator: each time a node finishes it wakes, starts the nodes
whose parents have all succeeded, and suspends again (holding no worker slot). A node that
fails for good cancels the rest, fails the workflow, and starts the on-failure task.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic

from .codec import InputCodec
from .context import current_run
from .durable import SUSPENDED, Durable, raise_if_suspended
from .enqueue import EnqueueOptions, enqueue_op
from .errors import RunTakenOver, TaskDefinitionError, WorkflowFailed
from .flow import Concurrency, RateLimit
from .ops import Op, statement
from .retry import Retry
from .status import UNSUCCESSFUL, RunStatus
from .task import Task

if TYPE_CHECKING:
    from .registry import TaskRegistry

F = TypeVar("F", bound=Callable[..., Any])


def validate_dag(graph: dict[str, Sequence[str]]) -> list[str]:
    """Check that every parent exists and there is no cycle; return the nodes in a topological order."""
    for node, parents in graph.items():
        for parent in parents:
            if parent not in graph:
                raise TaskDefinitionError(f"node {node!r} has an unknown parent {parent!r}")
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == "done":
            return
        if state.get(node) == "visiting":
            cycle = [*path[path.index(node):], node]
            raise TaskDefinitionError(f"the workflow has a cycle: {' -> '.join(cycle)}")
        state[node] = "visiting"
        for parent in graph[node]:
            visit(parent, [*path, node])
        state[node] = "done"
        order.append(node)

    for node in graph:
        visit(node, [])
    return order


@dataclass
class Decision:
    """What the orchestrator does next, decided from the nodes' states (no I/O)."""

    start: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    finished: bool = False


def decide(graph: Mapping[str, Sequence[str]], states: Mapping[str, str]) -> Decision:
    failed = [node for node, status in states.items() if status in UNSUCCESSFUL]
    if failed:
        return Decision(failed=sorted(failed))
    done = {node for node, status in states.items() if status == RunStatus.SUCCEEDED}
    if len(done) == len(graph):
        return Decision(finished=True)
    start = [node for node, parents in graph.items()
             if node not in states and all(parent in done for parent in parents)]
    return Decision(start=start)


class Workflow:
    """A DAG of tasks; enqueue it like a task (`wf.enqueue(input)`)."""

    def __init__(self, registry: TaskRegistry, name: str, *, queue: str = "default",
                 on_failure: Task[Any, Any] | None = None, concurrency: Concurrency | None = None) -> None:
        self.registry = registry
        self.concurrency = concurrency
        self.name = name
        self.queue = queue
        self.on_failure = on_failure
        self.nodes: dict[str, Task[Any, Any]] = {}
        self.parents: dict[str, list[str]] = {}
        self._input_model: Any = None
        self.task: Task[Any, Any] | None = None

    def node(self, *, parents: Sequence[Task[Any, Any] | str] = (), name: str | None = None,
             retry: Retry | None = None, timeout: float | None = None,
             queue: str | None = None, concurrency: Concurrency | None = None,
             rate_limits: Sequence[RateLimit] = ()) -> Callable[[F], Task[Any, Any]]:
        """Declare a node. Parents must be declared before their children (so a cycle cannot be
        written); a node's parameters are named after its parents and receive their outputs.
        A root (no parents) receives the workflow's input."""
        def decorate(fn: F) -> Task[Any, Any]:
            node_name = name or fn.__name__
            if node_name in self.nodes:
                raise TaskDefinitionError(f"workflow {self.name!r} already has a node {node_name!r}")
            parent_names = [self._node_name(p) for p in parents]
            validate_dag({**self.parents, node_name: parent_names})
            params = list(inspect.signature(fn).parameters)
            if parent_names and sorted(params) != sorted(parent_names):
                raise TaskDefinitionError(
                    f"node {node_name!r} of workflow {self.name!r} must take one parameter per parent, named "
                    f"after it ({', '.join(sorted(parent_names))}); it takes ({', '.join(params)})")
            task = self.registry.task(name=f"{self.name}.{node_name}", queue=queue or self.queue,
                                 retry=retry, timeout=timeout, concurrency=concurrency,
                                 rate_limits=rate_limits)(fn)
            if not parent_names:
                self._set_input(task)
            self.nodes[node_name] = task
            self.parents[node_name] = parent_names
            return task
        return decorate

    def _node_name(self, parent: Task[Any, Any] | str) -> str:
        if isinstance(parent, str):
            return parent
        for node_name, task in self.nodes.items():
            if task is parent:
                return node_name
        raise TaskDefinitionError(f"{parent!r} is not a node of workflow {self.name!r}; declare it with "
                                  f"@{self.name}.node() before the nodes that depend on it")

    def _set_input(self, root: Task[Any, Any]) -> None:
        """The workflow's input is the roots' input; the orchestrator task takes the same."""
        if self.task is not None:
            return
        workflow = self

        async def orchestrate(*args: Any, **kwargs: Any) -> Any:
            ctx = current_run()
            data = json.loads(root.codec.encode_call(args, kwargs))
            result = await ctx.database().execute_async(orchestrate_op(workflow, ctx.durable(), data),
                                                         transaction=True)
            if isinstance(result, WorkflowFailed):
                raise result
            return raise_if_suspended(result)

        # the workflow takes the roots' input; its result is the leaves' output(s)
        codec = InputCodec(self.name, root.fn)
        codec.output = pydantic.TypeAdapter(Any)
        self.task = self.registry.register(orchestrate, name=self.name, queue=self.queue,
                                       retry=Retry(max_attempts=1), codec=codec, concurrency=self.concurrency)

    def _require_task(self) -> Task[Any, Any]:
        if self.task is None:
            raise TaskDefinitionError(f"workflow {self.name!r} has no root node yet")
        return self.task

    def enqueue(self, *args: Any, **kwargs: Any) -> Any:
        return self._require_task().enqueue(*args, **kwargs)

    async def enqueue_async(self, *args: Any, **kwargs: Any) -> Any:
        return await self._require_task().enqueue_async(*args, **kwargs)

    def options(self, **options: Any) -> Any:
        return self._require_task().options(**options)

    def leaves(self) -> list[str]:
        with_children = {p for parents in self.parents.values() for p in parents}
        return [node for node in self.parents if node not in with_children]


def orchestrate_op(workflow: Workflow, durable: Durable, data: dict[str, Any]) -> Op[object]:
    """One wake-up of the orchestrator, in one transaction that holds the workflow run's row
    lock: a node finishing meanwhile waits for it, then sees the run waiting and wakes it."""
    fence = durable.fence
    yield statement("durable.pending_children", fence)
    rows = yield statement("durable.workflow_nodes", fence, row=dict)
    nodes = {row["workflow_node"]: row for row in rows}  # the nodes started so far
    decision = decide(workflow.parents, {node: row["status"] for node, row in nodes.items()})
    if decision.finished:
        leaves = workflow.leaves()
        results = {leaf: nodes[leaf]["result"] for leaf in leaves}
        return results[leaves[0]] if len(leaves) == 1 else results
    if decision.failed:
        yield statement("durable.cancel_children", fence)
        errors = {node: nodes[node]["error"] or {"type": nodes[node]["status"]} for node in decision.failed}
        if workflow.on_failure is not None:
            report = json.dumps({"workflow_run": fence["run"], "errors": errors})
            yield from enqueue_op(workflow.on_failure.name, [report], EnqueueOptions(),
                                  default_queue=workflow.on_failure.settings.queue,
                                  default_priority=workflow.on_failure.settings.priority,
                                  idempotency_keys=[f"{fence['run']}/on_failure"],
                                  flow=workflow.on_failure.flow_columns([report]))
        detail = "; ".join(f"{node}: {e.get('type')}: {e.get('message', '')}" for node, e in errors.items())
        return WorkflowFailed(f"workflow {workflow.name!r} failed at {', '.join(decision.failed)} ({detail})")
    created = 0
    for node in decision.start:
        parents = workflow.parents[node]
        payload: dict[str, Any] = data if not parents else {parent: nodes[parent]["result"] for parent in parents}
        task = workflow.nodes[node]
        text = json.dumps(payload)
        [(child, was_created)] = yield from enqueue_op(
            task.name, [text], EnqueueOptions(), default_queue=task.settings.queue,
            default_priority=task.settings.priority, idempotency_keys=[f"{fence['run']}/{node}"],
            parent_id=int(fence["run"]), flow=task.flow_columns([text]))
        yield statement("durable.mark_node", {"node": node, "child": child})
        created += was_created
    if created and not (yield statement("durable.add_children", {**fence, "n": created})):
        raise RunTakenOver(f"run {fence['run']} is no longer running here")
    yield statement("durable.wake_on_each_child", fence)
    waiting_for = len(workflow.nodes) - len(nodes)
    yield from durable.suspend_op(RunStatus.WAITING, None, f"workflow waiting for {waiting_for} node(s)")
    return SUSPENDED
