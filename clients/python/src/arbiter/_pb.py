"""The generated stubs, imported in one place so that a missing build says what to do.

They are generated from the repository's proto/ when the package is built (setup.py) and
never committed, so importing the package straight from its source tree (without
installing it) finds none.
"""

from __future__ import annotations

try:
    from .supervisor.v1 import supervisor_pb2 as spb
    from .supervisor.v1 import supervisor_pb2_grpc as spb_grpc
    from .tts.v1 import tts_pb2 as tpb
    from .tts.v1 import tts_pb2_grpc as tpb_grpc
    from .video.v1 import video_pb2 as vpb
    from .video.v1 import video_pb2_grpc as vpb_grpc
except ImportError as error:  # pragma: no cover - only without a build
    raise ImportError(
        "arbiter's gRPC stubs are missing: they are generated when the package is built, so "
        "install it (pip install ./clients/python) instead of importing it from its source "
        f"tree ({error})"
    ) from error

__all__ = ["spb", "spb_grpc", "tpb", "tpb_grpc", "vpb", "vpb_grpc"]
