"""YAML I/O: read a sweep or teacher file (unique keys, size limit, one-line errors) and validate it as a model."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from multistep.config.errors import ConfigError, describe

MAX_FILE_BYTES = 1 << 20  # sweep files are small; anything larger is a mistake


class _UniqueKeyLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: file not found")
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(
                f"{p}: file is {p.stat().st_size} bytes, more than the {MAX_FILE_BYTES} allowed for a sweep file"
            )
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read: {e}") from None
    try:
        doc = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}: invalid YAML{where}: {problem}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: top level must be a mapping of settings, got {type(doc).__name__}")
    return doc


def with_eval(doc: dict, opts: dict | None) -> dict:
    """A copy of a sweep or trial document with eval.* replaced by opts (before validation: an override such as
    `multistep eval --extractor pixel` must not trip over a detector path that exists only on the training host)."""
    return {**doc, "eval": {**(doc.get("eval") or {}), **opts}} if opts else doc


def validate_file(model: type[BaseModel], path: str | os.PathLike, eval_overrides: dict | None = None):
    """Read a YAML file and validate it as `model`: (config, raw document); ConfigError with a one-line message."""
    doc = with_eval(read_yaml(path), eval_overrides)
    try:
        return model.model_validate(doc), doc
    except ValidationError as e:
        raise ConfigError(f"{path}: {describe(e)}") from None
