"""The Trainer's profiler when the config names none (``trainer.profiler`` unset), and the hook
calls that it lets Lightning skip.

Lightning's default, ``PassThroughProfiler``, records nothing but still opens a new
generator-based context manager around every hook call: on each optimizer step that is every
callback's ``on_before_backward``, ``on_after_backward`` and ``on_before_optimizer_step`` and the
module's own, about forty (their cost is in docs/benchmarks.md). ``NoProfiler`` hands back one
shared ``nullcontext`` instead.

Lightning also calls every callback's per-batch hooks whether its class defines them or not (each
call looks the hook up, builds the callback's ``state_key`` and a profiler name, and sets the
module's ``_current_fx_name`` twice), about 3 µs per callback and hook. Under ``NoProfiler``, where
no per-hook record is kept, ``skip_undefined_hooks`` has Lightning call only the callbacks whose
class defines the hook, and skips the module's per-batch hooks that it leaves as
``LightningModule``'s no-ops: the hooks that run are the same, in the same order, with the same
arguments. A profiler the config names (``+trainer.profiler=simple``) sees every call as before.
"""

from __future__ import annotations

import contextlib

from lightning.pytorch.profilers import PassThroughProfiler

NOTHING = contextlib.nullcontext()

# hooks Lightning calls on every batch or optimizer step; in lightning's Callback and ModelHooks
# each does nothing (tests/test_profiling.py reads their source), so not calling one changes nothing
PER_BATCH_HOOKS = frozenset(
    {
        "on_before_backward",
        "on_after_backward",
        "on_before_optimizer_step",
        "on_before_zero_grad",
        "on_train_batch_start",
        "on_train_batch_end",
        "on_validation_batch_start",
        "on_validation_batch_end",
        "on_test_batch_start",
        "on_test_batch_end",
        "on_predict_batch_start",
        "on_predict_batch_end",
    }
)


class NoProfiler(PassThroughProfiler):
    """A ``PassThroughProfiler`` whose ``profile(action_name)`` is one shared no-op context; under
    it Lightning calls a per-batch hook only where a callback or the module defines it."""

    def __init__(self) -> None:
        super().__init__()
        self.callbacks_defining: dict[str, tuple[list, list]] = {}  # hook -> (Trainer.callbacks, those defining it)

    def setup(self, stage, local_rank=None, log_dir=None) -> None:
        super().setup(stage, local_rank, log_dir)
        skip_undefined_hooks()  # in every process that runs the Trainer, spawned DDP ranks included

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return NOTHING

    def callbacks_with(self, hook_name: str, callbacks: list) -> list:
        """The callbacks among ``callbacks`` whose class (or the object itself) defines ``hook_name``,
        in order; kept per hook while the Trainer's list holds the same callbacks."""
        seen = self.callbacks_defining.get(hook_name)
        if seen is None or seen[0] != callbacks:
            from lightning.pytorch.callbacks import Callback

            seen = (list(callbacks), [c for c in callbacks if defines(c, Callback, hook_name)])
            self.callbacks_defining[hook_name] = seen
        return seen[1]

    def __getstate__(self) -> dict:  # ddp_spawn pickles the Trainer: the callbacks go their own way
        return {**self.__dict__, "callbacks_defining": {}}


def defines(obj, base: type, hook_name: str) -> bool:
    """Whether ``obj`` has its own ``hook_name``: from its class (not ``base``'s) or set on it."""
    own = getattr(obj, "__dict__", {})
    return getattr(type(obj), hook_name, None) is not getattr(base, hook_name) or hook_name in own


def skip_undefined_hooks(call=None) -> None:
    """Have Lightning's hook calls (``lightning.pytorch.trainer.call``, which its loops reach through
    the module) skip, under ``NoProfiler``, the per-batch hooks nobody defines. Idempotent. An
    upgrade of Lightning that renames the two private functions stops here with a message saying so."""
    from lightning.pytorch.core.module import LightningModule

    if call is None:
        from lightning.pytorch.trainer import call
    call_callbacks = getattr(call, "_call_callback_hooks", None)
    call_module = getattr(call, "_call_lightning_module_hook", None)
    if not (callable(call_callbacks) and callable(call_module)):
        import lightning

        raise RuntimeError(
            f"Lightning {lightning.__version__} has no trainer.call._call_callback_hooks and "
            "_call_lightning_module_hook, through which vaelab skips undefined hooks (vaelab/profiling.py)"
        )
    if getattr(call_callbacks, "vaelab_skips_undefined", False):
        return

    def call_callback_hooks(trainer, hook_name, *args, monitoring_callbacks=None, **kwargs):
        profiler = trainer.profiler
        if type(profiler) is not NoProfiler or hook_name not in PER_BATCH_HOOKS or monitoring_callbacks is not None:
            return call_callbacks(trainer, hook_name, *args, monitoring_callbacks=monitoring_callbacks, **kwargs)
        callbacks = profiler.callbacks_with(hook_name, trainer.callbacks)
        if not callbacks:
            return None
        # Lightning's own loop, over the callbacks that define the hook
        pl_module = trainer.lightning_module
        if pl_module:
            previous, pl_module._current_fx_name = pl_module._current_fx_name, hook_name
        for callback in callbacks:
            getattr(callback, hook_name)(trainer, pl_module, *args, **kwargs)
        if pl_module:
            pl_module._current_fx_name = previous
        return None

    def call_lightning_module_hook(trainer, hook_name, *args, pl_module=None, **kwargs):
        module = pl_module or trainer.lightning_module
        if (
            type(trainer.profiler) is NoProfiler
            and hook_name in PER_BATCH_HOOKS
            and module is not None
            and not defines(module, LightningModule, hook_name)
        ):
            return None
        return call_module(trainer, hook_name, *args, pl_module=pl_module, **kwargs)

    call_callback_hooks.vaelab_skips_undefined = True
    call_callback_hooks.lightning, call_lightning_module_hook.lightning = call_callbacks, call_module  # for make bench
    call._call_callback_hooks, call._call_lightning_module_hook = call_callback_hooks, call_lightning_module_hook
