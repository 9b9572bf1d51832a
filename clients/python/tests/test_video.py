"""Video jobs from Python on the real supervisor and its real workers: the built-in tiny
pipeline end to end with ``generate`` (the arbiter-video worker beside the supervisor,
ffmpeg for the MP4), a refused request, and the example external pipeline (a job that
fails with its own message; one cancelled while it runs, followed with ``watch``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import List

import grpc
import pytest
from conftest import GIB, JOB_TIMEOUT, ROOT, SOON, Supervisor, eventually

import arbiter

#: The tiny job's lease at its default size (1GiB peak + 256MiB margin), as the Rust tests
#: know it (test-kit's TINY_LEASE).
TINY_LEASE = GIB + (256 << 20)


def test_generate_runs_a_tiny_job_to_its_video(start_supervisor, transport: str) -> None:  # type: ignore[no-untyped-def]
    assert shutil.which("ffmpeg"), "the tiny job muxes its MP4 with ffmpeg (scripts/setup.sh installs it)"
    supervisor: Supervisor = start_supervisor(gpus="4GiB")
    updates: List[object] = []
    job = arbiter.generate(
        "a red fox in the snow",
        seed=7,
        address=supervisor.address(transport),
        on_update=updates.append,
        timeout=JOB_TIMEOUT,
    )
    states = [arbiter.state_name(u) for u in updates]
    assert states[0] == "queued", states
    assert states[-1] == "succeeded", states
    assert all(not arbiter.is_final(u) for u in updates[:-1]), states
    assert job.pipeline == "tiny"
    assert job.seed == 7
    assert job.lease_bytes == TINY_LEASE
    assert job.error == ""
    video = Path(job.result.video_path)
    assert video.is_file() and video.stat().st_size == job.result.video_bytes > 0
    assert Path(job.result.metadata_path).is_file()
    if shutil.which("ffprobe"):
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=codec_type",
             "-of", "csv=p=0", str(video)],
            capture_output=True, text=True, timeout=SOON, check=True,
        )
        assert probe.stdout.strip() == "video"
    # The job's record, as Get and List keep it; its lease given back.
    with arbiter.connect(supervisor.address(transport)) as client:
        assert client.get(job.job_id).state == job.state
        assert [j.job_id for j in client.jobs(states=["succeeded"])] == [job.job_id]
        assert client.jobs(states=["queued", "running"]) == []
        eventually("the job's lease to be given back", lambda: not client.leases())


def test_a_request_the_pipeline_does_not_take_is_refused_before_it_is_queued(supervisor: Supervisor) -> None:
    with pytest.raises(arbiter.JobRefused) as raised:
        arbiter.generate("a cat", width=100, address=supervisor.unix, timeout=SOON)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "width 100" in raised.value.message, raised.value.message
    with pytest.raises(arbiter.JobRefused):
        arbiter.submit("a cat", pipeline="no-such-pipeline", address=supervisor.unix)
    assert arbiter.jobs(address=supervisor.unix) == []


def example_supervisor(start_supervisor) -> Supervisor:  # type: ignore[no-untyped-def]
    """A supervisor serving the example external pipeline (examples/external-pipeline)."""
    return start_supervisor(gpus="8GiB", config='[jobs]\nkill_grace = "2s"\n', args=["--pipelines-dir", str(ROOT / "examples")])


def test_the_example_pipeline_runs_with_the_client_and_a_failed_job_raises_job_failed(start_supervisor) -> None:  # type: ignore[no-untyped-def]
    supervisor = example_supervisor(start_supervisor)
    # The example imports this client where the python3 the supervisor finds on PATH has it
    # (the venv's, which has this package: it is what runs these tests) and caps torch at
    # its lease: nothing to cap on a simulated GPU (False; None would be: no client).
    has_client = subprocess.run(["python3", "-c", "import arbiter"], capture_output=True, timeout=SOON).returncode == 0
    job = arbiter.generate("a test pattern", pipeline="external-example", steps=1, address=supervisor.tcp,
                           timeout=JOB_TIMEOUT)
    metadata = json.loads(Path(job.result.metadata_path).read_text())
    assert metadata["lease_bytes"] == job.lease_bytes
    assert metadata["torch_capped"] is (False if has_client else None)

    with pytest.raises(arbiter.JobFailed) as raised:
        arbiter.generate("refuse this", pipeline="external-example", address=supervisor.tcp, timeout=JOB_TIMEOUT)
    failed = raised.value
    assert failed.state == "failed"
    assert "this example refuses prompts starting with 'refuse'" in failed.error, failed.error
    assert failed.job.job_id == failed.job_id
    assert arbiter.get(failed.job_id, address=supervisor.tcp).state == arbiter.video.v1.video_pb2.JOB_STATE_FAILED


def test_a_watched_job_is_cancelled_while_it_runs(start_supervisor) -> None:  # type: ignore[no-untyped-def]
    supervisor = example_supervisor(start_supervisor)
    with arbiter.connect(supervisor.unix) as client:
        # 100 steps of 0.05 s: long enough to be cancelled while running.
        job_id = client.submit("a long test pattern", pipeline="external-example", steps=100)
        seen: List[str] = []
        for job in client.watch(job_id, timeout=JOB_TIMEOUT):
            seen.append(arbiter.state_name(job))
            if job.state == arbiter.video.v1.video_pb2.JOB_STATE_RUNNING and job.progress.step > 0 and "cancel" not in seen:
                seen.append("cancel")
                client.cancel(job_id)
        assert seen[-1] == "cancelled", seen
        assert "cancel" in seen, f"the job ran: {seen}"
        assert client.get(job_id).state == arbiter.video.v1.video_pb2.JOB_STATE_CANCELLED
        with pytest.raises(arbiter.ArbiterError) as raised:
            client.get("job-that-never-was")
        assert raised.value.code == grpc.StatusCode.NOT_FOUND
        eventually("the cancelled job's lease to be given back", lambda: not client.leases())
