"""The supervisor's client: leases, status and video jobs over one gRPC channel."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Iterable, Iterator, List, Optional, Union

import grpc

from ._address import Address, default_supervisor_address, parse_address
from ._bytesize import Bytes
from ._errors import ArbiterError, JobFailed, JobRefused, LeaseRefused, from_rpc
from ._lease import Lease, Priority, Reclaim, ReclaimAnswer, UnaryLease, lease_request
from ._pb import spb, spb_grpc, vpb, vpb_grpc
from ._video import describe, is_final, list_request, state_name, video_request


def default_holder() -> str:
    """The holder name a lease gets when none is given: the program and its pid, which is
    what an operator reading ``arbiter-supervisor status`` needs to find it."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return f"{program or 'python'} (pid {os.getpid()})"


class Client:
    """A connection to the supervisor (see :func:`arbiter.connect`).

    `timeout` bounds each quick call (status, release, cancel, ...), in seconds; calls that
    wait by design (a lease in the queue, a job's progress) take their own bound instead.
    """

    def __init__(self, address: Optional[Address] = None, timeout: float = 30.0) -> None:
        self._target = parse_address(address, default_supervisor_address())
        self.timeout = timeout
        # A plain channel: the supervisor serves stock gRPC on its socket and on TCP.
        self.channel = grpc.insecure_channel(self._target.target)
        self._supervisor = spb_grpc.SupervisorStub(self.channel)
        self._video = vpb_grpc.VideoStub(self.channel)

    @property
    def address(self) -> str:
        """Where the client connects: ``unix:/path`` or ``host:port``."""
        return str(self._target)

    @property
    def unix(self) -> bool:
        """Over the Unix socket, where the supervisor knows this process's pid and uid."""
        return self._target.unix

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, stub: Any, method: str, request: Any, kind: type = ArbiterError, timeout: Any = "default") -> Any:
        try:
            return getattr(stub, method)(request, timeout=self.timeout if timeout == "default" else timeout)
        except grpc.RpcError as error:
            raise from_rpc(error, kind, self.address) from None

    # Supervisor ----------------------------------------------------------------------

    def ping(self) -> str:
        """The supervisor's version; raises Unreachable when none answers."""
        return self._call(self._supervisor, "Ping", spb.PingRequest()).version

    def status(self) -> Any:
        """Every GPU's capacity, budget, grants and processes, and the queue (the wire's
        SupervisorStatus)."""
        return self._call(self._supervisor, "GetStatus", spb.GetStatusRequest())

    def leases(self, gpu: Optional[Union[int, str]] = None) -> List[Any]:
        """Every lease granted now (on `gpu`, an index or uuid, when given)."""
        request = spb.ListLeasesRequest(gpu="" if gpu is None else str(gpu))
        return list(self._call(self._supervisor, "ListLeases", request).leases)

    def events(self, samples: bool = False, timeout: Optional[float] = None) -> Iterator[Any]:
        """The operators' feed (the wire's Event messages, ``event.WhichOneof("kind")``:
        granted, released, reclaim, revoked, wait_started, ...; with `samples` every NVML
        sample too), from now on. `timeout` (seconds) bounds the whole watch, after which
        ArbiterError (DEADLINE_EXCEEDED) is raised; ``close()`` on the iterator ends it."""
        yield from self._stream(self._supervisor.WatchEvents(spb.WatchEventsRequest(include_samples=samples), timeout=timeout))

    def _stream(self, call: Any, kind: type = ArbiterError) -> Iterator[Any]:
        """A server stream's messages; the call is cancelled when the iterator is closed
        (or dropped) before the stream ends, so the server stops sending at once."""
        try:
            yield from call
        except grpc.RpcError as error:
            raise from_rpc(error, kind, self.address) from None
        finally:
            call.cancel()

    def lease(
        self,
        bytes: Bytes = "8GiB",
        holder: Optional[str] = None,
        priority: Priority = "normal",
        preemptible: bool = False,
        gpu: Optional[Union[int, str]] = None,
        max_wait: Optional[float] = None,
        on_reclaim: Optional[Callable[[Reclaim], ReclaimAnswer]] = None,
        on_queued: Optional[Callable[[int, int], None]] = None,
        cap_torch: bool = False,
    ) -> Lease:
        """A streaming lease on this connection, to use as ``with client.lease(...) as l:``;
        see :func:`arbiter.lease`."""
        request = lease_request(bytes, holder or default_holder(), priority, preemptible, gpu, max_wait)
        return Lease(self, request, on_reclaim=on_reclaim, on_queued=on_queued, cap_torch=cap_torch)

    def acquire(
        self,
        bytes: Bytes,
        holder: Optional[str] = None,
        priority: Priority = "normal",
        preemptible: bool = False,
        gpu: Optional[Union[int, str]] = None,
        max_wait: Optional[float] = None,
        ttl: Optional[float] = None,
    ) -> UnaryLease:
        """A unary lease: waits until granted (at most `max_wait` seconds), then lives for
        `ttl` seconds (default: the supervisor's, 30 s) unless renewed with ``keep_alive``.
        Not tied to this process: use :meth:`lease` for memory this process itself uses.
        Raises LeaseRefused or LeaseTimeout like :func:`arbiter.lease`."""
        request = lease_request(bytes, holder or default_holder(), priority, preemptible, gpu, max_wait, ttl)
        return UnaryLease(self, self._call(self._supervisor, "Acquire", request, LeaseRefused, timeout=None))

    # Video jobs ----------------------------------------------------------------------

    def submit(self, prompt: str, **request: Any) -> str:
        """Submits a video job and returns its id at once (the job is persisted and queued
        for a lease). The keywords are :func:`arbiter.video_request`'s. Raises JobRefused,
        naming the field and the rule, for a request the pipeline does not take."""
        reply = self._call(self._video, "Submit", video_request(prompt, **request), JobRefused)
        return reply.job_id

    def get(self, job_id: str) -> Any:
        """The job's record now (the wire's Job)."""
        return self._call(self._video, "Get", vpb.GetJobRequest(job_id=job_id))

    def watch(self, job_id: str, timeout: Optional[float] = None) -> Iterator[Any]:
        """The job now, then again at every change of state or progress, ending after a
        final state (succeeded, failed, cancelled). `timeout` (seconds) bounds the whole
        watch: past it ArbiterError (DEADLINE_EXCEEDED) is raised, and the job goes on."""
        yield from self._stream(self._video.Watch(vpb.GetJobRequest(job_id=job_id), timeout=timeout))

    def generate(
        self,
        prompt: str,
        *,
        on_update: Optional[Callable[[Any], None]] = None,
        timeout: Optional[float] = None,
        **request: Any,
    ) -> Any:
        """Submits a video job and follows it to its end, as ``arbiter-supervisor generate``
        does (one ``Generate`` stream: Submit and Watch in one call). Returns the finished
        job: ``job.result.video_path`` is the video, ``job.result.metadata_path`` its
        metadata. `on_update` is called with every update (``arbiter.describe(job)`` makes a
        line of one).

        Raises JobRefused when the request is refused before anything is queued, JobFailed
        (with the job's error and the tail of its log) when the job fails or is cancelled,
        and ArbiterError (DEADLINE_EXCEEDED) when `timeout` seconds pass first: the job goes
        on then (``cancel`` it if it must stop).
        """
        job = None
        call = self._video.Generate(video_request(prompt, **request), timeout=timeout)
        try:
            for job in call:
                if on_update is not None:
                    on_update(job)
        except grpc.RpcError as error:
            # Nothing came back: the request itself was refused. Later: the watch failed.
            raise from_rpc(error, JobRefused if job is None else ArbiterError, self.address) from None
        finally:
            call.cancel()
        if job is None:
            raise ArbiterError("the supervisor ended the Generate stream without a job")
        if job.state != vpb.JOB_STATE_SUCCEEDED:
            raise JobFailed(job, state_name(job))
        return job

    def cancel(self, job_id: str) -> Any:
        """Stops a queued or running job (its worker's process group gets SIGTERM, then
        SIGKILL); returns its record. Cancelling a finished job changes nothing."""
        return self._call(self._video, "Cancel", vpb.GetJobRequest(job_id=job_id))

    def jobs(self, states: Optional[Iterable[Union[str, int]]] = None, limit: int = 0) -> List[Any]:
        """Jobs, newest first: only those in `states` ("queued", "running", ...) when given;
        at most `limit` (0: the supervisor's 100)."""
        return list(self._call(self._video, "List", list_request(states, limit)).jobs)

    def __repr__(self) -> str:
        return f"<arbiter.Client {self.address}>"


__all__ = ["Client", "default_holder", "describe", "is_final"]
