"""Leases from Python against the real supervisor, over its Unix socket and over TCP:
granted and released, queued behind another, reclaimed through the callback, revoked at
shutdown, refused; and the unary form. What is asserted is what the supervisor recorded
(its status and lease list) and what the holder was told, never how fast."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import List

import grpc
import pytest
from conftest import GIB, SOON, Supervisor, eventually

import arbiter


def lease_of(client: arbiter.Client, holder: str):  # type: ignore[no-untyped-def]
    return next((lease for lease in client.leases() if lease.holder == holder), None)


def gpu(client: arbiter.Client, index: int):  # type: ignore[no-untyped-def]
    return next(g for g in client.status().gpus if g.index == index)


def test_a_lease_is_granted_shown_in_status_and_released_on_exit(supervisor: Supervisor, transport: str) -> None:
    observer = supervisor.client()
    with arbiter.lease("6GiB", holder="py-model", gpu=0, address=supervisor.address(transport)) as lease:
        assert lease.active
        assert lease.bytes == 6 * GIB
        assert lease.gpu_index == 0
        assert lease.gpu_uuid.startswith("GPU-")
        listed = lease_of(observer, "py-model")
        assert listed is not None, observer.leases()
        assert listed.lease_id == lease.lease_id
        assert listed.bytes == 6 * GIB
        assert listed.form == arbiter.supervisor.v1.supervisor_pb2.LEASE_FORM_STREAM
        assert gpu(observer, 0).granted_bytes == 6 * GIB
        if transport == "unix":
            # The kernel told the supervisor who holds it: this process.
            assert listed.pid == os.getpid()
            assert listed.measured
        else:
            assert not listed.HasField("pid")
            assert not listed.measured
        lease.check()  # not revoked: returns
    # Leaving the block released it, confirmed before the block was left.
    assert not lease.active
    assert lease_of(observer, "py-model") is None
    assert gpu(observer, 0).granted_bytes == 0
    observer.close()


def test_a_second_lease_waits_and_is_granted_when_the_first_ends(supervisor: Supervisor, transport: str) -> None:
    address = supervisor.address(transport)
    observer = supervisor.client()
    queued: List[tuple] = []
    granted = threading.Event()
    second_id: List[str] = []
    done = threading.Event()
    failure: List[BaseException] = []

    def second() -> None:
        try:
            with arbiter.lease("8GiB", holder="second", gpu=0, max_wait=SOON, address=address,
                               on_queued=lambda position, length: queued.append((position, length))) as lease:
                second_id.append(lease.lease_id)
                granted.set()
                done.wait(SOON)
        except BaseException as error:  # reported by the test's thread
            failure.append(error)
            granted.set()

    with arbiter.lease("8GiB", holder="first", gpu=0, address=address) as first:
        thread = threading.Thread(target=second, daemon=True)
        thread.start()
        waiter = eventually("the second lease to wait in the queue",
                            lambda: next((w for w in observer.status().queue if w.holder == "second"), None))
        assert waiter.position == 1
        assert waiter.bytes == 8 * GIB
        assert not granted.is_set(), "8GiB + 8GiB do not fit on 10GiB"
        assert lease_of(observer, "first").lease_id == first.lease_id
    assert granted.wait(SOON), "the second lease was granted once the first ended"
    assert not failure, failure
    assert queued and queued[0] == (1, 1), queued
    listed = observer.leases()
    assert [lease.holder for lease in listed] == ["second"], listed
    assert listed[0].lease_id == second_id[0]
    assert not observer.status().queue
    done.set()
    thread.join(SOON)
    assert not thread.is_alive()
    assert not observer.leases()
    observer.close()


def test_a_reclaim_is_answered_through_the_callback(supervisor: Supervisor, transport: str) -> None:
    reclaims: List[arbiter.Reclaim] = []
    threads: List[str] = []

    def give_back(reclaim: arbiter.Reclaim) -> None:
        # A holder frees GPU memory here (drop tensors, torch.cuda.empty_cache()); None
        # gives back exactly what was asked.
        reclaims.append(reclaim)
        threads.append(threading.current_thread().name)

    client = arbiter.connect(supervisor.address(transport))
    with client.lease("8GiB", holder="batch-job", priority="batch", preemptible=True, gpu=0,
                      on_reclaim=give_back) as lease:
        # A critical request that cannot fit beside it: the supervisor asks the batch holder.
        urgent = client.acquire("6GiB", holder="urgent", priority="critical", gpu=0, max_wait=SOON)
        assert urgent.bytes == 6 * GIB
        # The Shrink's reply reaches the holder's thread about when the grant reaches ours.
        eventually("the holder to see its lease shrunk", lambda: lease.bytes == 4 * GIB)
        assert len(reclaims) == 1, reclaims
        reclaim = reclaims[0]
        assert reclaim.lease_id == lease.lease_id
        assert reclaim.held == 8 * GIB
        assert reclaim.bytes == 4 * GIB, "what the critical request lacked: 6GiB - (10GiB - 8GiB)"
        assert reclaim.reason
        assert reclaim.deadline is not None
        assert threads[0] != threading.main_thread().name, "the callback runs on the lease's thread"
        # Given back with a Shrink: the batch holder keeps the rest.
        assert lease.active
        assert lease.reclaim is None
        listed = lease_of(client, "batch-job")
        assert listed.bytes == 4 * GIB
        assert listed.preemptible
        assert gpu(client, 0).granted_bytes == 10 * GIB
        lease.check()
        urgent.release()
    assert not client.leases()
    client.close()


def test_a_reclaim_answered_with_release_ends_the_lease_without_an_error(supervisor: Supervisor) -> None:
    client = supervisor.client()
    with client.lease("8GiB", holder="offloader", priority="batch", preemptible=True, gpu=0,
                      on_reclaim=lambda reclaim: arbiter.RELEASE) as lease:
        urgent = client.acquire("6GiB", holder="urgent", priority="critical", gpu=0, max_wait=SOON)
        assert lease_of(client, "offloader") is None
        eventually("the holder to see its lease released", lambda: not lease.active)
        assert lease.bytes == 0
        lease.check()  # the holder chose to give it back: no revocation
        urgent.release()
    client.close()


def test_without_a_callback_a_reclaim_waits_for_the_holder_and_can_be_withdrawn(supervisor: Supervisor) -> None:
    client = supervisor.client()
    with client.lease("8GiB", holder="quiet", priority="batch", preemptible=True, gpu=0) as lease:
        # The supervisor's feed says what it asked and withdrew.
        feed: List[str] = []

        def watch() -> None:
            for event in client.events(timeout=SOON):
                feed.append(event.WhichOneof("kind"))
                if feed[-1] == "reclaim_withdrawn":
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        # The critical request gives up before the holder answers (the grace is 10 s):
        # the supervisor withdraws its reclaim and restates the lease.
        # The feed sends what happens from the moment it is watched: a grant on GPU 1 shows
        # when that is.
        def watched() -> bool:
            client.acquire("1GiB", holder="marker", gpu=1, ttl=30).release()
            return "granted" in feed
        eventually("the feed to be watched", watched, every=0.2)
        with pytest.raises(arbiter.LeaseTimeout):
            client.acquire("6GiB", holder="impatient", priority="critical", gpu=0, max_wait=1.0)
        watcher.join(SOON)
        assert "reclaim_withdrawn" in feed, feed
        assert "reclaim" in feed, feed
        eventually("the holder to hear the lease restated", lambda: lease.reclaim is None)
        assert lease.active and lease.bytes == 8 * GIB
        # Asked again, the holder answers by hand.
        results: List[arbiter.UnaryLease] = []
        waiter = threading.Thread(target=lambda: results.append(
            client.acquire("6GiB", holder="urgent", priority="critical", gpu=0, max_wait=SOON)), daemon=True)
        waiter.start()
        reclaim = eventually("the reclaim to reach the holder", lambda: lease.reclaim)
        assert reclaim.bytes == 4 * GIB and reclaim.held == 8 * GIB
        assert lease.shrink(reclaim.held - reclaim.bytes) == 4 * GIB
        assert lease.reclaim is None, "a Shrink of what was asked answers it"
        waiter.join(SOON)
        assert results and results[0].bytes == 6 * GIB
        results[0].release()
    client.close()


def test_a_callback_that_fails_leaves_the_reclaim_unanswered_and_the_lease_is_revoked(
    start_supervisor,  # type: ignore[no-untyped-def]
) -> None:
    supervisor = start_supervisor(config='[lease]\nreclaim_grace = "1s"\n')
    client = supervisor.client()

    def broken(reclaim: arbiter.Reclaim) -> None:
        raise RuntimeError("could not free the memory")

    with pytest.raises(arbiter.LeaseRevoked) as raised:
        with client.lease("8GiB", holder="stubborn", priority="batch", preemptible=True, gpu=0,
                          on_reclaim=broken) as lease:
            # Granted once the unanswered reclaim's grace is over and the lease revoked.
            urgent = client.acquire("6GiB", holder="urgent", priority="critical", gpu=0, max_wait=SOON)
            eventually("the holder to hear of the revocation", lambda: lease.revoked)
            urgent.release()
            lease.check()
    assert raised.value.lease_id
    assert isinstance(raised.value.__cause__, RuntimeError)
    client.close()


def test_shutdown_revokes_the_lease_and_check_raises_with_the_reason(supervisor: Supervisor, transport: str) -> None:
    lease = arbiter.lease("2GiB", holder="py-revoked", address=supervisor.address(transport))
    with pytest.raises(arbiter.LeaseRevoked) as raised:
        with lease:
            supervisor.terminate()  # SIGTERM: the supervisor revokes every lease
            eventually("the holder to hear of the revocation", lambda: lease.revoked)
            assert not lease.active
            lease.check()
            pytest.fail("check() should have raised")
    assert raised.value.lease_id
    assert "shutting down" in raised.value.reason, raised.value.reason
    assert supervisor.process.wait(SOON) == 0


def test_a_revocation_is_raised_on_leaving_the_block_unless_check_raised_it(start_supervisor) -> None:  # type: ignore[no-untyped-def]
    def revoked_inside(lease: arbiter.Lease, supervisor: Supervisor) -> None:
        supervisor.terminate()
        eventually("the holder to hear of the revocation", lambda: lease.revoked)

    # Never checked: raised when the block is left.
    supervisor = start_supervisor()
    lease = arbiter.lease("2GiB", holder="py-unchecked", address=supervisor.unix)
    with pytest.raises(arbiter.LeaseRevoked, match="shutting down"):
        with lease:
            revoked_inside(lease, supervisor)

    # Raised by check() and handled there: leaving the block says nothing more.
    supervisor = start_supervisor()
    with arbiter.lease("2GiB", holder="py-handled", address=supervisor.unix) as lease:
        revoked_inside(lease, supervisor)
        with pytest.raises(arbiter.LeaseRevoked):
            lease.check()
        with pytest.raises(arbiter.LeaseRevoked):
            lease.check()  # and again, for as long as it is asked
    assert lease.revoked

    # A block leaving with an exception of its own keeps it.
    supervisor = start_supervisor()
    lease = arbiter.lease("2GiB", holder="py-own-error", address=supervisor.unix)
    with pytest.raises(KeyError):
        with lease:
            revoked_inside(lease, supervisor)
            raise KeyError("the block's own")


def test_refusals_carry_the_code_and_the_supervisors_message(supervisor: Supervisor, transport: str) -> None:
    address = supervisor.address(transport)
    with pytest.raises(arbiter.LeaseRefused) as raised:
        with arbiter.lease("100GiB", holder="greedy", gpu=0, address=address):
            pytest.fail("granted 100GiB on a 10GiB GPU")
    assert raised.value.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
    assert "at most" in raised.value.message, raised.value.message

    with pytest.raises(arbiter.LeaseRefused) as raised:
        with arbiter.lease("1GiB", holder="lost", gpu="GPU-00000000-0000-0000-0000-000000000000", address=address):
            pass
    assert raised.value.code is not None and raised.value.message

    # Waiting past max_wait: a LeaseTimeout (also a TimeoutError), and no waiter left behind.
    client = supervisor.client()
    with client.lease("10GiB", holder="fills GPU 0", gpu=0):
        with pytest.raises(TimeoutError) as timed_out:
            with arbiter.lease("1GiB", holder="too late", gpu=0, max_wait=0.3, address=address):
                pytest.fail("granted on a full GPU")
        assert isinstance(timed_out.value, arbiter.LeaseTimeout)
        assert timed_out.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert not client.status().queue
    client.close()

    # Refused before anything is sent.
    with pytest.raises(ValueError, match="unit"):
        arbiter.lease("8 parsecs", holder="x", address=address)
    with pytest.raises(ValueError, match="priority"):
        arbiter.lease("1GiB", holder="x", priority="urgent", address=address)


def test_no_supervisor_is_unreachable(tmp_path: Path) -> None:
    with pytest.raises(arbiter.Unreachable) as raised:
        with arbiter.lease("1GiB", holder="alone", address=tmp_path / "nobody.sock"):
            pass
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert "nobody.sock" in str(raised.value)


def test_a_unary_lease_is_kept_alive_and_released(supervisor: Supervisor, transport: str) -> None:
    address = supervisor.address(transport)
    lease = arbiter.acquire("3GiB", holder="py-unary", gpu=1, ttl=60, address=address)
    client = supervisor.client()
    listed = lease_of(client, "py-unary")
    assert listed.form == arbiter.supervisor.v1.supervisor_pb2.LEASE_FORM_UNARY
    assert listed.gpu_index == 1
    first_expiry = lease.expires_at
    assert first_expiry is not None
    eventually("the clock to move on", lambda: lease.keep_alive().expires_at > first_expiry)
    assert lease.shrink("1GiB") == GIB
    assert lease.release() == GIB
    assert lease_of(client, "py-unary") is None
    with pytest.raises(arbiter.ArbiterError) as raised:
        lease.keep_alive()
    assert raised.value.code == grpc.StatusCode.NOT_FOUND
    lease.close()

    # As a context manager: released on exit.
    with client.acquire("1GiB", holder="py-unary-block", ttl=60) as unary:
        assert lease_of(client, "py-unary-block").lease_id == unary.lease_id
    assert lease_of(client, "py-unary-block") is None
    client.close()


def test_the_default_address_is_the_runtime_dirs_socket(start_supervisor, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                                        request: pytest.FixtureRequest) -> None:
    # Short, under /tmp: the socket's path must fit in 108 bytes.
    runtime = Path(tempfile.mkdtemp(prefix="arbiter-py-run-"))
    request.addfinalizer(lambda: shutil.rmtree(runtime, ignore_errors=True))
    (runtime / "arbiter").mkdir()
    supervisor = start_supervisor(socket_path=runtime / "arbiter" / "supervisor.sock")
    for variable in ("ARBITER_SUPERVISOR", "ARBITER_SUPERVISOR_SOCKET", "ARBITER_SOCKET"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    with arbiter.connect() as client:
        assert client.address == f"unix:{supervisor.socket}"
        assert client.ping()
        with arbiter.lease("1GiB", holder="py-default") as lease:
            assert lease_of(client, "py-default").pid == os.getpid()
    # $ARBITER_SUPERVISOR wins, in any address form (here TCP).
    monkeypatch.setenv("ARBITER_SUPERVISOR", supervisor.tcp)
    with arbiter.connect() as client:
        assert client.address == supervisor.tcp
        assert client.ping()


def test_cap_torch_is_a_no_op_on_a_simulated_gpu(supervisor: Supervisor) -> None:
    # The simulated GPU is no device torch can see (and this machine may have no CUDA at
    # all): the cap is refused with False, and the lease goes on.
    with arbiter.lease("1GiB", holder="py-torch", address=supervisor.unix, cap_torch=True) as lease:
        assert lease.cap_torch() is False
        assert lease.active
