#!/usr/bin/env python3
"""An external Arbiter pipeline, as small as the protocol allows.

The supervisor starts this under the job's GPU lease and writes the request to stdin as
one JSON object. Progress and the outcome go to stdout as JSON lines; anything else on
stdout or stderr lands in the job's log. See docs/external-pipelines.md.

A real pipeline (the official Python LTX-2 one, say) would load its models where this
draws a test pattern; it should keep within ARBITER_LEASE_BYTES of GPU memory, which is
what the client's cap_torch sees to (the supervisor has leased the GPU already: a
pipeline asks for no lease of its own).
"""
import json
import os
import subprocess
import sys
import time

try:
    # Arbiter's Python client (clients/python), where it is installed; the example runs
    # without it too, since nothing here needs it but the cap below.
    import arbiter
except ImportError:
    arbiter = None


def say(**event):
    print(json.dumps(event), flush=True)


def main():
    request = json.loads(sys.stdin.readline())
    out = request["output_dir"]
    os.makedirs(out, exist_ok=True)
    if request["prompt"].startswith("crash"):
        # For the tests: a pipeline that dies without a word.
        os._exit(9)
    if request["prompt"].startswith("refuse"):
        say(event="error", message="this example refuses prompts starting with 'refuse'")
        return 1

    # Keep within the lease before loading any model: cap torch's allocator at it on the
    # leased GPU. False: nothing to cap (no torch, no CUDA or not that GPU in view, as on a
    # simulated GPU); None: the client is not installed.
    lease_bytes = int(os.environ["ARBITER_LEASE_BYTES"])
    torch_capped = arbiter.cap_torch(lease_bytes, gpu_uuid=request["gpu_uuid"]) if arbiter else None

    steps = request["steps"]
    for step in range(1, steps + 1):
        say(event="progress", stage="denoise", step=step, total_steps=steps)
        time.sleep(float(os.environ.get("EXAMPLE_STEP_SECONDS", "0.05")))

    say(event="progress", stage="encode", step=0, total_steps=0)
    video = os.path.join(out, "video.mp4")
    size = f'{request["width"]}x{request["height"]}'
    duration = request["frames"] / request["fps"]
    command = ["ffmpeg", "-y", "-loglevel", "error",
               "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={request['fps']}:duration={duration}"]
    if request.get("audio"):
        command += ["-i", request["audio"], "-c:a", "aac", "-shortest"]
    command += ["-frames:v", str(request["frames"]), "-c:v", "libx264", "-pix_fmt", "yuv420p", video]
    subprocess.run(command, check=True)

    metadata = os.path.join(out, "metadata.json")
    with open(metadata, "w") as f:
        json.dump({"request": request, "pipeline": "external-example",
                   "lease_bytes": lease_bytes, "torch_capped": torch_capped}, f, indent=2)
    say(event="done", video_path=video, metadata_path=metadata)
    return 0


if __name__ == "__main__":
    sys.exit(main())
