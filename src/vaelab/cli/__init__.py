"""vaelab's five commands (``vaelab.cli.train``, ``evaluate``, ``sample``, ``compare``,
``classifier``), each parsing, calling the library and printing, and what they share, here: the
packaged config folder, vaelab's OmegaConf resolvers, and running a Hydra app so that a bad
input is one ``error:`` line.

Imports only hydra and omegaconf, so ``--help`` and ``--cfg job`` stay fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from vaelab.compat import upgrade_overrides
from vaelab.config import register_schemas
from vaelab.errors import ConfigError, exit_with_error, find_user_error, first_line
from vaelab.runs import file_name, short_number
from vaelab.slurm import gpus_per_node
from vaelab.sweep import SweepSummary, sweep_group
from vaelab.workarounds import (  # noqa: F401 - VERSION_BASE: the commands' Hydra settings
    VERSION_BASE,
    register_resolver,
    skip_final_garbage_collection,
)

# the YAML configs ship inside the package (``vaelab/configs``), so an installed wheel finds them
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def run_dir_for(resume, default: str) -> str:
    """``hydra.run.dir``: resume=RUN_DIR runs in that folder; resume=auto (and none) in the default one."""
    return resume if resume not in (None, "", "auto") else default


def hydra_output_dir() -> str:
    """``paths.output_dir``: the folder Hydra made for this run or sweep job."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        raise ConfigError(
            "paths.output_dir is not set and no Hydra app is running: call vaelab.train([...]) "
            "from Python, or set paths.output_dir=<folder>"
        )
    return HydraConfig.get().runtime.output_dir


def register_resolvers() -> None:
    """The ``${vaelab_...:}`` interpolations the configs use; registering twice is harmless."""
    register_resolver("vaelab_cwd", os.getcwd)  # where the command runs
    register_resolver("vaelab_group", sweep_group)
    register_resolver("vaelab_file_name", file_name)
    register_resolver("vaelab_round", short_number)
    register_resolver("vaelab_run_dir", run_dir_for)
    register_resolver("vaelab_output_dir", hydra_output_dir)
    register_resolver("vaelab_gpus_per_node", gpus_per_node)


register_resolvers()
register_schemas()


def hydra_message(error: BaseException) -> str:
    """Hydra's report of a composition error as one line: its first line, the options it lists."""
    text = str(error)
    if "Available options" in text:
        _, tail = text.split("Available options", 1)
        options = []
        for line in tail.splitlines()[1:]:
            if not line.startswith("\t"):
                break
            options.append(line.strip())
        return f"{first_line(error)} (available: {', '.join(options)})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    message = " ".join(lines) if len(lines) <= 3 else lines[0]  # e.g. "Could not override 'x'. To append ... use +x=4"
    if error.__cause__ is not None and (not lines or message.startswith("Error merging override")):
        cause = first_line(error.__cause__)  # e.g. the schema's "Value 'abc' of type 'str' could not be converted"
        message = f"{message}: {cause}" if lines else cause
    return message


def run_hydra_app(app) -> None:
    """Run a ``@hydra.main`` app so that what Hydra would report over several lines (an unknown
    key or option, a bad override, a failing interpolation) is one ``error:`` line and exit 1."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from vaelab.errors import UserError

    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing its own report
    skip_final_garbage_collection()
    sys.argv[1:] = upgrade_overrides(sys.argv[1:])  # former key names (loss=...) read as today's
    try:
        app()
    except BrokenPipeError:  # `vaelab-train --help | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would fail again
        raise SystemExit(1) from None
    except (HydraException, OmegaConfBaseException, UserError) as error:
        if SweepSummary.running is not None:  # a multirun stopped by a bad override: no sweep folder left
            SweepSummary.running.abandon()
        user_error = find_user_error(error)
        exit_with_error(user_error if user_error else hydra_message(error))
    except OSError as error:  # a folder Hydra cannot make or a file it cannot write
        if error.filename is None:
            raise
        if SweepSummary.running is not None:
            SweepSummary.running.abandon()
        exit_with_error(f"cannot write {error.filename}: {error.strerror}")
