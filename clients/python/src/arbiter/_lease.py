"""GPU memory leases: the streaming form (``Hold``) as a context manager, and the unary form.

A streaming lease lives exactly as long as its ``Hold`` stream: the supervisor takes the
bytes back the moment the stream closes, or the process holding it dies (its connection
closes with it), so a crash never leaks budget. That is why :class:`Lease` keeps the stream
open on a background thread for as long as the ``with`` block runs, and why it is the form to
use from a model process. The unary form (:class:`UnaryLease`) lives for a TTL renewed by
``keep_alive``, whatever becomes of the process; it suits scripts that hand a lease on.
"""

from __future__ import annotations

import datetime
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Union

import grpc
from google.protobuf.duration_pb2 import Duration

from ._bytesize import Bytes, format_bytes, parse_bytes
from ._errors import ArbiterError, LeaseRefused, LeaseRevoked, from_rpc
from ._pb import spb
from ._torch import Device, cap_torch

if TYPE_CHECKING:
    from ._client import Client

log = logging.getLogger("arbiter")

#: How long closing a lease waits for the supervisor to confirm the release, and for the
#: background thread to finish. Past it the stream is closed anyway, which also frees it.
CLOSE_TIMEOUT = 10.0

_PRIORITIES = {
    "batch": spb.PRIORITY_BATCH,
    "normal": spb.PRIORITY_NORMAL,
    "interactive": spb.PRIORITY_INTERACTIVE,
    "critical": spb.PRIORITY_CRITICAL,
}

Priority = Union[str, int]


def priority_value(priority: Priority) -> "spb.Priority":
    """A priority class as the wire carries it: "batch", "normal", "interactive",
    "critical" (or the proto's PRIORITY_* value)."""
    if isinstance(priority, str):
        key = priority.lower().removeprefix("priority_")
        if key not in _PRIORITIES:
            raise ValueError(f"unknown priority `{priority}`: use batch, normal, interactive or critical")
        return _PRIORITIES[key]
    if priority not in _PRIORITIES.values():
        raise ValueError(f"unknown priority {priority}: use batch, normal, interactive or critical")
    return spb.Priority.Value(spb.Priority.Name(priority))


def _duration(seconds: Optional[float]) -> Any:
    if seconds is None:
        return None
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {seconds}")
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def lease_request(
    bytes: Bytes,
    holder: str,
    priority: Priority = "normal",
    preemptible: bool = False,
    gpu: Optional[Union[int, str]] = None,
    max_wait: Optional[float] = None,
    ttl: Optional[float] = None,
) -> Any:
    """The wire's LeaseRequest. `gpu` is an index or a "GPU-..." uuid (None: any GPU, placed
    where it fits most tightly); `max_wait` and `ttl` are seconds."""
    if not holder:
        raise ValueError("a lease needs a holder: a name shown in the supervisor's status")
    return spb.LeaseRequest(
        holder=holder,
        gpu="" if gpu is None else str(gpu),
        bytes=parse_bytes(bytes),
        priority=priority_value(priority),
        max_wait=_duration(max_wait),
        preemptible=preemptible,
        ttl=_duration(ttl),
    )


class _ReleaseAll:
    """The type of :data:`RELEASE`."""

    def __repr__(self) -> str:
        return "arbiter.RELEASE"


#: What an ``on_reclaim`` callback returns to give the whole lease back (Release).
RELEASE = _ReleaseAll()

#: What an ``on_reclaim`` callback may return: None (give back what was asked), a number of
#: bytes to give back (0: nothing now), or RELEASE.
ReclaimAnswer = Union[None, Bytes, _ReleaseAll]


@dataclass(frozen=True)
class Reclaim:
    """The supervisor asks for bytes back (a ``ReclaimRequested`` update).

    Give back at least `bytes` before `deadline`, or the lease is revoked. Usually the lease
    is preemptible and a higher-priority request needs room (`reason` names it). When the
    reason says the holder's processes use more than their lease, the answer is to free that
    much GPU memory while keeping the lease: return 0 from the callback after freeing it.
    """

    lease_id: str
    bytes: int
    deadline: Optional[datetime.datetime]
    reason: str
    #: What the lease holds now.
    held: int


