"""One exception hierarchy for everything the client raises.

Every error carries the gRPC status code (``code``, a ``grpc.StatusCode``, or None when the
error did not come from a call) and the server's message (``message``). The supervisor's
messages say what to change ("asked for 100GiB but GPU 0 ... can grant at most 79.5GiB: ask
for less"), so they are kept word for word rather than rephrased::

    ArbiterError
    ├── Unreachable       no server answers at the address (UNAVAILABLE)
    ├── LeaseRefused      a lease request the supervisor turned down
    │   └── LeaseTimeout  ... because it waited longer than max_wait (DEADLINE_EXCEEDED)
    ├── LeaseRevoked      a granted lease taken back (shutdown, ignored reclaim, overuse)
    ├── JobRefused        a video request refused before anything was queued
    └── JobFailed         a video job that ended failed or cancelled
"""

from __future__ import annotations

from typing import Any, Optional

import grpc


class ArbiterError(Exception):
    """Anything the client raises about Arbiter's servers."""

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code.name}: {message}" if code is not None else message)


class Unreachable(ArbiterError):
    """No server answered at the address: it is not running, or listens elsewhere."""


class LeaseRefused(ArbiterError):
    """The supervisor refused the lease request (a bad size, an unknown GPU, a waiter given
    up). ``code`` says which kind: INVALID_ARGUMENT, FAILED_PRECONDITION, ..."""


class LeaseTimeout(LeaseRefused, TimeoutError):
    """The request waited in the queue for longer than its ``max_wait``: no memory was free
    in time. Also a TimeoutError, so ``except TimeoutError`` catches it."""


class LeaseRevoked(ArbiterError):
    """A granted lease was taken back: the supervisor shut down, the holder did not answer a
    reclaim by its deadline, its processes used more than they held, or the stream to the
    supervisor was lost. The memory is no longer the holder's to use."""

    def __init__(self, lease_id: str, reason: str, code: Optional[grpc.StatusCode] = None) -> None:
        self.lease_id = lease_id
        self.reason = reason
        super().__init__(f"lease {lease_id} revoked: {reason}", code)


class JobRefused(ArbiterError):
    """The video request was refused before anything was queued (a size the pipeline does not
    take, an unknown pipeline, a path outside the allowed directories)."""


class JobFailed(ArbiterError):
    """A video job ended without its video: failed (``job.error`` has the reason and the tail
    of the worker's log) or cancelled. ``job`` is the final record."""

    def __init__(self, job: Any, state: str) -> None:
        self.job = job
        self.job_id = job.job_id
        self.state = state
        self.error = job.error
        super().__init__(f"job {job.job_id} {state}: {job.error}" if job.error else f"job {job.job_id} {state}")


def from_rpc(error: grpc.RpcError, kind: type = ArbiterError, what: str = "") -> ArbiterError:
    """The client's exception for a failed call: UNAVAILABLE is Unreachable whatever the call,
    DEADLINE_EXCEEDED a LeaseTimeout when `kind` is LeaseRefused, else `kind`. `what`, when
    given, says where the call went (the address), which the transport's message may not."""
    code = error.code() if hasattr(error, "code") else None
    message = error.details() if hasattr(error, "details") else str(error)
    message = message or (code.name if code is not None else str(error))
    if code == grpc.StatusCode.UNAVAILABLE:
        where = f"cannot reach an Arbiter server at {what}: " if what else ""
        return Unreachable(
            f"{where}{message} (is it running? pass its socket or address explicitly if it listens elsewhere)",
            code,
        )
    if kind is LeaseRefused and code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return LeaseTimeout(message, code)
    return kind(message, code)
