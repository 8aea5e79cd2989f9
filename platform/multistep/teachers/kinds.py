"""Teacher kinds: what `teacher: {kind: NAME, ...}` means, one registry entry per kind.

Each kind is one file (teachers/analytic.py, teachers/network.py: checkpoint and mlflow, teachers/imported.py:
diffusers, torchscript and state_dict) that declares a TeacherKind and registers it; importing multistep.teachers
registers the built-in ones. The config accepts the registered names and runs the kind's field rules; building a
trial, pre-flight, the sweep's caches, warm starts and exports ask the kind, never its name. Adding a kind: one file
and one test (docs/architecture.md, "Adding a teacher kind").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from multistep import registry


@dataclass(frozen=True)
class TeacherKind:
    """A teacher kind's registry entry. `t` is the `teacher:` config (config.TeacherCfg), `cfg` the trial config."""

    name: str  # the YAML teacher.kind
    # (cfg, load_data, check) -> train.build.Components: schedule, data (None when not load_data and the kind does not
    # need it), teacher f(z, t[, y]) -> x_hat and the student; check: run the kind's plausibility check
    build: Callable
    identity: Callable  # t -> what decides the teacher (cache keys of teacher curves, references, warm starts)
    check: Callable = lambda t: None  # t -> None; rules on its fields (raise registry.FieldError), may normalise them
    # (cfg, sample shape, where) -> None: its files open and fit the data, before anything starts (ConfigError)
    preflight: Callable = lambda cfg, shape, where: None
    copies: Callable = lambda cfg: True  # cfg -> the student starts as a copy of the teacher's network (no warm start)
    network: Callable | None = None  # (cfg, teacher) -> how an export rebuilds a student copied from it (export.py)
    known_shape: Callable = lambda teacher: None  # teacher -> the sample shape its network declares, or None
    exact: bool = False  # the exact denoiser of the data (a data kind with mixture=True): needs the data, no guidance
    imported: bool = False  # trained elsewhere (nets/imported.py): `multistep teacher import`, null_label for guidance
    open: Callable | None = None  # imported: t -> (the network as a denoiser on its student schedule, its declaration)
    declare: Callable | None = None  # imported: t -> its declaration alone (parameterisation, schedule; no network)
    fetched: bool = False  # stands for another kind's teacher that the sweep driver fetches before trials start
    # cfg -> the pipeline folder of a latent teacher (its build encodes the data into latents held in memory, so
    # trials do not stream the data's files; FD is measured on decoded images), or None
    latent: Callable = lambda cfg: None
    opaque: bool = False  # its network is a compiled program (TorchScript): no submodules to read features from


TEACHER_KINDS: dict[str, TeacherKind] = {}


def register(kind: TeacherKind) -> TeacherKind:
    return registry.register(TEACHER_KINDS, kind, "teacher kind")


def null_label_needs_classes(t) -> None:
    """teacher.null_label names a label of a declared num_classes (diffusers folders declare theirs)."""
    if t.null_label is not None and t.num_classes is None:
        raise registry.FieldError("null_label", "needs num_classes")


def teacher_kind(t) -> TeacherKind:
    """The registry entry of a `teacher:` config (its kind was checked against the registry when it was read)."""
    return TEACHER_KINDS[t.kind]