class Lease:
    """A streaming GPU memory lease; use it as a context manager (see :func:`arbiter.lease`).

    Entering opens a ``Hold`` stream and waits until the supervisor grants the lease.
    While the block runs, a background thread reads the stream:

    * ``ReclaimRequested``: calls ``on_reclaim(reclaim)`` on that thread and gives back what
      it returns (see :data:`ReclaimAnswer`): a ``Shrink`` to what remains, or a ``Release``
      when it gives back everything. Without a callback nothing is answered: the request is
      in :attr:`reclaim` for the holder to answer with :meth:`shrink` or :meth:`release`,
      and the supervisor revokes the lease at the deadline otherwise.
    * ``Revoked`` (or the stream lost after the grant: the supervisor stopped or crashed):
      marks the lease revoked. Python cannot raise into another thread, so
      :class:`LeaseRevoked` is raised in the holder's thread: by every call to
      :meth:`check` from then on, and on leaving the ``with`` block normally unless
      :meth:`check` has raised it already (a holder that caught it there has dealt with it).
      A block that is leaving with an exception of its own keeps that exception.
      :attr:`revoked` says so without raising.

    Leaving the block releases the lease: a ``Release`` the supervisor confirms (so the
    lease is off its books when the block is left), then the stream is closed.
    """

    def __init__(
        self,
        client: "Client",
        request: Any,
        on_reclaim: Optional[Callable[[Reclaim], ReclaimAnswer]] = None,
        on_queued: Optional[Callable[[int, int], None]] = None,
        cap_torch: bool = False,
        owns_client: bool = False,
    ) -> None:
        self._client = client
        self._request = request
        self._on_reclaim = on_reclaim
        self._on_queued = on_queued
        self._cap_torch = cap_torch
        self._owns_client = owns_client
        self._lock = threading.Lock()
        self._call: Any = None
        self._updates: Optional[Iterator[Any]] = None
        self._reader: Optional[threading.Thread] = None
        self._closing = False
        self._lease: Any = None
        self._reclaim: Optional[Reclaim] = None
        self._revoked: Optional[LeaseRevoked] = None
        self._revocation_raised = False
        self._released = False
        self._callback_error: Optional[BaseException] = None
        self._torch_capped = False

    # The lease as granted ------------------------------------------------------------

    @property
    def granted(self) -> Any:
        """The supervisor's latest word on the lease (the wire's ``Lease``), after a Shrink
        the shrunk one; None before the grant."""
        with self._lock:
            return self._lease

    @property
    def lease_id(self) -> str:
        return self._granted().lease_id

    @property
    def bytes(self) -> int:
        """What the lease holds now (less after a Shrink, 0 once released or revoked)."""
        with self._lock:
            if self._lease is None or self._released or self._revoked is not None:
                return 0
            return self._lease.bytes

    @property
    def gpu_uuid(self) -> str:
        return self._granted().gpu_uuid

    @property
    def gpu_index(self) -> int:
        """The GPU's index as the supervisor (NVML) numbers it, which need not be CUDA's."""
        return self._granted().gpu_index

    @property
    def reclaim(self) -> Optional[Reclaim]:
        """A reclaim request not yet answered (None when there is none, or it was withdrawn)."""
        with self._lock:
            return self._reclaim

    @property
    def revoked(self) -> bool:
        with self._lock:
            return self._revoked is not None

    @property
    def active(self) -> bool:
        """Granted and neither released nor revoked: the memory is this holder's to use."""
        with self._lock:
            return self._lease is not None and not self._released and self._revoked is None and not self._closing

    def _granted(self) -> Any:
        with self._lock:
            if self._lease is None:
                raise ArbiterError("the lease has not been granted yet: enter the `with` block first")
            return self._lease

    # Opening and closing -------------------------------------------------------------

    def __enter__(self) -> "Lease":
        self.open()
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        self.close()
        if kind is None and not self._revocation_raised:
            self._raise_revocation()

    def open(self) -> "Lease":
        """Asks for the lease and waits until it is granted (what entering the block does).

        Raises :class:`LeaseRefused` when the supervisor refuses the request,
        :class:`LeaseTimeout` when it waited longer than ``max_wait``, :class:`Unreachable`
        when no supervisor answers; the stream is closed in each case.
        """
        if self._call is not None:
            raise ArbiterError("this lease was already opened; ask for a new one")
        call = self._client._supervisor.Hold(self._request)
        self._call = call
        self._updates = iter(call)
        try:
            while True:
                try:
                    update = next(self._updates)
                except StopIteration:
                    raise LeaseRefused("the supervisor ended the request before granting it") from None
                kind = update.WhichOneof("update")
                if kind == "queued":
                    if self._on_queued is not None:
                        self._on_queued(update.queued.position, update.queued.queue_length)
                elif kind == "granted":
                    with self._lock:
                        self._lease = update.granted
                    break
                elif kind == "revoked":
                    raise LeaseRefused(f"revoked before it was granted: {update.revoked.reason}")
        except grpc.RpcError as error:
            call.cancel()
            self._finish_client()
            raise from_rpc(error, LeaseRefused, self._client.address) from None
        except BaseException:
            call.cancel()
            self._finish_client()
            raise
        if self._cap_torch:
            try:
                self._torch_capped = self.cap_torch()
            except BaseException:
                self.close()
                raise
        self._reader = threading.Thread(target=self._read, name=f"arbiter-lease-{self.lease_id}", daemon=True)
        self._reader.start()
        return self

    def close(self) -> None:
        """Gives the lease back (Release, confirmed by the supervisor within
        :data:`CLOSE_TIMEOUT`, then the stream closed) and stops the background thread.
        Idempotent; never raises: a supervisor that is gone has let go of the lease already."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            release = self._lease is not None and not self._released and self._revoked is None
            lease_id = self._lease.lease_id if self._lease is not None else ""
        if release:
            try:
                self._client._supervisor.Release(spb.ReleaseRequest(lease_id=lease_id), timeout=CLOSE_TIMEOUT)
            except grpc.RpcError as error:
                log.debug("Release of %s failed (%s); closing its stream instead", lease_id, error)
            with self._lock:
                self._released = True
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(CLOSE_TIMEOUT)
        self._finish_client()

    def _finish_client(self) -> None:
        if self._owns_client:
            self._client.close()

    # The holder's side ---------------------------------------------------------------

    def check(self) -> None:
        """Raises :class:`LeaseRevoked` (with the supervisor's reason) if the lease was
        revoked or lost since it was granted; returns otherwise. Call it between units of
        GPU work: memory used after a revocation is memory the supervisor lent to someone
        else."""
        self._raise_revocation()

    def _raise_revocation(self) -> None:
        with self._lock:
            revoked = self._revoked
            if revoked is None:
                return
            self._revocation_raised = True
            cause = self._callback_error
        if cause is not None:
            raise revoked from cause
        raise revoked

    def shrink(self, bytes: Bytes) -> int:
        """Shrinks the lease to `bytes` (what it keeps, more than 0), for a holder that freed
        memory; returns what it holds now. Answers a pending reclaim when enough goes back."""
        size = parse_bytes(bytes)
        lease_id = self.lease_id
        try:
            lease = self._client._supervisor.Shrink(
                spb.ShrinkRequest(lease_id=lease_id, bytes=size), timeout=self._client.timeout
            )
        except grpc.RpcError as error:
            raise from_rpc(error, ArbiterError, self._client.address) from None
        with self._lock:
            self._lease = lease
            if self._reclaim is not None and self._reclaim.held - lease.bytes >= self._reclaim.bytes:
                self._reclaim = None
        if self._torch_capped:
            self.cap_torch()
        return lease.bytes

    def release(self) -> None:
        """Gives the whole lease back now and closes the stream (what leaving the block
        does); the block may go on, without the memory."""
        self.close()

    def cap_torch(self, device: Optional[Device] = None) -> bool:
        """Caps PyTorch's CUDA allocator at this lease's bytes on the leased GPU (found by
        its UUID, since torch numbers devices its own way) or on `device`. False, doing
        nothing, without torch or CUDA or when the leased GPU is not visible here (a
        simulated GPU). See :func:`arbiter.cap_torch`."""
        granted = self._granted()
        return cap_torch(self.bytes, device, gpu_uuid=None if device is not None else granted.gpu_uuid)

    # The background thread -----------------------------------------------------------

    def _read(self) -> None:
        assert self._updates is not None
        try:
            for update in self._updates:
                kind = update.WhichOneof("update")
                if kind == "granted":
                    # A reclaim withdrawn: the supervisor restates the lease.
                    with self._lock:
                        self._lease = update.granted
                        self._reclaim = None
                elif kind == "reclaim":
                    self._reclaimed(update.reclaim)
                elif kind == "revoked":
                    self._lost(update.revoked.reason, None)
                    return
            self._lost("the supervisor ended the lease stream", None)
        except grpc.RpcError as error:
            self._lost(
                f"the lease stream to the supervisor failed: {error.details() or error.code().name}",
                error.code(),
            )

    def _lost(self, reason: str, code: Optional[grpc.StatusCode]) -> None:
        with self._lock:
            if self._closing or self._released or self._revoked is not None:
                return
            lease_id = self._lease.lease_id
            self._revoked = LeaseRevoked(lease_id, reason, code)
        log.warning("lease %s revoked: %s", lease_id, reason)

    def _reclaimed(self, message: Any) -> None:
        with self._lock:
            held = self._lease.bytes
        deadline = message.deadline.ToDatetime(tzinfo=datetime.timezone.utc) if message.HasField("deadline") else None
        reclaim = Reclaim(message.lease_id, message.bytes, deadline, message.reason, held)
        with self._lock:
            self._reclaim = reclaim
        log.info("reclaim requested of %s: give back %s (%s)", reclaim.lease_id, format_bytes(reclaim.bytes), reclaim.reason)
        if self._on_reclaim is None:
            return
        try:
            answer = self._on_reclaim(reclaim)
        except Exception as error:  # the holder's code: keep the thread, answer nothing
            log.exception("on_reclaim raised; the reclaim is not answered (the lease is revoked at its deadline)")
            with self._lock:
                self._callback_error = error
            return
        with self._lock:
            if self._closing or self._released or self._revoked is not None:
                return
        try:
            give = held if isinstance(answer, _ReleaseAll) else reclaim.bytes if answer is None else parse_bytes(answer)
            if give >= held:
                self._client._supervisor.Release(
                    spb.ReleaseRequest(lease_id=reclaim.lease_id), timeout=self._client.timeout
                )
                with self._lock:
                    self._released = True
                    self._reclaim = None
                log.info("released %s to answer the reclaim", reclaim.lease_id)
            elif give > 0:
                kept = self.shrink(held - give)
                log.info("shrunk %s to %s to answer the reclaim", reclaim.lease_id, format_bytes(kept))
        except (grpc.RpcError, ArbiterError, TypeError, ValueError) as error:
            log.warning("answering the reclaim of %s failed: %s", reclaim.lease_id, error)
            with self._lock:
                self._callback_error = error

    def __repr__(self) -> str:
        with self._lock:
            lease = self._lease
            state = (
                "revoked" if self._revoked is not None else
                "released" if self._released else
                "granted" if lease is not None else "not granted"
            )
        if lease is None:
            return f"<arbiter.Lease {self._request.holder!r} {state}>"
        return f"<arbiter.Lease {lease.lease_id} {format_bytes(lease.bytes)} on {lease.gpu_uuid} {state}>"


class UnaryLease:
    """A unary lease (``Acquire``): it lives for its TTL, renewed by :meth:`keep_alive`,
    whatever becomes of the process that took it. As a context manager it is released on
    exit (and its own connection, if it has one, closed). ``granted`` is the wire's
    ``Lease``."""

    def __init__(self, client: "Client", granted: Any, owns_client: bool = False) -> None:
        self._client = client
        self.granted = granted
        self._owns_client = owns_client

    @property
    def lease_id(self) -> str:
        return self.granted.lease_id

    @property
    def bytes(self) -> int:
        return self.granted.bytes

    @property
    def gpu_uuid(self) -> str:
        return self.granted.gpu_uuid

    @property
    def expires_at(self) -> Optional[datetime.datetime]:
        """When the lease ends unless renewed (UTC)."""
        if not self.granted.HasField("expires_at"):
            return None
        return self.granted.expires_at.ToDatetime(tzinfo=datetime.timezone.utc)

    def keep_alive(self) -> "UnaryLease":
        """Renews the lease for another TTL. Raises ArbiterError (NOT_FOUND) once it has
        expired or was released."""
        self.granted = self._call("KeepAlive", spb.KeepAliveRequest(lease_id=self.lease_id))
        return self

    def shrink(self, bytes: Bytes) -> int:
        """Keeps `bytes` of the lease and gives the rest back; returns what it holds now."""
        self.granted = self._call("Shrink", spb.ShrinkRequest(lease_id=self.lease_id, bytes=parse_bytes(bytes)))
        return self.granted.bytes

    def release(self) -> int:
        """Gives the whole lease back; returns the bytes returned."""
        return int(self._call("Release", spb.ReleaseRequest(lease_id=self.lease_id)).bytes_returned)

    def close(self) -> None:
        """Closes the lease's own connection (from :func:`arbiter.acquire`), leaving the
        lease to its TTL; leaving a ``with`` block releases it first."""
        if self._owns_client:
            self._client.close()

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._client._supervisor, method)(request, timeout=self._client.timeout)
        except grpc.RpcError as error:
            raise from_rpc(error, ArbiterError, self._client.address) from None

    def __enter__(self) -> "UnaryLease":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.release()
        except ArbiterError as error:
            log.debug("Release of %s on exit failed: %s", self.lease_id, error)
        finally:
            self.close()

    def __repr__(self) -> str:
        return f"<arbiter.UnaryLease {self.lease_id} {format_bytes(self.bytes)} on {self.gpu_uuid}>"
