"""Per-sweep shared material, computed once and cached on disk by content hash:
the evaluation reference (data sample, fixed noise, teacher ODE solutions), the teacher's own
metric-versus-steps curve, and the warm-start weights every student starts from (analytic teacher;
a network teacher is its students' starting point). Network teachers are keyed by their file's
content, so the cache follows a retrained checkpoint and is shared by path and MLflow names of one file."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from multistep.config import ConfigError, TrialCfg
from multistep.data import as_float, data_kind
from multistep.metrics.diversity import diversity_rows
from multistep.metrics.evaluate import repeated_teacher_curve
from multistep.metrics.evaluator import first_rows, reference_builder, teacher_curve_of
from multistep.metrics.extractors import (
    ClassifierExtractor,
    DecodedExtractor,
    InceptionExtractor,
    features_fn,
    label_checks,
)
from multistep.metrics.reference import load_for
from multistep.metrics.streaming import load_ref
from multistep.teachers import teacher_kind
from multistep.tracking.teachers import resolve_mlflow_teacher
from multistep.train.build import build, uses_labels
from multistep.train.checkpoint import cached, content_hash
from multistep.train.loop import WarmStart, warm_start

log = logging.getLogger(__name__)


def resolve_teachers(trials: list, cache_dir: Path) -> None:
    """Fetch every MLflow teacher (once, from $MLFLOW_TRACKING_URI) and put the local teacher into the trial configs
    (a checkpoint path, or an imported teacher's files and declaration), so Ray workers need no MLflow access."""
    seen: dict[str, object] = {}
    for trial in trials:
        t = trial.cfg.teacher
        if teacher_kind(t).fetched:
            key = f"{t.run_id}/{t.artifact_path}"
            if key not in seen:
                seen[key] = resolve_mlflow_teacher(t, cache_dir)
                log.info(f"teacher of MLflow run {t.run_id}: {seen[key].kind} {seen[key].path}")
            trial.cfg.teacher = seen[key].model_copy()


def prompt_ids(cfg: TrialCfg):
    """The caption ids of eval.prompts (one caption of the data per line, blank lines skipped), or None; a prompt
    that is not among the data's captions is a ConfigError naming the file and line."""
    if not cfg.eval.prompts:
        return None
    kind = data_kind(cfg.data)
    words = kind.captions(cfg.data) if kind.captions else None
    if not words:
        raise ConfigError(f"eval.prompts: fixed prompts need caption data; {cfg.data.label} has no captions")
    from multistep.nets.text import prompt_ids as read_prompts

    of = f"a caption of {cfg.data.label} (the teacher's text tables cover the data's captions)"
    try:
        return read_prompts(cfg.eval.prompts, words, "eval.prompts: ", of)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def alignment_for(cfg: TrialCfg, device: str = "cpu", decode=None):
    """The CLIP text alignment of a trial's caption-conditioned samples (eval.clip_path; metrics/clip.py), decoding
    a latent teacher's samples first (with `decode`, or its own VAE); None without eval.clip_path."""
    if not cfg.eval.clip_path:
        return None
    from multistep.metrics.clip import Alignment, ClipScore

    kind, root = data_kind(cfg.data), teacher_kind(cfg.teacher).latent(cfg)
    captions = kind.captions(cfg.data) if kind.captions else None
    if captions is None:  # pre-flight refuses eval.clip_path without caption data
        return None
    decode = decode or (DecodedExtractor(root, device).decode if root else None)
    return Alignment(ClipScore(cfg.eval.clip_path, device), captions, decode)


def make_extractor_for(cfg: TrialCfg, data, cache_dir: Path):
    """The feature extractor of cfg.eval.extractor (None for identity / pixel: the samples themselves).
    classifier: a small MLP trained once on the trial's labelled images, cached in cache_dir by data and settings."""
    space = cfg.feature_space
    if space == "inception":  # the reference's and the teacher curve's features: on a GPU when this process has one
        return InceptionExtractor(cfg.eval.inception_path, "cuda" if torch.cuda.is_available() else "cpu")
    if space == "pixel" and (root := teacher_kind(cfg.teacher).latent(cfg)):  # latents: FD of the decoded images
        return DecodedExtractor(root)
    if space != "classifier":
        return None
    if getattr(data, "labels", None) is None:
        raise ConfigError(
            f"eval.extractor: classifier needs labelled data (data.kind {cfg.data.kind} has no class labels)"
        )
    captioned = getattr(data, "captions", None) is not None
    if captioned and getattr(data, "classes", None) is None:
        raise ConfigError(
            f"eval.extractor: classifier on caption data needs a label column (each row's class) in {cfg.data.path}"
        )
    y, label_classes = (data.classes, data.caption_classes()) if captioned else (data.labels, None)
    ext = ClassifierExtractor(
        dataset=cfg.data.kind, data=(as_float(data.x), y), cache_dir=cache_dir, label_classes=label_classes
    )
    log.info(
        f"feature classifier {'trained' if ext.trained else 'from the cache'}: held-out accuracy {ext.accuracy:.3f} ({ext.path})"
    )
    return ext


def prepare(cfg: TrialCfg, cache_dir: Path) -> dict:
    """What every trial of a sweep shares, each piece cached in cache_dir by what decides it: the evaluation
    reference, the teacher's curve, the warm start, and (eval.keep_rows) the rows `multistep claims` pairs."""
    c = build(cfg)
    base = {"data": data_kind(cfg.data).identity(cfg.data), "teacher": teacher_kind(cfg.teacher).identity(cfg.teacher)}
    ev = cfg.eval
    ext = make_extractor_for(cfg, c.data, cache_dir)
    features = None if ext is None else features_fn(ext, c.data.shape)
    ref, ref_key = _reference(cfg, c, base, ext, features, cache_dir)
    n_div = diversity_rows(ev)  # the reference rows every point's precision / recall are measured against
    div_ref = first_rows(c, ref, ev, features, n_div) if n_div else None
    curve = _teacher_curve(cfg, c, ref, ref_key, ext, features, div_ref, cache_dir)
    rows = None
    if ev.keep_rows:  # for `multistep claims`: the reference's and the floor's rows, and every teacher point's
        rows_key = content_hash({"ref": ref_key, "keep": ev.keep_rows, "floor": True})
        make_rows = lambda: kept_reference_rows(c, ref, ev, features)
        rows = cached(cache_dir / f"evalrows-{rows_key}.pt", make_rows) | curve["kept"]
    init = _warm_start(cfg, c, base, cache_dir)
    return {
        "diversity_ref": div_ref,
        "eval_ref": ref.to_dict(),
        "eval_ref_hash": ref_key,
        "teacher_rows": curve["rows"],
        "init": None if init is None else init["state"],
        "init_report": None if init is None else init["report"],
        "extractor": None if ext is None else ext.spec(),
        "eval_rows": rows,  # the driver logs them on the sweep run; they do not travel to the trials
    }


def _reference(cfg: TrialCfg, c, base: dict, ext, features, cache_dir: Path):
    """(the evaluation reference: fixed noise, labels, teacher-ODE rows and data statistics, its cache key)."""
    ev = cfg.eval
    labelled = uses_labels(c.teacher, getattr(c.data, "labels", None) is not None)  # conditional teacher + labels
    prompts = prompt_ids(cfg) if labelled else None  # eval.prompts: fixed captions instead of drawn ones
    reference = load_for(ev)
    if reference is not None and reference.features is None and ev.kid_subsets:
        log.warning(f"note: {ev.reference} holds statistics only (no features): KID is skipped")
    ref_key = content_hash(
        {**base, "samples": ev.samples, "ode_steps": ev.ode_steps, "seed": ev.seed}
        | ({"ode_rows": ev.ode_rows} if ev.ode_rows != ev.samples else {})  # (the keys of whole-reference ODEs stay)
        | ({"labels": "data-distribution"} if labelled else {})  # fixed labels are part of the reference
        | ({"features": ext.key} if ext else {})
        | ({"kid_subsets": ev.kid_subsets} if ev.kid_subsets else {})
        | ({"reference": reference.sha256} if reference else {})
        | ({"stream": True} if ev.streaming else {})
        | ({"prompts": prompts.tolist()} if prompts is not None else {})
    )

    def make_ref():
        log.info(
            f"computing evaluation reference ({ev.samples} samples, {ev.ode_steps}-step teacher ODE for {ev.ode_rows}"
            + (", labels drawn from the data" if labelled else "")
            + (", streamed)" if ev.streaming else ")")
        )
        make = reference_builder(ev)
        args = (c.data, c.teacher, c.schedule, ev.samples, ev.ode_steps, ev.seed, cfg.feature_space, labelled)
        ref = make(*args, features, ev.kid_subsets, ev.ode_rows, reference, prompts=prompts)
        return ref.to_dict() | {"hash": ref_key}

    return load_ref(cached(cache_dir / f"evalref-{ref_key}.pt", make_ref)), ref_key


def _teacher_curve(cfg: TrialCfg, c, ref, ref_key: str, ext, features, div_ref, cache_dir: Path) -> dict:
    """{"rows": the teacher's DDIM and aDDIM points (with diversity), "kept": their rows for `multistep claims`}."""
    ev = cfg.eval
    n_div = diversity_rows(ev)
    curve_key = content_hash(
        {"ref": ref_key, "steps": ev.teacher_steps}
        | ({"bootstrap": ev.bootstrap} if ev.bootstrap else {})
        | ({"keep_rows": ev.keep_rows} if ev.keep_rows else {})  # the curve keeps every point's rows
        | ({"repeats": ev.repeats} if ev.repeats > 1 else {})
        | ({"diversity": [n_div, ev.knn_k]} if n_div else {})
    )

    def make_curve():
        log.info(f"computing the teacher curve (DDIM and aDDIM at {ev.teacher_steps} steps)")
        rows, kept = repeated_teacher_curve(
            teacher_curve_of(ev),
            c.teacher,
            c.schedule,
            c.data,
            ref,
            ev.teacher_steps,
            ev.repeats,  # the same noise seeds as the students' points
            ev.seed,
            keep=max(ev.keep_rows, n_div),
            extractor=cfg.feature_space,
            bootstrap=ev.bootstrap,
            features=features,
            kid_subsets=ev.kid_subsets,
            checks=label_checks(ext, alignment_for(cfg, decode=getattr(ext, "decode", None))),  # one VAE
        )
        if n_div:  # the teacher's points get the students' diversity metrics, from the same rows
            rows += teacher_diversity(cfg, c.data, div_ref, rows, kept)
        return {"rows": rows, "kept": {k: v[: ev.keep_rows] for k, v in kept.items()} if ev.keep_rows else {}}

    return cached(cache_dir / f"teachercurve-{curve_key}.pt", make_curve)


def _warm_start(cfg: TrialCfg, c, base: dict, cache_dir: Path) -> dict | None:
    """{"state", "report"} of the student's warm start by v-regression onto the teacher (per seed), or None where the
    student is a copy of the teacher or student.init_iterations is 0."""
    s = cfg.student
    if s.init_iterations == 0 or teacher_kind(cfg.teacher).copies(cfg):
        return None
    init_key = content_hash({**base, "student": s.model_dump(), "seed": cfg.train.seed})

    def make_init():
        log.info(
            f"warm-starting the student: up to {s.init_iterations} iterations of v-loss regression onto the teacher "
            f"({s.init_optimizer}, lr {s.init_learning_rate:g} {s.init_schedule})"
        )
        sample = lambda g: c.data.sample(cfg.train.batch_size, g)
        ws = WarmStart(
            s.init_iterations,
            s.init_learning_rate,
            cfg.train.seed,
            s.init_optimizer,
            s.init_schedule,
            s.init_check_every,
            s.init_patience,
            s.init_min_improvement,
        )
        state, report = warm_start(c.student.net, c.schedule, c.teacher, sample, ws)
        log.info(
            f"warm start: {report['iterations']} iterations ({report['stopped']}), v-space error against the teacher "
            + ", ".join(f"t={t:g}: {e:.3g}" for t, e in report["v_rmse"].items())
        )
        return {"state": state, "report": report}

    return cached(cache_dir / f"init-{init_key}.pt", make_init)


def teacher_diversity(cfg, data, reference, rows: list[dict], kept: dict) -> list[dict]:
    """Result rows of the diversity metrics of every teacher point, from its kept rows (as the trials measure theirs)."""
    from multistep.metrics.evaluate import metric_rows
    from multistep.sweep.worker import trial_diversity

    names, measure = trial_diversity(cfg, data, reference)
    nfe = {(r["method"], r["student_steps"]): r["nfe"] for r in rows}
    out = []
    for key, x in kept.items():
        label, steps = key.rsplit("_", 1)
        point = {"method": label, "student_steps": int(steps), "nfe": nfe[(label, int(steps))]}
        out += [point | r for r in metric_rows(measure(x, cfg.eval.bootstrap), names)]
    return out


def kept_reference_rows(c, ref, ev, features) -> dict:
    """{reference: the features of the reference's first eval.keep_rows data rows, floor: those of the second data
    sample the floor is measured on} (float32); the teacher's kept rows come with its curve."""
    k = ev.keep_rows
    return {"reference": first_rows(c, ref, ev, features, k), "floor": first_rows(c, ref, ev, features, k, True)}
