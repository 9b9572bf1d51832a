"""Video jobs (``arbiter.video.v1.Video`` on the supervisor): requests and job states.

Each accepted job is persisted, waits for a lease sized from its pipeline's manifest, runs
in its own worker process and ends in one of three final states. These helpers build the
wire's request the way ``arbiter-supervisor generate`` does (supervisor/src/client/jobs.rs)
and name the states the way it prints them.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Optional, Union

from ._lease import Priority, _duration, priority_value
from ._pb import spb, vpb

#: A soundtrack or reference image: bytes (sent inline), "@file" (read here and sent
#: inline, as the CLI's @ does), or a path on the supervisor's host (str or PathLike; it
#: must lie in one of the supervisor's allowed input directories).
MediaSource = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]

_STATE_NAMES = {
    vpb.JOB_STATE_QUEUED: "queued",
    vpb.JOB_STATE_STARTING: "starting",
    vpb.JOB_STATE_RUNNING: "running",
    vpb.JOB_STATE_RELEASING: "releasing",
    vpb.JOB_STATE_SUCCEEDED: "succeeded",
    vpb.JOB_STATE_FAILED: "failed",
    vpb.JOB_STATE_CANCELLED: "cancelled",
}
_STATES_BY_NAME = {name: value for value, name in _STATE_NAMES.items()}

#: The states a job ends in: Watch and Generate streams end after one of these.
FINAL_STATES = frozenset({vpb.JOB_STATE_SUCCEEDED, vpb.JOB_STATE_FAILED, vpb.JOB_STATE_CANCELLED})


def state_name(state: Union[int, Any]) -> str:
    """A job's state (a Job, or its ``state`` value) as a word: "queued", "running",
    "succeeded", ... ("unknown" for a value this client does not know)."""
    value = state.state if hasattr(state, "state") else state
    return _STATE_NAMES.get(value, "unknown")  # type: ignore[arg-type]


def is_final(job: Any) -> bool:
    """The job has ended (succeeded, failed or cancelled)."""
    return job.state in FINAL_STATES


def state_value(state: Union[str, int]) -> "vpb.JobState":
    """A job state as the wire carries it, from its word ("running") or its value."""
    if isinstance(state, str):
        key = state.lower().removeprefix("job_state_")
        if key not in _STATES_BY_NAME:
            raise ValueError(f"unknown job state `{state}`: use one of {', '.join(_STATES_BY_NAME)}")
        return _STATES_BY_NAME[key]
    return vpb.JobState.Value(vpb.JobState.Name(state))


def media(value: Optional[MediaSource]) -> Any:
    """The wire's Media for `value` (see :data:`MediaSource`); None for None."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return vpb.Media(data=bytes(value))
    if isinstance(value, str) and value.startswith("@"):
        with open(value[1:], "rb") as f:
            return vpb.Media(data=f.read())
    # A path the supervisor reads itself: made absolute here, since the supervisor's
    # working directory is not the caller's.
    return vpb.Media(path=os.path.realpath(os.fspath(value)))


def video_request(
    prompt: str,
    *,
    pipeline: Optional[str] = None,
    negative_prompt: str = "",
    audio: Optional[MediaSource] = None,
    image: Optional[MediaSource] = None,
    width: int = 0,
    height: int = 0,
    frames: int = 0,
    fps: int = 0,
    steps: int = 0,
    seed: Optional[int] = None,
    priority: Optional[Priority] = None,
    timeout: Optional[float] = None,
    placement: Optional[Mapping[str, str]] = None,
) -> Any:
    """The wire's VideoRequest. Zeros and Nones take the pipeline's defaults (and the
    supervisor's default pipeline; a random seed, recorded in the job); `timeout` (seconds)
    bounds the job's run once its worker starts; `placement` maps a staged pipeline's
    components to gpu, resident, cpu, stream or auto."""
    return vpb.VideoRequest(
        prompt=prompt,
        negative_prompt=negative_prompt,
        audio=media(audio),
        reference_image=media(image),
        width=width,
        height=height,
        frames=frames,
        fps=fps,
        seed=seed,
        steps=steps,
        pipeline=pipeline or "",
        priority=spb.PRIORITY_UNSPECIFIED if priority is None else priority_value(priority),
        timeout=_duration(timeout),
        placement=dict(placement or {}),
    )


def list_request(states: Optional[Iterable[Union[str, int]]], limit: int) -> Any:
    return vpb.ListJobsRequest(states=[state_value(s) for s in states or ()], limit=limit)


def describe(job: Any) -> str:
    """One line for people about a job's state, lease and progress, like the CLI's."""
    from ._bytesize import format_bytes

    line = f"{job.job_id} {state_name(job):<9}"
    if job.lease_id:
        line += f" lease {job.lease_id} ({format_bytes(job.lease_bytes)} on {job.gpu_uuid})"
    progress = job.progress
    if progress.stage:
        line += f" stage {progress.stage}"
        if progress.total_steps:
            line += f" {progress.step}/{progress.total_steps}"
    if progress.vram_bytes:
        line += f" vram {format_bytes(progress.vram_bytes)}"
    return line
