"""The structure figures of issue 37 ("one owner for each concept"), rerunnable by anyone:

    python tools/structure_counts.py [--root platform/multistep] [--limit 60]

- functions longer than --limit lines in sweep/ and longer than 80 anywhere (argparse builders `add_parser` and
  `add_*_options` aside), longest first;
- `kind == "..."` / `kind != "..."` / `kind in (...)` comparisons (of `kind`, `x.kind` or `x["kind"]`), per file, and among them the dispatches on a
  registered teacher or data kind's name (what the registries own);
- MLflow client calls (`client.<method>(` on an MlflowClient, `mlflow.<function>(`) inside and outside tracking/,
  in modules that import MLflow or multistep.tracking (sweep/submit.py's `client` is Ray's JobSubmissionClient);
- package modules with functions or classes that have no mirror test file tests/unit/<package>/test_<module>.py;
- functions outside commands/ and cli.py that take an argparse namespace (a parameter named `args`; the GPU kit's
  own command line, bench/gpu_check.py, aside), and functions that take a progress printer (a parameter named `say`
  or `progress`, or one defaulting to `print`).
"""

from __future__ import annotations

import argparse
import ast
from collections import Counter
from pathlib import Path

CLIENT_NAMES = {"client"}  # how the package names its MlflowClient objects
PRINTERS = {"say", "progress"}  # how the package named the progress printers it passed down
ARGPARSE_BUILDERS = ("add_parser", "add_run_options", "add_data_check_option")


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def _is_kind(node: ast.AST) -> bool:
    """`kind`, `x.kind` or `x["kind"]`."""
    return (
        (isinstance(node, ast.Attribute) and node.attr == "kind")
        or (isinstance(node, ast.Name) and node.id == "kind")
        or (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value == "kind")
    )


def _kind_dispatches(tree: ast.AST, names: frozenset = frozenset()) -> int:
    """Comparisons of something named kind with constants (with `names`: only those naming one of them)."""
    n = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and _is_kind(node.left):
            consts = [c for c in node.comparators if isinstance(c, ast.Constant | ast.Tuple | ast.List | ast.Set)]
            values = {v.value for c in consts for v in ast.walk(c) if isinstance(v, ast.Constant)}
            n += bool(consts) and (not names or bool(values & names))
    return n


def _registered_kinds() -> frozenset:
    """The names of the registered teacher and data kinds."""
    from multistep.data import DATA_KINDS
    from multistep.teachers import TEACHER_KINDS

    return frozenset(DATA_KINDS) | frozenset(TEACHER_KINDS)


def _uses_mlflow(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and ("mlflow" in node.module or "tracking" in node.module):
            return True
        if isinstance(node, ast.Import) and any("mlflow" in a.name for a in node.names):
            return True
    return False


def _mlflow_calls(tree: ast.AST) -> int:
    n = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        recv = node.func.value
        if isinstance(recv, ast.Name) and (recv.id in CLIENT_NAMES or recv.id == "mlflow"):
            n += 1
        elif isinstance(recv, ast.Attribute) and recv.attr == "client":  # logger.client.set_tag(...)
            n += 1
    return n


def _params(f) -> set[str]:
    a = f.args
    return {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs}


def _takes_printer(f) -> bool:
    a = f.args
    defaults = a.defaults + [d for d in a.kw_defaults if d is not None]
    prints = any(isinstance(d, ast.Name) and d.id == "print" for d in defaults)
    return prints or bool(_params(f) & PRINTERS)


def _scan_functions(tree: ast.AST, rel: str, limit: int, found: dict) -> None:
    """Long functions, argparse namespaces outside the CLI and progress printers of one module, into `found`."""
    cli = rel.startswith("commands/") or rel in ("cli.py", "bench/gpu_check.py")
    for f in _functions(tree):
        lines, where = f.end_lineno - f.lineno + 1, f"{rel}:{f.lineno} {f.name}"
        if lines > (limit if rel.startswith("sweep/") else 80) and not f.name.startswith(ARGPARSE_BUILDERS):
            found["long"].append((lines, where))
        if "args" in _params(f) and not cli:
            found["namespaces"].append(where)
        if _takes_printer(f):
            found["printers"].append(where)


def scan(root: Path, tests: Path, limit: int) -> dict:
    """Every count of the module docstring, per file."""
    found = {"long": [], "namespaces": [], "printers": [], "unmirrored": [], "modules": 0}
    kinds, owned, calls = Counter(), Counter(), Counter()
    registered = _registered_kinds()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text())
        if path.name != "__init__.py" and any(isinstance(n, ast.FunctionDef | ast.ClassDef) for n in tree.body):
            found["modules"] += 1
            if not (tests / path.relative_to(root).parent / f"test_{path.stem}.py").is_file():
                found["unmirrored"].append(rel)
        _scan_functions(tree, rel, limit, found)
        kinds[rel] = _kind_dispatches(tree)
        owner = rel.startswith(("teachers/", "data/")) or rel in ("config/schema.py", "registry.py")
        owned[rel] = 0 if owner else _kind_dispatches(tree, registered)  # a kind's own file and the registries
        calls["tracking/" if rel.startswith("tracking/") else rel] += _mlflow_calls(tree) if _uses_mlflow(tree) else 0
    return found | {"kinds": kinds, "owned": owned, "calls": calls}


def _listed(title: str, rows) -> None:
    rows = list(rows)
    print(f"{title}: {len(rows)}")
    for row in rows:
        print(f"  {row}")


def _counted(title: str, counter: Counter) -> None:
    print(f"{title}: {sum(counter.values())}")
    for rel, n in counter.most_common():
        if n:
            print(f"  {n:4d}  {rel}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    repo = Path(__file__).resolve().parents[1]
    p.add_argument("--root", default=str(repo / "platform" / "multistep"))
    p.add_argument("--tests", default=str(repo / "tests" / "unit"), help="the unit tests that mirror the package")
    p.add_argument("--limit", type=int, default=60, help="line limit for functions in sweep/ (default 60)")
    args = p.parse_args()
    c = scan(Path(args.root), Path(args.tests), args.limit)
    long = [f"{n:4d}  {where}" for n, where in sorted(c["long"], reverse=True)]
    _listed(f"functions over the limit ({args.limit} lines in sweep/, 80 elsewhere)", long)
    _counted("kind dispatches", c["kinds"])
    _counted("  of which on a registered teacher or data kind, outside its own file", c["owned"])
    print(f"modules with logic and no mirror test file: {len(c['unmirrored'])} of {c['modules']}")
    for rel in c["unmirrored"]:
        print(f"  {rel}")
    _listed("functions outside commands/ taking an argparse namespace", c["namespaces"])
    _listed("functions taking a progress printer (say, progress, or a parameter defaulting to print)", c["printers"])
    calls = c["calls"]
    inside = calls.pop("tracking/", 0)
    print(f"MLflow client calls: {inside + sum(calls.values())}, outside tracking/: {sum(calls.values())}")
    for rel, n in calls.most_common():
        if n:
            print(f"  {n:4d}  {rel}")


if __name__ == "__main__":
    main()
