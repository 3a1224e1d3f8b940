"""The architecture rules: leaves stay leaves, no import cycle anywhere, every module declares ``__all__``.

``networks/`` and ``transforms/`` never import each other or ``pipeline/``; inside ``pipeline/`` neither modules
nor stage sub-packages import each other in a cycle (function-level imports count too: hiding an import in a
function does not remove the dependency); the README's layout table lists exactly the stage folders.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("networks", "transforms", "pipeline")
FORBIDDEN = {"networks": {"transforms", "pipeline"}, "transforms": {"networks", "pipeline"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports anywhere in its body (``if TYPE_CHECKING:`` blocks excepted)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node) for n in node.body}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                package = module_name(path).split(".")
                if path.name != "__init__.py":
                    package = package[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + [node.module])
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in candidates:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = [f for package in PACKAGES for f in sorted((ROOT / package).rglob("*.py"))]
    known = {module_name(f) for f in files}
    return {module_name(f): imported_modules(f, known) - {module_name(f)} for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def stage_of(module: str) -> str:
    """``pipeline.training.engines`` -> ``pipeline.training``; a top-level module is its own stage."""
    parts = module.split(".")
    return ".".join(parts[:2])


@pytest.mark.parametrize("leaf", sorted(FORBIDDEN))
def test_leaves_do_not_import_each_other(leaf):
    graph = import_graph()
    offenders = {
        module: sorted(i for i in imports if i.split(".")[0] in FORBIDDEN[leaf])
        for module, imports in graph.items()
        if module.split(".")[0] == leaf and any(i.split(".")[0] in FORBIDDEN[leaf] for i in imports)
    }
    assert not offenders, f"{leaf}/ must stay a leaf: {offenders}"


def test_no_module_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_stages():
    stages: dict[str, set[str]] = {}
    for module, imports in import_graph().items():
        stages.setdefault(stage_of(module), set()).update(
            stage_of(i) for i in imports if stage_of(i) != stage_of(module)
        )
    cycle = find_cycle(stages)
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def _declares_all(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return True
    return False


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_declares_all(package):
    missing = [
        str(f.relative_to(ROOT))
        for f in sorted((ROOT / package).rglob("*.py"))
        if f.name != "__main__.py" and not _declares_all(f)
    ]
    assert not missing, f"modules without a module-level __all__: {missing}"


def readme_stages() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^\| `pipeline/(\w+)/` \|", readme, flags=re.MULTILINE)


def test_readme_layout_table_lists_the_stage_folders():
    folders = {p.name for p in (ROOT / "pipeline").iterdir() if (p / "__init__.py").is_file()}
    assert set(readme_stages()) == folders, f"README layout table lists {readme_stages()}, pipeline/ has {folders}"


def test_a_stage_imports_only_the_stages_above_it_in_the_readme_table():
    rank = {f"pipeline.{name}": i for i, name in enumerate(readme_stages())}
    wrong = sorted(
        f"{module} imports {imported}"
        for module, imports in import_graph().items()
        for imported in imports
        if stage_of(module) in rank and stage_of(imported) in rank and rank[stage_of(imported)] > rank[stage_of(module)]
    )
    assert not wrong, "a stage imports one listed below it in the README: " + "; ".join(wrong)


# ----------------------------------------------------------------------------------------------- bundle configs
#: The configs every workflow loads, inference included (common.yaml and the network mixins): they may reach only
#: what inference may. Every other config belongs to a training workflow (train, fine-tune, distil, adapt, evaluate).
INFERENCE_CONFIGS = {
    "common.yaml",
    "inference.yaml",
    "inference_classifier.yaml",
    "small_denoiser.yaml",
    "resunet18.yaml",
}
_STAGE_REF = re.compile(r"\bpipeline\.(\w+)\b")


def config_workflow_stage(name: str) -> str:
    """The stage whose workflow runs a bundle config: ``pipeline.inference`` or ``pipeline.training``."""
    return "pipeline.inference" if name in INFERENCE_CONFIGS else "pipeline.training"


def config_references(config: object, key: str = "") -> set[str]:
    """The ``pipeline.<stage>`` a parsed config reaches: ``_target_`` values, ``$`` expressions and ``$import``s."""
    if isinstance(config, dict):
        return set().union(set(), *(config_references(v, str(k)) for k, v in config.items()))
    if isinstance(config, list):
        return set().union(set(), *(config_references(v, key) for v in config))
    if isinstance(config, str) and (key == "_target_" or config.lstrip().startswith("$")):
        return {f"pipeline.{stage}" for stage in _STAGE_REF.findall(config)}
    return set()


def config_violations(name: str, config: object, rank: dict[str, int]) -> list[str]:
    """The stages ``config`` reaches that its workflow may not: a stage listed below the workflow's in the README."""
    own = rank[config_workflow_stage(name)]
    return sorted(f"{name} reaches {stage}" for stage in config_references(config) if rank.get(stage, -1) > own)


def test_the_config_rule_finds_a_violation():
    rank = {f"pipeline.{name}": i for i, name in enumerate(readme_stages())}
    bad = {"net": {"_target_": "pipeline.training.classify.build_classifier"}, "run": ["$pipeline.training.fit.fit()"]}
    assert config_violations("inference.yaml", bad, rank) == ["inference.yaml reaches pipeline.training"]
    assert config_violations("train_denoise.yaml", bad, rank) == []
    assert config_references({"imports": ["$import pipeline.runtime.weights"], "x": "pipeline.training"}) == {
        "pipeline.runtime"
    }


def test_each_bundle_config_reaches_only_the_stages_its_workflow_may():
    """A config reaches (by ``_target_``, ``$`` expression or ``$import``) only its workflow's stage and those above it.

    Inference configs, and the configs every workflow loads, never reach ``pipeline.training``: what running a trained
    network needs (weights, model cards, precision, the classifier builder) is ``pipeline.runtime``.
    """
    import yaml

    rank = {f"pipeline.{name}": i for i, name in enumerate(readme_stages())}
    assert rank["pipeline.inference"] < rank["pipeline.training"]
    wrong = []
    for path in sorted((ROOT / "bundle" / "configs").glob("*.yaml")):
        wrong += config_violations(path.name, yaml.safe_load(path.read_text(encoding="utf-8")), rank)
    assert not wrong, "; ".join(wrong)
