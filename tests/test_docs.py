"""The docs stay true: links resolve, documented training commands compose, every option is documented."""

import re
import shlex
from pathlib import Path

import pytest
from helpers import CONFIG_DIR, PROJECT_ROOT, write_image_folder

from vaelab.api import compose, without_hydra
from vaelab.config import validate

DOCS = [PROJECT_ROOT / "README.md", PROJECT_ROOT / "CONTRIBUTING.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# documented commands that compose only with something this project's CI does not have
NEEDS_MORE = ("--config-dir", "hydra.searchpath")


def links(doc: Path) -> list[str]:
    return [target for target in LINK.findall(doc.read_text()) if not re.match(r"[a-z]+://|#|mailto:", target)]


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_relative_link_and_image_resolves(doc):
    missing = [t for t in links(doc) if not (doc.parent / t.split("#")[0]).exists()]
    assert not missing, f"{doc.name}: {missing}"


def training_commands() -> list[tuple[str, str]]:
    """(document, command) for every `python train.py ...` or `vaelab-train ...` in the docs."""
    found = []
    for doc in DOCS:
        for line in doc.read_text().splitlines():
            for match in re.finditer(r"(?:python train\.py|vaelab-train)((?: [^`#|]*)?)", line):
                found.append((doc.name, match.group(0).strip()))
    return sorted(set(found))


def overrides_of(command: str) -> list[str]:
    """The command's overrides as one job: flags dropped, a sweep's first values, placeholders filled."""
    words = shlex.split(re.sub(r"<[^>]*>", "x", command))[1:]
    if words[:1] == ["train.py"]:
        words = words[1:]
    kept = []
    for word in words:
        if word.startswith("-") or word in ("job", "...", "[overrides]", "[KEY=VALUE"):
            continue
        key, _, value = word.partition("=")
        if "," in value and not value.startswith(("[", "{")):  # -m a=1,2,4: the first job
            value = value.split(",")[0]
        kept.append(f"{key}={value}")
    return kept


COMMANDS = training_commands()


def test_the_docs_name_training_commands():
    assert len(COMMANDS) > 30


@pytest.mark.parametrize(("doc", "command"), COMMANDS, ids=[f"{d}: {c}" for d, c in COMMANDS])
def test_every_documented_training_command_composes(doc, command, tmp_path):
    if any(flag in command for flag in NEEDS_MORE):
        pytest.skip("needs a config folder of the user's (tests/test_package.py runs one)")
    images = write_image_folder(tmp_path / "images")  # the docs' stand-in for the reader's own folder
    overrides = [re.sub(r"/path/to/images|\$HOME/[\w-]+", str(images), o) for o in overrides_of(command)]
    validate(without_hydra(compose("train", overrides), tmp_path))


def test_every_config_group_and_option_is_in_configuration_md():
    text = (PROJECT_ROOT / "docs" / "configuration.md").read_text()
    missing = []
    for option in CONFIG_DIR.rglob("*.yaml"):
        group = option.parent.relative_to(CONFIG_DIR).as_posix()
        if group == ".":
            continue  # train.yaml, eval.yaml, ...: the commands' own configs
        if f"`{group}`" not in text or f"`{option.stem}`" not in text:
            missing.append(f"{group}={option.stem}")
    assert not missing, missing
