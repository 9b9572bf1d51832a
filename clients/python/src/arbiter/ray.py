"""Arbiter under Ray: Ray tasks and actors that hold a GPU memory lease on their node.

Ray schedules by resources it counts itself and never checks what a GPU really holds, so
here Ray's number is only a coarse admission hint and each node's Arbiter supervisor stays
the source of truth::

    import ray, arbiter.ray

    @arbiter.ray.leased("12GiB", priority="batch")
    def embed(batch):
        lease = arbiter.ray.current_lease()     # lease_id, gpu_uuid, bytes, check()
        ...                                     # CUDA_VISIBLE_DEVICES is the leased GPU

    @arbiter.ray.leased("20GiB")
    class Model:                                # the lease lives as long as the actor
        def __init__(self, path): ...

    ray.get(embed.remote(batch)); model = Model.remote(path)

How it fits together:

* **Each node declares, when it starts, a custom resource** ``vram_mib``: its supervisor's
  budget (the GPUs' memory it may lend, in MiB; :func:`node_resources` asks the supervisor),
  and **where its supervisor is**. Ray's custom resources are fixed once a node starts, so
  the number is a hint for placement and never updated: memory used outside Ray, or leases
  Ray does not know of, are the supervisor's to count.
* **A task or actor made by** :func:`leased` asks Ray for ``resources={"vram_mib": MiB}``
  (its bytes rounded up), so Ray places it on a node that could hold it. In the worker,
  before the body runs, it takes a real streaming lease (``Hold``, through
  :class:`arbiter.Lease`) from the supervisor of the node it landed on, over that
  supervisor's Unix socket, so the kernel tells the supervisor the Ray worker's pid and the
  worker's real GPU use is what counts. If the node is full (say, a process outside Ray
  holds memory that Ray's hint does not know of), the task waits in the supervisor's queue,
  holding its Ray slot, until the memory is free; ``max_wait`` bounds that wait
  (:class:`arbiter.LeaseTimeout`). Once granted it sets ``CUDA_VISIBLE_DEVICES`` to the
  leased GPU's UUID (CUDA takes UUIDs, whatever its device order), ``ARBITER_LEASE_ID`` and
  ``ARBITER_LEASE_BYTES`` (and, on a node whose environment has
  ``ARBITER_SIMULATED_GPU_DIR``, ``ARBITER_SIMULATED_GPU_INDEX``: what the supervisor gives
  its own workers on simulated GPUs), runs the body, restores the environment and releases.
  A task's lease is the task's; an actor's is taken in ``__init__`` and lives as long as the
  actor's process. :func:`current_lease` gives the body the lease.
* **A killed task or actor gives its memory back by itself**: ``ray.kill(actor)``,
  ``ray.cancel(ref, force=True)`` or a crash ends the worker process, which closes its Hold
  stream; the supervisor ends the lease and grants the bytes again once its own reading
  shows the process's memory free (its ledger, not Ray's, decides).

Finding the node's supervisor, in order: an explicit ``address=``; the node's Ray label
``arbiter.dev/supervisor`` (:data:`SUPERVISOR_LABEL`), read in the worker through
``ray.get_runtime_context().get_node_labels()``; the worker's environment
(``$ARBITER_SUPERVISOR``, ``$ARBITER_SUPERVISOR_SOCKET``, ``$ARBITER_SOCKET``: Ray's workers
inherit the environment their node's raylet was started with); else the default socket
(``/run/arbiter/supervisor.sock``), which is where a supervisor installed per host listens,
so a plain deployment needs neither. Labels are set through Ray's Python API
(``ray.init(labels=...)``, ``ray.cluster_utils.Cluster.add_node(labels=...)``; see
:func:`node_options`). ``ray start --labels`` and ``--labels-file`` (Ray 2.60) hold label
values to Kubernetes' syntax (63 characters of letters, digits, ``-_.``), which a socket path
or ``host:port`` does not meet, so for ``ray start`` give the address in its environment::

    ARBITER_SUPERVISOR=/run/arbiter/supervisor.sock \\
        ray start --address=HEAD:6379 --resources='{"vram_mib": 81920}'

Notes:

* Ray reuses a task's worker process for later tasks, and memory a process keeps (a CUDA
  context, a caching allocator) stays charged to it after its lease ends. So leased tasks
  default to ``max_calls=1`` (a fresh worker per task), as Ray does for its own GPU tasks.
* ``.options(resources=...)`` on the result replaces the whole resources dict, hint
  included; pass ``resources`` to :func:`leased` instead. A node without ``vram_mib``
  never runs a hinted task: pass ``hint=False`` on such a cluster.
* Do not also ask Ray for ``num_gpus``: two bookkeepers of one GPU disagree. The lease's
  ``CUDA_VISIBLE_DEVICES`` replaces Ray's while the body runs.
* Only a Unix-socket address gets the worker's memory measured; over TCP a lease counts
  by its bytes alone (see :func:`arbiter.connect`).
"""

from __future__ import annotations

import atexit
import functools
import inspect
import math
import os
import threading
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional, Union

