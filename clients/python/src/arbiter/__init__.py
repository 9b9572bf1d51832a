"""Arbiter's Python client: GPU memory leases, video jobs and speech, over gRPC.

Ask the supervisor before touching the GPU, and keep within what it lends::

    import arbiter

    with arbiter.lease("8GiB", holder="my-model", cap_torch=True) as lease:
        model = load_model().cuda()      # at most lease.bytes, and torch is capped there
        for batch in batches:
            lease.check()                # raises LeaseRevoked once the lease is gone
            model(batch)
    # leaving the block gave the memory back

The functions here each open a connection for one use; :func:`connect` gives a
:class:`Client` to make several calls on one. Addresses are the supervisor's (or
arbiter-tts's) Unix socket by default, found as the Rust binaries find it, or ``host:port``
for TCP. The wire is generated at build time from the repository's ``proto/``; its message
modules are ``arbiter.supervisor.v1.supervisor_pb2``, ``arbiter.video.v1.video_pb2`` and
``arbiter.tts.v1.tts_pb2``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Iterator, List, Optional, Union

from ._address import Address, default_supervisor_address, default_tts_address, runtime_dir
from ._bytesize import Bytes, format_bytes, parse_bytes
from ._client import Client, default_holder
from ._errors import (
    ArbiterError,
    JobFailed,
    JobRefused,
    LeaseRefused,
    LeaseRevoked,
    LeaseTimeout,
    Unreachable,
)
from ._lease import RELEASE, Lease, Priority, Reclaim, ReclaimAnswer, UnaryLease, lease_request
from ._torch import cap_torch, memory_fraction
from ._tts import Speech, Tts
from ._video import FINAL_STATES, describe, is_final, state_name, video_request

__version__ = "0.1.0"

# A library's logger: silent unless the application configures logging ("arbiter" logs
# grants, reclaims and revocations).
logging.getLogger("arbiter").addHandler(logging.NullHandler())


def connect(address: Optional[Address] = None, timeout: float = 30.0) -> Client:
    """A client of the supervisor at `address`: a Unix socket path (``/run/...``,
    ``unix:/path``, a ``pathlib.Path``) or ``host:port`` for TCP. None: ``$ARBITER_SUPERVISOR``,
    ``$ARBITER_SUPERVISOR_SOCKET`` or ``$ARBITER_SOCKET`` when set, else the default socket,
    ``$XDG_RUNTIME_DIR/arbiter/supervisor.sock`` or ``/run/arbiter/supervisor.sock`` (the
    same rule as ``arbiter-supervisor`` and ``arbiter-tts``).

    Prefer the socket: over it the supervisor knows this process's pid, so a lease is
    counted against what the process really uses and returned the moment it dies. Over TCP
    a lease is counted by its bytes alone. Connecting is lazy: an unreachable address shows
    up as :class:`Unreachable` on the first call.
    """
    return Client(address, timeout)


def lease(
    bytes: Bytes = "8GiB",
    holder: Optional[str] = None,
    priority: Priority = "normal",
    preemptible: bool = False,
    gpu: Optional[Union[int, str]] = None,
    max_wait: Optional[float] = None,
    on_reclaim: Optional[Callable[[Reclaim], ReclaimAnswer]] = None,
    address: Optional[Address] = None,
    *,
    on_queued: Optional[Callable[[int, int], None]] = None,
    cap_torch: bool = False,
) -> Lease:
    """A streaming GPU memory lease, held for the length of a ``with`` block.

    * `bytes`: an int or a size such as "8GiB" or "512MiB" (the supervisor's units).
    * `holder`: the name the supervisor's status shows (default: the program and its pid).
    * `priority`: "batch" < "normal" < "interactive" < "critical"; a waiter gains a class for
      every aging interval it waits.
    * `preemptible`: this holder agrees to give memory back when a higher class needs it;
      `on_reclaim` is then called with a :class:`Reclaim`, on the lease's background thread,
      and must free GPU memory before it returns (``torch.cuda.empty_cache()`` after dropping
      tensors). What it returns is given back: None what was asked, a number of bytes (0:
      nothing now), or :data:`RELEASE` the whole lease; a Shrink, or a Release once it is
      everything. After a Release the lease is no longer :attr:`Lease.active` (and
      :meth:`Lease.check` does not raise: the holder chose it).
    * `gpu`: an index or "GPU-..." uuid; None places the lease where it fits most tightly.
    * `max_wait`: seconds to wait in the queue before :class:`LeaseTimeout`; None waits until
      granted.
    * `on_queued(position, queue_length)`: told while the request waits.
    * `cap_torch`: cap PyTorch's allocator at the lease once granted (and after each
      Shrink): see :meth:`Lease.cap_torch`.

    Entering the block waits for the grant and raises :class:`LeaseRefused` (with the
    supervisor's code and message) or :class:`LeaseTimeout` if there is none; leaving it
    gives the lease back. A revocation is raised as :class:`LeaseRevoked` at the next
    :meth:`Lease.check` or on leaving the block. The lease has its own connection, closed
    with it.
    """
    client = Client(address)
    request = lease_request(bytes, holder or default_holder(), priority, preemptible, gpu, max_wait)
    return Lease(client, request, on_reclaim=on_reclaim, on_queued=on_queued, cap_torch=cap_torch, owns_client=True)


def acquire(
    bytes: Bytes,
    holder: Optional[str] = None,
    priority: Priority = "normal",
    preemptible: bool = False,
    gpu: Optional[Union[int, str]] = None,
    max_wait: Optional[float] = None,
    ttl: Optional[float] = None,
    address: Optional[Address] = None,
) -> UnaryLease:
    """A unary lease (``Acquire``): granted once there is room, then alive for `ttl`
    seconds unless renewed with ``keep_alive()``, whatever becomes of this process. Release
    it with ``release()`` or a ``with`` block. For memory this process uses itself,
    :func:`lease` is safer: it is returned the moment the process dies."""
    client = Client(address)
    try:
        granted = client.acquire(bytes, holder, priority, preemptible, gpu, max_wait, ttl).granted
    except BaseException:
        client.close()
        raise
    return UnaryLease(client, granted, owns_client=True)


def status(address: Optional[Address] = None) -> Any:
    """The supervisor's status (the wire's SupervisorStatus): every GPU's budget, grants and
    processes, and the queue."""
    with Client(address) as client:
        return client.status()


def leases(address: Optional[Address] = None) -> List[Any]:
    """Every lease the supervisor has granted now."""
    with Client(address) as client:
        return client.leases()


def submit(prompt: str, address: Optional[Address] = None, **request: Any) -> str:
    """Submits a video job; returns its id at once. See :meth:`Client.submit` and
    :func:`video_request` for the keywords."""
    with Client(address) as client:
        return client.submit(prompt, **request)


def get(job_id: str, address: Optional[Address] = None) -> Any:
    """A video job's record now."""
    with Client(address) as client:
        return client.get(job_id)


