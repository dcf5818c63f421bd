"""The Trainer's profiler when the config names none (``trainer.profiler`` unset).

Lightning's default, ``PassThroughProfiler``, records nothing but still opens a new
generator-based context manager around every hook call: on each optimizer step that is every
callback's ``on_before_backward``, ``on_after_backward`` and ``on_before_optimizer_step`` and the
module's own, about forty (their cost is in docs/benchmarks.md). ``NoProfiler`` hands back one
shared ``nullcontext`` instead: the same hooks run, in the same order, and nothing is recorded.
A profiler the config names (``+trainer.profiler=simple``) is used as before.
"""

from __future__ import annotations

import contextlib

from lightning.pytorch.profilers import PassThroughProfiler

NOTHING = contextlib.nullcontext()


class NoProfiler(PassThroughProfiler):
    """A ``PassThroughProfiler`` whose ``profile(action_name)`` is one shared no-op context."""

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return NOTHING
