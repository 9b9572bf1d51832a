"""Keeping PyTorch within a lease.

A lease is a promise to the supervisor: this process will use at most that many bytes of
the GPU. PyTorch's caching allocator knows nothing of it, and grows until the card is full.
``torch.cuda.set_per_process_memory_fraction`` caps the allocator at a fraction of the
device's total memory, so the lease's bytes over the device's total is the cap that keeps
the promise: an allocation past it raises torch's out-of-memory error in this process
instead of taking memory that was lent to someone else. (The CUDA context itself, a few
hundred MiB, is outside the allocator and not capped: ask for a lease that includes it.)
"""

from __future__ import annotations

from typing import Any, Optional, Union

from ._bytesize import Bytes, parse_bytes

Device = Union[int, str, Any]


def memory_fraction(lease_bytes: int, device_total: int) -> float:
    """The allocator cap for a lease of `lease_bytes` on a device of `device_total` bytes:
    their ratio, at most 1.0 (torch refuses more, and a lease cannot exceed the card)."""
    if device_total <= 0:
        raise ValueError(f"a device's total memory must be positive, not {device_total}")
    return min(1.0, max(0.0, lease_bytes / device_total))


def _device_index(torch: Any, device: Optional[Device], gpu_uuid: Optional[str]) -> Optional[int]:
    """The torch device index to cap: `device` when given; else the device whose UUID is the
    leased GPU's (torch numbers devices after CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER,
    which need not match the supervisor's NVML index); else the current device. None when the
    leased GPU is not one this process can see."""
    if device is not None:
        if isinstance(device, int):
            return device
        if isinstance(device, str):
            return torch.device(device).index or 0
        return device.index or 0  # a torch.device
    if gpu_uuid:
        wanted = gpu_uuid.lower().removeprefix("gpu-")
        for index in range(torch.cuda.device_count()):
            uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
            if uuid is not None and str(uuid).lower().removeprefix("gpu-") == wanted:
                return index
        return None
    return torch.cuda.current_device()


def cap_torch(
    bytes: Bytes,
    device: Optional[Device] = None,
    *,
    gpu_uuid: Optional[str] = None,
    torch: Any = None,
) -> bool:
    """Caps PyTorch's CUDA allocator on `device` at `bytes` (an int or "8GiB"), as
    ``torch.cuda.set_per_process_memory_fraction(bytes / device_total, device)``.

    The device is `device` when given, else the one whose UUID is `gpu_uuid` (a lease's GPU),
    else the current device. Returns True when the cap was set, and False, doing nothing,
    when torch is not installed, CUDA is not available, or no visible device has
    `gpu_uuid` (a simulated GPU, or a card hidden by CUDA_VISIBLE_DEVICES): code that runs on
    machines with and without a GPU may call it unconditionally. `torch` is the module to
    use (default: ``import torch``).
    """
    size = parse_bytes(bytes)
    if torch is None:
        try:
            import torch  # type: ignore[import-not-found,no-redef]
        except ImportError:
            return False
    if not torch.cuda.is_available():
        return False
    index = _device_index(torch, device, gpu_uuid)
    if index is None:
        return False
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(memory_fraction(size, total), index)
    return True