def watch(job_id: str, address: Optional[Address] = None, timeout: Optional[float] = None) -> Iterator[Any]:
    """A job's updates until it ends; see :meth:`Client.watch`."""
    with Client(address) as client:
        yield from client.watch(job_id, timeout)


def generate(
    prompt: str,
    address: Optional[Address] = None,
    *,
    on_update: Optional[Callable[[Any], None]] = None,
    timeout: Optional[float] = None,
    **request: Any,
) -> Any:
    """Submits a video job and waits for it; returns the finished job
    (``job.result.video_path``) or raises JobFailed. See :meth:`Client.generate`."""
    with Client(address) as client:
        return client.generate(prompt, on_update=on_update, timeout=timeout, **request)


def cancel(job_id: str, address: Optional[Address] = None) -> Any:
    """Stops a queued or running job; returns its record."""
    with Client(address) as client:
        return client.cancel(job_id)


def jobs(
    states: Optional[Iterable[Union[str, int]]] = None, limit: int = 0, address: Optional[Address] = None
) -> List[Any]:
    """Video jobs, newest first (see :meth:`Client.jobs`)."""
    with Client(address) as client:
        return client.jobs(states, limit)


def say(
    text: str,
    voice: Optional[str] = None,
    out: Any = "out.wav",
    address: Optional[Address] = None,
) -> Speech:
    """Speaks `text` through arbiter-tts and writes a WAV file to `out`; returns a
    :class:`Speech` with the timings (first audio, total). `address`: the service's socket
    (default ``$ARBITER_TTS_SOCKET``, else ``$XDG_RUNTIME_DIR/arbiter/tts.sock`` or
    ``/run/arbiter/tts.sock``) or ``host:port``."""
    with Tts(address) as tts:
        return tts.say(text, voice, out)


def voices(address: Optional[Address] = None) -> List[Any]:
    """The voices arbiter-tts serves."""
    with Tts(address) as tts:
        return tts.voices()


__all__ = [
    "RELEASE",
    "Address",
    "ArbiterError",
    "Bytes",
    "Client",
    "FINAL_STATES",
    "JobFailed",
    "JobRefused",
    "Lease",
    "LeaseRefused",
    "LeaseRevoked",
    "LeaseTimeout",
    "Priority",
    "Reclaim",
    "ReclaimAnswer",
    "Speech",
    "Tts",
    "UnaryLease",
    "Unreachable",
    "acquire",
    "cancel",
    "cap_torch",
    "connect",
    "default_supervisor_address",
    "default_tts_address",
    "describe",
    "format_bytes",
    "generate",
    "get",
    "is_final",
    "jobs",
    "lease",
    "leases",
    "memory_fraction",
    "parse_bytes",
    "runtime_dir",
    "say",
    "state_name",
    "status",
    "submit",
    "video_request",
    "voices",
    "watch",
]
