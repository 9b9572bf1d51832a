"""The client's own rules, without a server: byte sizes (the Rust ByteSize's units),
addresses (the Rust endpoint's forms and defaults) and the torch cap's arithmetic."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, List, Tuple

import pytest

import arbiter
from arbiter._address import parse_address


def test_sizes_read_binary_and_decimal_units_like_the_supervisor() -> None:
    assert arbiter.parse_bytes("80GiB") == 80 << 30
    assert arbiter.parse_bytes("24 GB") == 24_000_000_000
    assert arbiter.parse_bytes("512mib") == 512 << 20
    assert arbiter.parse_bytes("1.5GiB") == 3 << 29
    assert arbiter.parse_bytes("4096") == 4096
    assert arbiter.parse_bytes("8G") == 8 << 30
    assert arbiter.parse_bytes(" 2 KiB ") == 2048
    assert arbiter.parse_bytes(12345) == 12345


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "empty"),
        ("12 parsecs", "unknown unit"),
        ("GiB", "not a byte size"),
        ("-3GiB", "not a byte size"),
        ("1.2.3GiB", "not a byte size"),
        ("99999999TiB", "too large"),
        (-1, "negative"),
    ],
)
def test_sizes_that_are_not_sizes_are_refused_with_a_reason(text: Any, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        arbiter.parse_bytes(text)


def test_sizes_are_shown_in_the_largest_whole_unit() -> None:
    assert arbiter.format_bytes(80 << 30) == "80GiB"
    assert arbiter.format_bytes(3 << 29) == "1.5GiB"
    assert arbiter.format_bytes(1000) == "1000B"
    assert arbiter.format_bytes(612 << 20) == "612MiB"


def test_addresses_take_every_form_the_rust_side_reads() -> None:
    assert parse_address("/run/a.sock", "").target == "unix:/run/a.sock"
    assert parse_address("unix:///run/a.sock", "").target == "unix:/run/a.sock"
    assert parse_address("unix:/run/a.sock", "").unix
    assert parse_address(Path("/tmp/x"), "").target == "unix:/tmp/x"
    relative = parse_address("rel.sock", "")
    assert relative.unix and relative.target.startswith("unix:/") and relative.target.endswith("/rel.sock")
    tcp = parse_address("127.0.0.1:50051", "")
    assert (tcp.target, tcp.unix) == ("127.0.0.1:50051", False)
    assert parse_address("http://h:1", "").target == "h:1"
    with pytest.raises(ValueError, match="plaintext"):
        parse_address("https://h:1", "")


def test_default_addresses_follow_the_runtime_dir_and_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("ARBITER_SUPERVISOR", "ARBITER_SUPERVISOR_SOCKET", "ARBITER_SOCKET", "ARBITER_TTS_SOCKET"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert arbiter.default_supervisor_address() == "/run/user/1000/arbiter/supervisor.sock"
    assert arbiter.default_tts_address() == "/run/user/1000/arbiter/tts.sock"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "")
    assert arbiter.default_supervisor_address() == "/run/arbiter/supervisor.sock"
    assert arbiter.default_tts_address() == "/run/arbiter/tts.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert arbiter.default_supervisor_address() == "/run/arbiter/supervisor.sock"
    monkeypatch.setenv("ARBITER_SOCKET", "/srv/s.sock")
    assert arbiter.default_supervisor_address() == "/srv/s.sock"
    monkeypatch.setenv("ARBITER_SUPERVISOR_SOCKET", "/job/s.sock")
    assert arbiter.default_supervisor_address() == "/job/s.sock"
    monkeypatch.setenv("ARBITER_SUPERVISOR", "127.0.0.1:1")
    assert arbiter.default_supervisor_address() == "127.0.0.1:1"
    monkeypatch.setenv("ARBITER_TTS_SOCKET", "/srv/t.sock")
    assert arbiter.default_tts_address() == "/srv/t.sock"


class FakeTorch:
    """Just what cap_torch reads and calls of torch: devices with a total and a UUID, and
    the fractions it was asked to set. Injected for these tests only; it is the arithmetic
    and the choice of device that are under test, not torch."""

    def __init__(self, totals: List[int], uuids: List[str], available: bool = True) -> None:
        self.set: List[Tuple[float, int]] = []
        outer = self

        class Cuda:
            @staticmethod
            def is_available() -> bool:
                return available

            @staticmethod
            def device_count() -> int:
                return len(totals)

            @staticmethod
            def current_device() -> int:
                return 0

            @staticmethod
            def get_device_properties(index: int) -> Any:
                return SimpleNamespace(total_memory=totals[index], uuid=uuids[index])

            @staticmethod
            def set_per_process_memory_fraction(fraction: float, device: int) -> None:
                outer.set.append((fraction, device))

        self.cuda = Cuda
        self.device = lambda text: SimpleNamespace(index=int(text.split(":")[1]) if ":" in text else None)


def test_the_cap_is_the_lease_over_the_devices_total() -> None:
    torch = FakeTorch([80 << 30, 24 << 30], ["aaaa-1", "bbbb-2"])
    assert arbiter.cap_torch("8GiB", torch=torch) is True
    assert torch.set == [(0.1, 0)]
    assert arbiter.cap_torch(6 << 30, 1, torch=torch) is True
    assert torch.set[-1] == (0.25, 1)
    assert arbiter.cap_torch("12GiB", "cuda:1", torch=torch) is True
    assert torch.set[-1] == (0.5, 1)
    # The leased GPU found by its UUID (the supervisor's "GPU-" form), whatever torch's index.
    assert arbiter.cap_torch("12GiB", gpu_uuid="GPU-bbbb-2", torch=torch) is True
    assert torch.set[-1] == (0.5, 1)
    # A lease larger than the card is capped at the whole card (torch refuses more than 1).
    assert arbiter.memory_fraction(100 << 30, 80 << 30) == 1.0
    assert arbiter.memory_fraction(0, 80 << 30) == 0.0
    with pytest.raises(ValueError):
        arbiter.memory_fraction(1, 0)


def test_the_cap_is_refused_with_false_without_cuda_or_the_leased_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    without_cuda = FakeTorch([80 << 30], ["aaaa-1"], available=False)
    assert arbiter.cap_torch("8GiB", torch=without_cuda) is False
    assert without_cuda.set == []
    elsewhere = FakeTorch([80 << 30], ["aaaa-1"])
    assert arbiter.cap_torch("8GiB", gpu_uuid="GPU-not-here", torch=elsewhere) is False
    assert elsewhere.set == []
    # torch not installed: `import torch` fails.
    monkeypatch.setitem(sys.modules, "torch", None)
    assert arbiter.cap_torch("8GiB") is False
