"""The structure figures of issue 37 ("one owner for each concept"), rerunnable by anyone:

    python tools/structure_counts.py [--root platform/multistep] [--limit 60]

- functions longer than --limit lines in sweep/ and longer than 80 anywhere (argparse builders `add_parser` and
  `add_*_options` aside), longest first;
- `kind == "..."` / `kind != "..."` / `kind in (...)` comparisons (of `kind`, `x.kind` or `x["kind"]`), per file, and among them the dispatches on a
  registered teacher or data kind's name (what the registries own);
- MLflow client calls (`client.<method>(` on an MlflowClient, `mlflow.<function>(`) inside and outside tracking/,
  in modules that import MLflow or multistep.tracking (sweep/submit.py's `client` is Ray's JobSubmissionClient);
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(Path(__file__).resolve().parents[1] / "platform" / "multistep"))
    p.add_argument("--limit", type=int, default=60, help="line limit for functions in sweep/ (default 60)")
    args = p.parse_args()
    root = Path(args.root)
    long, kinds, owned, calls = [], Counter(), Counter(), Counter()
    namespaces, callbacks = [], []
    registered = _registered_kinds()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text())
        for f in _functions(tree):
            lines = f.end_lineno - f.lineno + 1
            limit = args.limit if rel.startswith("sweep/") else 80
            if lines > limit and not f.name.startswith(ARGPARSE_BUILDERS):
                long.append((lines, f"{rel}:{f.lineno} {f.name}"))
            where = f"{rel}:{f.lineno} {f.name}"
            cli = rel.startswith("commands/") or rel in ("cli.py", "bench/gpu_check.py")
            if "args" in _params(f) and not cli:
                namespaces.append(where)
            if _takes_printer(f):
                callbacks.append(where)
        kinds[rel] = _kind_dispatches(tree)
        owner = rel.startswith(("teachers/", "data/")) or rel in ("config/schema.py", "registry.py")
        owned[rel] = 0 if owner else _kind_dispatches(tree, registered)  # a kind's own file and the registries
        calls["tracking/" if rel.startswith("tracking/") else rel] += _mlflow_calls(tree) if _uses_mlflow(tree) else 0
    print(f"functions over the limit ({args.limit} lines in sweep/, 80 elsewhere): {len(long)}")
    for n, where in sorted(long, reverse=True):
        print(f"  {n:4d}  {where}")
    print(f"kind dispatches: {sum(kinds.values())}")
    for rel, n in kinds.most_common():
        if n:
            print(f"  {n:4d}  {rel}")
    print(f"  of which on a registered teacher or data kind, outside its own file: {sum(owned.values())}")
    for rel, n in owned.most_common():
        if n:
            print(f"  {n:4d}  {rel}")
    print(f"functions outside commands/ taking an argparse namespace: {len(namespaces)}")
    for where in namespaces:
        print(f"  {where}")
    print(f"functions taking a progress printer (say, progress, or a parameter defaulting to print): {len(callbacks)}")
    for where in callbacks:
        print(f"  {where}")
    inside = calls.pop("tracking/", 0)
    print(f"MLflow client calls: {inside + sum(calls.values())}, outside tracking/: {sum(calls.values())}")
    for rel, n in calls.most_common():
        if n:
            print(f"  {n:4d}  {rel}")


if __name__ == "__main__":
    main()
