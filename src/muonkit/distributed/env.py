"""Process-group setup for torchrun, and a spawn helper for multi-process runs on one host.

``compute_init`` follows nanochat's ``compute_init``: under ``torchrun`` the launcher sets
RANK, LOCAL_RANK and WORLD_SIZE (and MASTER_ADDR/MASTER_PORT); we pick NCCL on CUDA and gloo
otherwise, bind the CUDA device of this local rank and seed. Without those variables it is a
single process on the best device.
"""

from __future__ import annotations

import datetime
import gc
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


def best_device() -> torch.device:
    """cuda if available, then mps, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def compute_init(
    seed: int = 0, device: str | None = None, timeout_s: float = 600.0
) -> tuple[bool, int, int, int, torch.device]:
    """Initialize torch.distributed when launched by torchrun.

    Returns ``(ddp, rank, local_rank, world_size, device)``; without torchrun's environment,
    ``(False, 0, 0, 1, best device)`` and no process group. Under torchrun: backend "nccl"
    when the device is CUDA, "gloo" otherwise; ``device`` ("cpu"/"cuda", default: the best
    available) is bound to this local rank. Every rank seeds ``torch.manual_seed(seed)`` with
    the *same* seed, so a model built after this call starts identical on every rank (FSDP2's
    ``fully_shard`` relies on that; DDP broadcasts rank 0's weights anyway); shard the data by
    rank, not the init.
    """
    dev = torch.device(device) if device is not None else best_device()
    ddp = all(v in os.environ for v in TORCHRUN_VARS)
    if not ddp:
        torch.manual_seed(seed)
        return False, 0, 0, 1, dev
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    torch.manual_seed(seed)
    return True, rank, local_rank, world_size, dev


def init_process_group(**kwargs) -> None:
    """``dist.init_process_group(**kwargs)``, after importing ``torch.distributed.nn.functional``.

    That module's functions take ``group=group.WORLD`` as a default argument, evaluated when
    it is first imported (DCP imports it): imported after the group exists, it holds the group
    for the life of the process, ``destroy_process_group`` no longer frees it, and a gloo
    worker thread still finishing a collective at interpreter exit aborts the process
    ("terminate called without an active exception", SIGABRT) after a clean end. Imported
    first, its defaults hold None.
    """
    import torch.distributed.nn.functional  # noqa: F401

    dist.init_process_group(**kwargs)


def compute_cleanup(wait_for_peers: bool = True) -> None:
    """Destroy the process group if one is initialized (a no-op otherwise).

    With ``wait_for_peers`` (the normal end of a run) every rank first meets at a barrier, so
    no rank tears its communicator down while a peer still has collectives in flight (a
    teardown race that can abort a gloo rank at exit). After an error, pass False: a failed
    rank's peers may never reach the barrier. Unreachable objects still holding the group (a
    DDP wrapper's reducer lives in a reference cycle) are collected first, while the group
    exists: left to interpreter exit, they keep its gloo context alive past
    ``destroy_process_group``, and a rank can abort there.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        if wait_for_peers:
            dist.barrier()
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside an initialized torch.distributed process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(
    rank: int, fn: Callable, world_size: int, port: int, timeout_s: float, args: tuple
) -> None:
    init_process_group(
        backend="gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    finished = False
    try:
        fn(rank, world_size, *args)
        finished = True
    finally:
        compute_cleanup(wait_for_peers=finished)


def spawn(fn: Callable[..., Any], world_size: int, args: tuple = (), timeout_s: float = 120.0):
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes (gloo, loopback).

    Each process joins one gloo process group (TCP on 127.0.0.1, a free port); a collective
    that waits longer than ``timeout_s`` raises in that process. The call returns when all
    processes exit, re-raises the first failure, and kills every process and raises
    ``TimeoutError`` when they have not finished within ``timeout_s``: it never hangs.
    A port taken by another program between choosing and binding it (EADDRINUSE) gets two
    more tries on fresh ports. ``fn`` must be importable by name (a module-level function):
    processes start with "spawn".
    """
    for attempt in range(3):
        try:
            return _spawn_once(fn, world_size, args, timeout_s)
        except mp.ProcessRaisedException as e:
            if "EADDRINUSE" not in str(e) or attempt == 2:
                raise


def _spawn_once(fn: Callable[..., Any], world_size: int, args: tuple, timeout_s: float) -> None:
    context = mp.start_processes(
        _spawned,
        args=(fn, world_size, free_port(), timeout_s, args),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for p in context.processes:
                if p.is_alive():
                    p.kill()
            for p in context.processes:
                p.join()
            raise TimeoutError(f"{world_size} spawned processes did not finish in {timeout_s} s")
