"""The one evaluator: what a sweep's assets, a trial and `multistep eval` build and run, in memory or streamed
(`eval.stream`: metrics/streaming.py, memory bounded in the sample count) behind one set of functions, so no caller
branches on which one (metrics/evaluate.py and metrics/streaming.py are the two implementations)."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from multistep.metrics.evaluate import make_eval_ref, teacher_curve
from multistep.metrics.streaming import StreamRef, make_stream_ref, stream_teacher_curve


def reference_builder(ev):
    """make_eval_ref or, for eval.stream, make_stream_ref (the same arguments)."""
    return make_stream_ref if ev.streaming else make_eval_ref


def teacher_curve_of(ev):
    """teacher_curve or, for eval.stream, stream_teacher_curve in batches of eval.batch_size (the same arguments)."""
    return partial(stream_teacher_curve, batch_size=ev.batch_size) if ev.streaming else teacher_curve


def final_points(evaluations, ref, names, ev, device, features, checks, rank: int, diversity=None):
    """[(label, steps, samples for the grid, metrics, nfe, kept rows)] of every point of the curve on rank 0
    (conditional students: the reference's fixed labels); streamed in batches with a StreamRef, else held in memory.
    kept rows: the features of the first eval.keep_rows rows (float32; None when 0). With eval.repeats = K > 1 each
    point is evaluated from K noise seeds (the reference's, then seed + 1000 r): its metrics are their mean,
    "<metric>_repeat_std" their standard deviation; the paired ODE error and the kept rows are the first's.
    diversity: rows -> precision / recall (/ coverage) of the first eval.diversity_rows feature rows, or None."""
    if rank != 0:
        return []
    runs = [
        _points(evaluations, ref.with_noise_seed(r, ev.seed), names, ev, device, features, checks, r == 0, diversity)
        for r in range(ev.repeats)
    ]
    if ev.repeats == 1:
        return runs[0]
    out = []
    for i, (label, steps, x, metrics, nfe, kept) in enumerate(runs[0]):
        merged = dict(metrics)
        for k in names.values():
            if k == names["ode"] or k not in metrics:
                continue
            vals = [run[i][3][k] for run in runs]
            merged[k], merged[f"{k}_repeat_std"] = float(np.mean(vals)), float(np.std(vals, ddof=1))
        out.append((label, steps, x, merged, nfe, kept))
    return out


def _points(evaluations, ref, names, ev, device, features, checks, first: bool, diversity=None) -> list:
    from multistep.metrics.diversity import diversity_rows
    from multistep.metrics.evaluate import bootstrap_se, evaluate, sample_points
    from multistep.metrics.paired import kept_rows
    from multistep.metrics.streaming import stream_points

    keep = ev.keep_rows if first else 0
    n_div = diversity_rows(ev) if diversity else 0
    if isinstance(ref, StreamRef):
        points = stream_points(evaluations, ref, names, ev.batch_size, device, features, checks, keep=max(keep, n_div))
        out = []
        for label, steps, p, nfe in points:
            rows = p.kept_rows()
            metrics = p.result() | (diversity(rows[:n_div], ev.bootstrap if first else 0) if n_div else {})
            x = p.samples_for_grid()  # images: the first 64; vectors: the kept rows (a 2-D scatter's points)
            x = torch.from_numpy(rows) if x.ndim == 2 and rows is not None else x
            out.append((label, steps, x, metrics, nfe, rows[:keep] if keep else None))
        return out
    out = []
    for label, steps, x, nfe in sample_points(evaluations, ref.noise, ref.labels, ev.batch_size, device):
        feats = features(x)
        metrics = evaluate(x, ref, names, feats, ev.kid_subsets, checks)
        if ev.bootstrap and first:
            metrics |= bootstrap_se(x, ref, names, ev.bootstrap, ev.seed, feats)
        if n_div:
            metrics |= diversity(kept_rows(x if feats is None else feats, n_div), ev.bootstrap if first else 0)
        kept = kept_rows(x if feats is None else feats, keep)
        out.append((label, steps, x, metrics, nfe, kept))
    return out


def first_rows(c, ref, ev, features, k: int, floor: bool = False):
    """The features of the first k rows of the reference's data sample (floor: of the second sample the floor is
    measured on), float32; only those k rows are featurised."""
    from multistep.metrics.evaluate import data_samples
    from multistep.metrics.paired import kept_rows
    from multistep.metrics.streaming import STREAM_DATA, STREAM_OTHER, data_rows

    if isinstance(ref, StreamRef):
        rows = data_rows(c.data, ev.seed, STREAM_OTHER if floor else STREAM_DATA, 0, k)
    else:
        rows = data_samples(c.data, ev.samples, ev.seed)[2 if floor else 1][:k]
    return kept_rows(rows if features is None else features(rows), k)
