"""The ImagePanels callback: which panels it makes, when, and only those switched on."""

import pytest
from helpers import FAST, compose

from vaelab.errors import ConfigError
from vaelab.image_panels import ImagePanels
from vaelab.training import train


def test_panel_switches_and_intervals():
    grids = ImagePanels(every_n_epochs=2, panels={"latent_scatter": False, "traversals": 3})
    assert grids.due(0) == set()
    assert grids.due(1) == {"reconstructions", "samples", "class_samples", "interpolations", "manifold"}
    assert grids.due(2) == {"traversals"}
    with pytest.raises(ConfigError, match=r"callbacks.image_panels.panels.histogram: unknown panel"):
        ImagePanels(panels={"histogram": True})
    with pytest.raises(ConfigError, match=r"callbacks.image_panels.panels.samples must be true, false or an interval"):
        ImagePanels(panels={"samples": -1})


def test_switched_off_panels_are_not_made(tmp_path, data_root):
    train(
        compose(
            [
                *FAST,
                "logger=none",
                "test=false",
                "callbacks.image_panels.panels.latent_scatter=false",
                "callbacks.image_panels.panels.traversals=false",
            ],
            output_dir=tmp_path,
            data_root=data_root,
        )
    )
    made = {p.name for p in (tmp_path / "images").iterdir()}
    assert made == {"reconstructions", "samples", "interpolations"}
