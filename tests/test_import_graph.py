"""vaelab's modules import each other without a cycle (scripts/import_graph.py, over the source)."""

import importlib.util

from helpers import PROJECT_ROOT

spec = importlib.util.spec_from_file_location("import_graph", PROJECT_ROOT / "scripts" / "import_graph.py")
import_graph = importlib.util.module_from_spec(spec)
spec.loader.exec_module(import_graph)


def test_the_walk_finds_a_cycle_where_there_is_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_graph.cycles(graph) == [["a", "b", "c", "a"]]
    assert import_graph.cycles({"a": {"b"}, "b": set()}) == []


def test_vaelab_has_no_import_cycle():
    graph = import_graph.import_graph()
    assert {"vaelab.module", "vaelab.checkpointing", "vaelab.training"} <= set(graph)
    assert "vaelab.module" in graph["vaelab.training"]  # imports inside functions count
    assert import_graph.cycles(graph) == []
