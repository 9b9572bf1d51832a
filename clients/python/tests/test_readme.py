"""The README's section on leases from Python, run as it is written: the lease with its
reclaim callback and the torch cap, a video job and speech, each on its default socket
(``$XDG_RUNTIME_DIR/arbiter/...``, as a user session has them)."""

from __future__ import annotations

import shutil
import tempfile
import wave
from pathlib import Path

import pytest
from conftest import JOB_TIMEOUT

import arbiter

# Word for word the README's example, but for `timeout` (the README waits 600 s).
README = """
import arbiter

def give_back(reclaim):          # a higher class needs room: free GPU memory, then say
    return arbiter.RELEASE       # what goes back (None: reclaim.bytes, by a Shrink)

with arbiter.lease("8GiB", holder="my-model", priority="batch", preemptible=True,
                   max_wait=30, on_reclaim=give_back, cap_torch=True) as lease:
    lease.check()                # between steps: raises LeaseRevoked once it is taken back
job = arbiter.generate("a lighthouse at dusk", timeout=JOB_TIMEOUT)  # job.result.video_path
arbiter.say("Hello there.", out="hello.wav")                         # via arbiter-tts
"""


def test_the_readme_example_runs_on_the_default_sockets(
    start_supervisor, start_tts, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,  # type: ignore[no-untyped-def]
    request: pytest.FixtureRequest,
) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="arbiter-py-run-"))
    request.addfinalizer(lambda: shutil.rmtree(runtime, ignore_errors=True))
    (runtime / "arbiter").mkdir()
    supervisor = start_supervisor(socket_path=runtime / "arbiter" / "supervisor.sock")
    start_tts(socket_path=runtime / "arbiter" / "tts.sock")
    for variable in ("ARBITER_SUPERVISOR", "ARBITER_SUPERVISOR_SOCKET", "ARBITER_SOCKET", "ARBITER_TTS_SOCKET"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.chdir(tmp_path)

    scope = {"JOB_TIMEOUT": JOB_TIMEOUT}
    exec(compile(README, "README example", "exec"), scope)

    assert not scope["lease"].active, "the block gave the lease back"
    assert scope["job"].state == arbiter.video.v1.video_pb2.JOB_STATE_SUCCEEDED
    assert Path(scope["job"].result.video_path).is_file()
    with wave.open(str(tmp_path / "hello.wav"), "rb") as wav:
        assert wav.getnframes() > 0
    with arbiter.connect(supervisor.unix) as client:
        assert [j.job_id for j in client.jobs()] == [scope["job"].job_id]