import ray

from ._address import Address, default_supervisor_address, parse_address
from ._bytesize import Bytes, parse_bytes
from ._client import Client
from ._errors import ArbiterError
from ._lease import Lease, Priority, Reclaim, ReclaimAnswer, lease_request

#: The custom resource each node declares: the GPU memory its supervisor may lend, in MiB.
RESOURCE = "vram_mib"
#: The node label that names the node's supervisor (a socket path, ``unix:`` address or
#: ``host:port``).
SUPERVISOR_LABEL = "arbiter.dev/supervisor"

MIB = 1 << 20

_current_lock = threading.Lock()
_current: Optional[Lease] = None


def mib(bytes: Bytes) -> int:
    """`bytes` as the hint counts it: MiB, rounded up (at least 1)."""
    return max(1, math.ceil(parse_bytes(bytes) / MIB))


# The node's side ---------------------------------------------------------------------


def node_resources(address: Optional[Address] = None) -> Dict[str, float]:
    """The custom resources a Ray node declares for the supervisor at `address`:
    ``{"vram_mib": <its GPUs' budget, in MiB, rounded down>}`` (budget: what it may lend in
    all, the memory of its GPUs less the reserve and what processes without a lease use now)."""
    with Client(address) as client:
        budget = sum(gpu.budget_bytes for gpu in client.status().gpus)
    return {RESOURCE: float(budget // MIB)}


def node_labels(address: Address) -> Dict[str, str]:
    """The node labels that name the supervisor at `address` (for ``ray.init(labels=...)`` or
    ``Cluster.add_node(labels=...)``; not ``ray start --labels``, see the module's doc)."""
    return {SUPERVISOR_LABEL: str(parse_address(address, default_supervisor_address()))}


def node_options(address: Address) -> Dict[str, Any]:
    """``resources`` and ``labels`` for a Ray node whose supervisor is at `address`:
    ``Cluster.add_node(num_cpus=4, **node_options("/run/arbiter/supervisor.sock"))``."""
    return {"resources": node_resources(address), "labels": node_labels(address)}


def node_supervisor() -> str:
    """The address of this Ray node's supervisor, as a worker on it finds it: the node's
    ``arbiter.dev/supervisor`` label, else the environment's ``$ARBITER_SUPERVISOR`` (and the
    rest of :func:`arbiter.default_supervisor_address`'s rule); a socket as ``unix:/path``."""
    labels: Dict[str, Any] = {}
    if ray.is_initialized():
        labels = ray.get_runtime_context().get_node_labels() or {}
    label = labels.get(SUPERVISOR_LABEL)
    if isinstance(label, (list, tuple)):  # some Ray versions give label values as lists
        label = label[0] if label else None
    return str(parse_address(str(label) if label else None, default_supervisor_address()))


# The worker's side -------------------------------------------------------------------


def current_lease() -> Lease:
    """The lease of the leased task or actor running in this worker: its ``lease_id``,
    ``gpu_uuid``, ``gpu_index``, ``bytes``, ``check()`` and the rest of :class:`arbiter.Lease`.
    Raises ArbiterError outside one."""
    with _current_lock:
        lease = _current
    if lease is None:
        raise ArbiterError("no Arbiter lease here: call current_lease() inside an arbiter.ray.leased task or actor")
    return lease


class _Spec:
    """What a leased task or actor asks its node's supervisor for (picklable: it travels to
    the workers with the function or class)."""

    def __init__(
        self,
        bytes: int,
        holder: Optional[str],
        priority: Priority,
        preemptible: bool,
        gpu: Optional[Union[int, str]],
        max_wait: Optional[float],
        on_reclaim: Optional[Callable[[Reclaim], ReclaimAnswer]],
        cap_torch: bool,
        address: Optional[Address],
    ) -> None:
        self.bytes = bytes
        self.holder = holder
        self.priority = priority
        self.preemptible = preemptible
        self.gpu = gpu
        self.max_wait = max_wait
        self.on_reclaim = on_reclaim
        self.cap_torch = cap_torch
        self.address = address
        # Checked here, on the caller's side, rather than in a worker.
        lease_request(bytes, holder or "check", priority, preemptible, gpu, max_wait)

    def lease(self, what: str) -> Lease:
        """The lease from this node's supervisor, not yet asked for (``open()`` or ``with``
        waits for the grant)."""
        address = self.address if self.address is not None else node_supervisor()
        holder = self.holder or f"ray {what} (pid {os.getpid()})"
        request = lease_request(self.bytes, holder, self.priority, self.preemptible, self.gpu, self.max_wait)
        return Lease(Client(address), request, on_reclaim=self.on_reclaim, cap_torch=self.cap_torch, owns_client=True)


def _lease_environment(lease: Lease) -> Dict[str, str]:
    env = {
        "CUDA_VISIBLE_DEVICES": lease.gpu_uuid,
        "ARBITER_LEASE_ID": lease.lease_id,
        "ARBITER_LEASE_BYTES": str(lease.bytes),
    }
    if os.environ.get("ARBITER_SIMULATED_GPU_DIR"):
        env["ARBITER_SIMULATED_GPU_INDEX"] = str(lease.gpu_index)
    return env


@contextmanager
def _installed(lease: Lease) -> Iterator[None]:
    """The lease as the body sees it (environment, :func:`current_lease`), undone after."""
    global _current
    env = _lease_environment(lease)
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    with _current_lock:
        previous, _current = _current, lease
    try:
        yield
    finally:
        with _current_lock:
            _current = previous
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run_task(spec: _Spec, function: Callable[..., Any], name: str, args: Any, kwargs: Any) -> Any:
    with spec.lease(f"task {name}") as lease, _installed(lease):
        return function(*args, **kwargs)


def _leased_function(function: Callable[..., Any], spec: _Spec) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(function):
        raise TypeError("Ray runs no `async def` task; wrap it with asyncio.run() in a plain function")
    name = getattr(function, "__qualname__", getattr(function, "__name__", "function"))

    @functools.wraps(function)
    def task(*args: Any, **kwargs: Any) -> Any:
        return _run_task(spec, function, name, args, kwargs)

    return task


def _open_actor_lease(spec: _Spec, name: str) -> Lease:
    """An actor's lease: its process is the lease's, so its environment stays, and the lease
    ends with the process (its Hold stream closes), or at interpreter exit when it ends
    normally."""
    global _current
    lease = spec.lease(f"actor {name}").open()
    os.environ.update(_lease_environment(lease))
    with _current_lock:
        _current = lease
    atexit.register(lease.close)
    return lease


def _leased_class(cls: type, spec: _Spec) -> type:
    # What runs in the worker refers only to module-level names: the function travels by
    # value (Ray pickles the class), and they by reference.
    original_init = cls.__init__
    name = cls.__qualname__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        lease = _open_actor_lease(spec, name)
        try:
            original_init(self, *args, **kwargs)
        except BaseException:
            lease.close()
            raise

    if original_init is not object.__init__:
        __init__ = functools.wraps(original_init)(__init__)
    namespace = {"__init__": __init__, "__doc__": cls.__doc__, "__module__": cls.__module__}
    leased = type(cls.__name__, (cls,), namespace)
    leased.__qualname__ = cls.__qualname__
    return leased


def leased(
    bytes: Bytes,
    *,
    holder: Optional[str] = None,
    priority: Priority = "normal",
    preemptible: bool = False,
    gpu: Optional[Union[int, str]] = None,
    max_wait: Optional[float] = None,
    on_reclaim: Optional[Callable[[Reclaim], ReclaimAnswer]] = None,
    cap_torch: bool = False,
    address: Optional[Address] = None,
    hint: bool = True,
    **ray_options: Any,
) -> Callable[[Any], Any]:
    """A decorator, in place of ``@ray.remote``: a Ray remote function or actor class whose
    every run holds a streaming lease of `bytes` from the supervisor of the node it runs on.

    * `bytes`, `holder`, `priority`, `preemptible`, `gpu`, `max_wait`, `on_reclaim`,
      `cap_torch`: the lease's, as :func:`arbiter.lease` takes them (`on_reclaim` runs in the
      worker and must be picklable). `holder` defaults to ``ray task <name> (pid N)`` /
      ``ray actor <Class> (pid N)``.
    * `address`: the supervisor to ask, the same on every node; default: the node's own
      (see the module's doc).
    * `hint`: ask Ray for ``resources={"vram_mib": MiB}`` (default); False where nodes do
      not declare it.
    * `ray_options`: everything else ``ray.remote`` takes (``num_cpus``, ``max_retries``,
      ``scheduling_strategy``, ``resources``, ...). Tasks default to ``max_calls=1``.

    The result is what ``ray.remote`` makes (``f.remote(...)``, ``Cls.remote(...)``,
    ``.options(...)``).
    """
    spec = _Spec(
        parse_bytes(bytes), holder, priority, preemptible, gpu, max_wait, on_reclaim, cap_torch, address
    )
    options = dict(ray_options)
    if hint:
        options["resources"] = {**(options.get("resources") or {}), RESOURCE: mib(spec.bytes)}

    def decorate(target: Any) -> Any:
        if isinstance(target, (ray.remote_function.RemoteFunction, ray.actor.ActorClass)):
            raise TypeError("arbiter.ray.leased takes the place of @ray.remote: apply it to the plain function or class")
        if inspect.isclass(target):
            return ray.remote(**options)(_leased_class(target, spec)) if options else ray.remote(_leased_class(target, spec))
        if callable(target):
            task_options = {"max_calls": 1, **options}
            return ray.remote(**task_options)(_leased_function(target, spec))
        raise TypeError(f"arbiter.ray.leased decorates a function or a class, not {type(target).__name__}")

    return decorate


__all__ = [
    "MIB",
    "RESOURCE",
    "SUPERVISOR_LABEL",
    "current_lease",
    "leased",
    "mib",
    "node_labels",
    "node_options",
    "node_resources",
    "node_supervisor",
]
