"""What to generate: counts per (z-bin, class) from a JSON spec, and one row per sample."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..seeding import sample_seeds  # noqa: F401  (part of the spec API)


@dataclass(frozen=True)
class Condition:
    zbin: int
    label: int
    count: int


def _label_index(value, classes: list[str], num_classes: int, where: str) -> int:
    if isinstance(value, str) and value in classes:
        return classes.index(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < max(num_classes, 1):
        raise UserError(f"{where}: label {value!r} is not a class index in [0, {max(num_classes, 1)}) "
                        f"or a class name ({', '.join(classes) or 'none'}); fix the spec")
    return value


def _int_field(entry: dict, key: str, lo: int, hi: int | None, where: str) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value >= hi):
        bound = f"[{lo}, {hi})" if hi is not None else f">= {lo}"
        raise UserError(f"{where}: '{key}' must be an integer {bound}, got {value!r}; fix the spec")
    return value


def _list_field(spec: dict, key: str, where: str, example: str) -> list:
    value = spec[key]
    if not isinstance(value, list):
        raise UserError(f"{where}: '{key}' must be a list, got {json.dumps(value)}; write e.g. \"{key}\": {example}")
    return value


def parse_spec(spec: Any, n_zbins: int, num_classes: int, classes: list[str] | None = None,
               default_count: int = 4, where: str = "spec") -> list[Condition]:
    """Counts per (z-bin, class) from a spec, in a canonical order (z-bin, then class).

    Accepted forms (JSON):
      - None: `default_count` for every (z-bin, class);
      - detailed: [{"zbin": 3, "label": 1, "count": 10}, ...] or {"conditions": [...]};
      - compact: {"count": 4, "zbins": [..], "labels": [..], "overrides": [{"zbin": 3, "count": 0}, ...]}
        where zbins / labels default to all, and an override without "zbin" (or "label") applies to
        every z-bin (or class) of the spec's own zbins (or labels). Labels may be class names.
    """
    classes = list(classes or [])
    n_labels = max(num_classes, 1)
    if spec is None:
        spec = {"count": default_count}
    if isinstance(spec, list):
        spec = {"conditions": spec}
    if not isinstance(spec, dict):
        raise UserError(f"{where}: expected a JSON object or list; see the README's spec format")
    unknown = set(spec) - {"conditions", "count", "zbins", "labels", "overrides"}
    if unknown:
        raise UserError(f"{where}: unknown key(s) {sorted(unknown)}; use conditions, or count / zbins / "
                        "labels / overrides")
    counts: dict[tuple[int, int], int] = {}
    if "conditions" in spec:
        for entry in _list_field(spec, "conditions", where, '[{"zbin": 0, "label": 0, "count": 5}]'):
            if not isinstance(entry, dict):
                raise UserError(f"{where}: each condition must be an object with zbin, label, count")
            key = (_int_field(entry, "zbin", 0, n_zbins, where),
                   _label_index(entry.get("label", 0), classes, num_classes, where))
            counts[key] = counts.get(key, 0) + _int_field(entry, "count", 0, None, where)
    else:
        count = _int_field(spec, "count", 0, None, where) if "count" in spec else default_count
        zbins = _list_field(spec, "zbins", where, "[0, 1, 2]") if "zbins" in spec else list(range(n_zbins))
        labels = _list_field(spec, "labels", where, "[0, 1]") if "labels" in spec else list(range(n_labels))
        zbins = [_int_field({"zbin": z}, "zbin", 0, n_zbins, where) for z in zbins]
        labels = [_label_index(v, classes, num_classes, where) for v in labels]
        for z in zbins:
            for c in labels:
                counts[(z, c)] = count
        overrides = _list_field(spec, "overrides", where, '[{"zbin": 3, "count": 0}]') if "overrides" in spec else []
        for entry in overrides:
            if not isinstance(entry, dict) or "count" not in entry:
                raise UserError(f"{where}: each override needs a count (and optionally zbin, label)")
            n = _int_field(entry, "count", 0, None, where)
            # an axis the override leaves out means the spec's own z-bins / classes, never ones it excluded
            zs = [_int_field(entry, "zbin", 0, n_zbins, where)] if "zbin" in entry else zbins
            cs = [_label_index(entry["label"], classes, num_classes, where)] if "label" in entry else labels
            for z in zs:
                for c in cs:
                    counts[(z, c)] = n
    return [Condition(z, c, n) for (z, c), n in sorted(counts.items()) if n > 0]


def read_spec(path: str | Path | None) -> Any:
    if path is None:
        return None
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: spec file not found; give --spec a JSON file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a spec file; give --spec a JSON file") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file; give --spec a JSON file") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); fix the file") from None


def expand(conditions: list[Condition]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(zbin, label, index within the condition) vectors, one entry per sample."""
    rows = [(c.zbin, c.label, i) for c in conditions for i in range(c.count)]
    arr = np.array(rows, dtype=np.int64).reshape(-1, 3)
    return arr[:, 0], arr[:, 1], arr[:, 2]
