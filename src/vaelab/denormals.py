"""Subnormal floats flushed to zero on the CPU while training (``callbacks.flush_denormals``).

Adam's first moment of a weight whose gradient stays zero (a pixel that is always blank, a ReLU
unit that no longer fires) shrinks by beta1 = 0.9 per step, and on its way to zero passes through
the float32 subnormal range (below 1.2e-38). x86 CPUs compute on subnormal numbers many times
slower than on normal ones: after the default MNIST run's 10 epochs 23% of the first layer's
moments are subnormal, and the run trains 22% fewer images per second than with them flushed
(docs/benchmarks.md#subnormal-floats). Under x86's flush-to-zero and denormals-are-zero flags
those values are zero. An Adam update from a moment under 1.2e-38 is below half a unit in the last
place of any weight larger than about 1e-26, so flushing such moments moves no weight
(tests/test_denormals.py); the runs in docs/benchmarks.md#subnormal-floats end with the same
weights bit for bit either way.

``torch.set_flush_denormal`` sets the flags on the calling thread only, and torch has no call that
reaches its intra-op worker threads. A thread copies its creator's flags, so a pool that starts
afterwards has them; a pool that started before gets them here from one OpenMP parallel region,
run through libgomp, the OpenMP runtime of torch's Linux builds.

``FlushDenormals`` is the Lightning callback that does it in every process that trains, spawned
DDP ranks included, from ``setup`` to ``teardown``; ``callbacks.flush_denormals=null`` turns it off.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch

log = logging.getLogger(__name__)

SMALLEST_NORMAL_BITS = 0x00800000  # the bits of float32's smallest normal number, 2 ** -126
GRAIN = 32768  # elements per intra-op task: at::internal::GRAIN_SIZE


def flushed_share() -> float:
    """The share of a product, spread over every intra-op thread, whose subnormal result came out
    as zero: 1.0 when all threads flush, 0.0 when none does.

    Made from bits and read as bits: a float constant or comparison would itself be flushed on the
    calling thread."""
    size = 2 * GRAIN * max(1, torch.get_num_threads())
    smallest_normal = torch.full((size,), SMALLEST_NORMAL_BITS, dtype=torch.int32).view(torch.float32)
    halves = (smallest_normal * 0.5).view(torch.int32)  # 2 ** -127: subnormal, or 0 where flushed
    return float((halves == 0).float().mean())


def openmp_runtimes() -> list[ctypes.CDLL]:
    """The libgomp libraries this process has loaded (torch's among them), none on another
    platform or OpenMP runtime."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    paths = sorted({line.split()[-1] for line in maps.splitlines() if "/libgomp" in line})
    libraries = [ctypes.CDLL(path) for path in paths]  # the handles of the loaded ones, not new copies
    return [library for library in libraries if hasattr(library, "GOMP_parallel")]


def set_on_every_thread(on: bool) -> bool:
    """Set (or clear) the flush-to-zero flags on this thread and on torch's intra-op threads.
    Returns whether every thread now flushes as asked; False where the CPU has no such flags."""
    if not torch.set_flush_denormal(on):
        return False
    wanted = 1.0 if on else 0.0
    # one parallel region of an OpenMP team: each of its threads sets its flags; torch's team is
    # the one after which every thread computes as asked
    each_thread = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _: torch.set_flush_denormal(on))
    for runtime in [None, *openmp_runtimes()]:
        if runtime is not None:
            runtime.GOMP_parallel(each_thread, None, ctypes.c_uint(torch.get_num_threads()), ctypes.c_uint(0))
        if flushed_share() == wanted:
            return True
    return False


@contextlib.contextmanager
def flush_denormals(on: bool = True) -> Iterator[None]:
    """While inside, subnormal floats are zero on the CPU (``on``), on every thread torch computes
    with; the flags the process had before come back on exit. ``on=False`` leaves them as they are."""
    if not on:
        yield
        return
    before = flushed_share() == 1.0
    if not set_on_every_thread(True):  # all threads or none: the same numbers whichever thread computes them
        set_on_every_thread(False)
        log.info("flush_denormals: this CPU or OpenMP runtime cannot flush subnormal floats on every thread; off")
    try:
        yield
    finally:
        if not before:
            set_on_every_thread(False)


class FlushDenormals(L.Callback):
    """Subnormal floats are zero on the CPU from the Trainer's ``setup`` (fit or test) to its
    ``teardown``, in each process, and as before afterwards (``flush_denormals``)."""

    def __init__(self) -> None:
        super().__init__()
        self._restore = contextlib.ExitStack()

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        self._restore.close()
        self._restore.enter_context(flush_denormals(True))

    def teardown(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        self._restore.close()

    def __getstate__(self) -> dict:  # ddp_spawn pickles the Trainer: a spawned rank sets its own flags
        return {**self.__dict__, "_restore": contextlib.ExitStack()}
