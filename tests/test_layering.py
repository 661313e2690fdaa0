"""Data flows down: every import in src/jsddpm (function-level ones included) points to a lower rank,
never up and never sideways to a sibling of the same rank; and no modules import each other in a cycle."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# bottom -> top; a group is a top-level module or sub-package of jsddpm ("jsddpm" = the package itself)
RANKS = [
    {"jsddpm", "errors", "quiet", "seeding"},  # leaves: version, failures, third-party noise, seed mixing
    {"config"},
    {"io"},
    {"imaging"},
    {"diffusion", "model", "data"},
    {"checkpoint", "draw", "regions", "segmentation"},  # what the stages share
    {"training", "generation", "diagnostics", "diagnose", "metric_doc"},  # sibling stages
    {"pipeline", "study", "export"},  # stages chained
    {"commands", "config_doc"},  # entry points: `jsddpm CMD`, `python -m jsddpm.config_doc`; nothing imports them
    {"cli", "__main__"},
]
RANK = {group: r for r, groups in enumerate(RANKS) for group in groups}

# Edges allowed while a move is under way (a stale entry fails the test too); none today.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()  # none left: keep it empty


def import_graph() -> dict[str, set[str]]:
    """module -> the jsddpm modules it imports anywhere in its body (`from pkg import mod` is pkg.mod)."""
    def is_module(dotted: str) -> bool:
        path = SRC / dotted.replace(".", "/")
        return path.with_suffix(".py").is_file() or path.is_dir()

    graph = {}
    for path in (SRC / "jsddpm").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name.split(".") if parts[-1] == "__init__" else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "jsddpm"}
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else node.module
                if base.split(".")[0] == "jsddpm":
                    found |= {f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base for a in node.names}
        graph[name] = found - {name}
    return graph


def group(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_imports_point_down_and_form_no_cycle():
    graph = import_graph()
    edges = {(a, b) for a, bs in graph.items() for b in bs}
    assert not KNOWN_VIOLATIONS - edges, "fixed: remove these from KNOWN_VIOLATIONS"
    unranked = sorted({group(m) for m in graph} - RANK.keys())
    assert not unranked, f"place these in RANKS: {unranked}"
    wrong = sorted((a, b) for a, b in edges - KNOWN_VIOLATIONS
                   if group(a) != group(b) and RANK[group(b)] >= RANK[group(a)])
    assert not wrong, f"imports up or sideways: {wrong}"
    # cycles: depth-first search over the graph without the known edges
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            assert state.get(n) != 1 or (m, n) in KNOWN_VIOLATIONS, f"import cycle: {path[path.index(n):] + [n]}"
            if (m, n) not in KNOWN_VIOLATIONS and n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
