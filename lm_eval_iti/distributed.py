"""Process roles under ``accelerate launch``: rank, world size, barrier, and "the main process writes, others wait".

Built on accelerate's ``PartialState`` (which sets up torch.distributed from the launcher's environment); in a plain
``python`` / ``lm-eval-iti`` process nothing is initialised and every helper is a no-op for a world of one.
"""

from __future__ import annotations

import functools
import os

import torch


def _launched() -> bool:
    """True inside ``accelerate launch`` / ``torchrun`` with more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


@functools.lru_cache(maxsize=1)
def _state():
    from accelerate import PartialState

    # without cpu=True accelerate only sets up GPU process groups: on a CPU-only machine it would report one process
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def world_size() -> int:
    return _state().num_processes if _launched() else 1


def rank() -> int:
    return _state().process_index if _launched() else 0


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    """Every process waits here until all have arrived (no-op for one process)."""
    if _launched():
        _state().wait_for_everyone()


def process_device() -> torch.device | None:
    """This process's device under a multi-process launch (``cuda:<local rank>`` or cpu); None for one process."""
    if not _launched():
        return None
    device = _state().device
    return torch.device("cpu") if device.type == "cpu" else device


def local_gpus(gpu_count: int | None = None) -> list[int]:
    """The GPUs this process may shard a model over under a multi-process launch: every LOCAL_WORLD_SIZE-th GPU from
    its local rank (as lm-eval's HFLM does with parallelize=True), so the processes' device_maps never overlap."""
    count = torch.cuda.device_count() if gpu_count is None else gpu_count
    if not _launched():
        return list(range(count))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE") or world_size())  # the launcher sets both
    local_rank = int(os.environ.get("LOCAL_RANK") or rank())
    return [i for i in range(count) if i % local_world == local_rank]


def my_share(items: list) -> list:
    """The items this rank handles: every ``world_size``-th, starting at its rank (a fixed, interleaved split)."""
    return list(items)[rank()::world_size()]


def main_writes_others_wait(func):
    """Decorate a function that ends with the main process writing results: every process meets at a barrier when
    the function returns or raises, so the other ranks return only once the main process has written (or failed)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        finally:
            barrier()

    return wrapper


def share_from_main(payload: bytes | None) -> bytes:
    """The main process's ``payload`` on every process (the others pass None). Raw bytes over torch.distributed's
    broadcast, never a pickle; a no-op for one process."""
    if not _launched():
        return payload
    import torch.distributed as dist

    device = process_device() or torch.device("cpu")
    size = torch.tensor([len(payload) if is_main_process() else 0], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    buffer = (torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device) if is_main_process()
              else torch.empty(int(size.item()), dtype=torch.uint8, device=device))
    dist.broadcast(buffer, src=0)
    return bytes(buffer.cpu().numpy().tobytes())
