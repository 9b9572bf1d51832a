"""Where Arbiter's servers listen, by the same rules as the Rust side (src/endpoint.rs).

All Arbiter processes agree on one default Unix socket per server, so a client started with
no address finds them. The socket (not TCP) is the default because the kernel tells the
supervisor who is on the other end (pid and uid): a lease taken over it is tied to this
process, counted against what the process really uses, and returned when it dies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

Address = Union[str, "os.PathLike[str]"]


def runtime_dir() -> Path:
    """``$XDG_RUNTIME_DIR/arbiter`` (a user session), else ``/run/arbiter`` (a system
    service): where Arbiter's sockets live."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "arbiter" if runtime else Path("/run/arbiter")


def default_supervisor_address() -> str:
    """The supervisor a client reaches when given no address.

    The first that is set of: ``$ARBITER_SUPERVISOR`` (a socket or ``host:port``, what
    ``arbiter-tts serve`` reads), ``$ARBITER_SUPERVISOR_SOCKET`` (what the supervisor gives
    the video workers and external pipelines it starts, so a client inside a job finds the
    supervisor that runs it), ``$ARBITER_SOCKET`` (the socket ``arbiter-supervisor`` serves
    on and its own client commands dial); else the default socket,
    ``$XDG_RUNTIME_DIR/arbiter/supervisor.sock`` or ``/run/arbiter/supervisor.sock``.
    """
    for variable in ("ARBITER_SUPERVISOR", "ARBITER_SUPERVISOR_SOCKET", "ARBITER_SOCKET"):
        value = os.environ.get(variable)
        if value:
            return value
    return str(runtime_dir() / "supervisor.sock")


def default_tts_address() -> str:
    """arbiter-tts's socket when given no address: ``$ARBITER_TTS_SOCKET`` (what ``arbiter-tts
    serve`` and ``say`` read), else ``$XDG_RUNTIME_DIR/arbiter/tts.sock`` or
    ``/run/arbiter/tts.sock``."""
    return os.environ.get("ARBITER_TTS_SOCKET") or str(runtime_dir() / "tts.sock")


@dataclass(frozen=True)
class Target:
    """A parsed address: grpc's target string, and whether it is a Unix socket."""

    target: str
    unix: bool
    text: str

    def __str__(self) -> str:
        return self.text


def parse_address(address: Optional[Address], default: str) -> Target:
    """Reads an address the way the Rust ``Address::parse`` does: ``unix:/path``,
    ``unix:///path``, a bare path (``/run/...``, ``./x.sock``, anything ending ``.sock``, or a
    ``pathlib.Path``) is a Unix socket; ``http://host:port`` or ``host:port`` is TCP
    (plaintext). None takes `default`."""
    if address is None:
        address = default
    if isinstance(address, os.PathLike):
        return _unix(os.fspath(address))
    text = str(address)
    if text.startswith("unix://"):
        return _unix(text[len("unix://"):])
    if text.startswith("unix:"):
        return _unix(text[len("unix:"):])
    if text.startswith("https://"):
        raise ValueError(f"`{text}`: Arbiter's servers speak plaintext gRPC; use http://host:port or host:port")
    if text.startswith("http://"):
        host = text[len("http://"):].rstrip("/")
        return Target(host, False, text)
    if text.startswith("/") or text.startswith(".") or text.endswith(".sock"):
        return _unix(text)
    return Target(text, False, text)


def _unix(path: str) -> Target:
    # grpc's `unix:` scheme takes a relative or an absolute path; an absolute one is
    # unambiguous whatever the process's working directory becomes later.
    absolute = os.path.abspath(path)
    return Target(f"unix:{absolute}", True, f"unix:{absolute}")
