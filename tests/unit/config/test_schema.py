"""The sweep schema (config/schema.py) through load_sweep: table-driven bad input, every case rejected with one line
naming the file and the field; every sweep file in the repository loads."""

import pytest
import yaml

from multistep.config import ConfigError, load_sweep

S = "search:\n  method.student_steps: {grid: [1, 2]}\n"
CASES = [  # (sweep file text, text the message must contain)
    ("bogus: 1\n", "bogus: unknown key"),
    ("data: {kind: gmm, colour: red}\n", "data.colour: unknown key"),
    ("teacher: {kind: analytic, null_label: 3}\n", "teacher.null_label: needs num_classes"),
    ("teacher: {kind: checkpoint, path: /etc/hosts, null_label: 1}\n", "teacher.null_label: needs num_classes"),
    (
        "teacher: {kind: torchscript, path: /etc/hosts, parameterization: eps, null_label: 1}\n",
        "teacher.null_label: needs num_classes",
    ),
    ("teacher: {kind: hub}\n", "teacher.kind: 'hub': not a teacher kind"),
    ("data: {kind: gmm, shape: [4], rank: 5}\n", "data.rank: exceeds the dimension of shape [4] (4)"),
    ("train: {iterations: many}\n", "train.iterations"),
    ("train: {iterations: 0}\n", "train.iterations"),
    ("train: {iterations: 2.5}\n", "train.iterations"),
    ("train: {learning_rate: -1}\n", "train.learning_rate"),
    ("train: {learning_rate: 0}\n", "train.learning_rate"),
    ("train: {batch_size: 0}\n", "train.batch_size"),
    ("train: {eval_ema: 1.5}\n", "train.eval_ema"),
    ("method: {student_steps: 0}\n", "method.student_steps"),
    ("method: {student_steps: -3}\n", "method.student_steps"),
    ("method: {name: magic}\n", "method.name"),
    ("method: {mode: guess}\n", "method.mode"),
    ("method: {anneal: {name: loglinear, start: 0}}\n", "method.anneal.start"),
    ("method: {anneal: {name: wobbly}}\n", "method.anneal"),
    ("method: {anneal: {name: constant, m: 3}}\n", "method.anneal.m: unknown key"),
    ("method: {loss_weight: snr2}\n", "method.loss_weight"),
    ("method: {distance: l3}\n", "method.distance"),
    ("method: {name: tract, student_steps: 2, time_schedule: [64, 12, 2]}\n", "time_schedule"),
    ("method: {name: tract, student_steps: 4, time_schedule: [64, 8, 2]}\n", "time_schedule must end"),
    ("method: {name: progressive, student_steps: 3, pd_start_steps: 64}\n", "power of 2"),
    ("method: {name: mcm, student_steps: 2, cm_sampler_steps: [2]}\n", "cm_sampler_steps"),
    ("method: {name: flowmap, student_steps: 3}\n", "method.student_steps: must be one of eval_steps [1, 2, 4, 8]"),
    ("method: {name: flowmap, student_steps: 1, flow_ratio: 0.05}\n", "method.s_zero_prob: must be at most"),
    ("method: {name: flowmap, student_steps: 1, weighting: magic}\n", "method.weighting"),
    ("method: {name: flowmap, student_steps: 1, eval_steps: [0]}\n", "method.eval_steps.0"),
    ("method: {name: mcm, gan: true}\n", "method.gan: the GAN head sits on a fake score: method dmd or rcm, not mcm"),
    ("method: {name: dmd, gan_weight: -1}\n", "method.gan_weight"),
    ("method: {guidance: -1}\n", "method.guidance"),
    ("method: {guidance: 1}\n", "method.guidance: needs a class-conditional network teacher"),  # analytic teacher, gmm
    (
        "method: {mode: train, guidance: 1}\n",
        "method.guidance: needs mode: distill and a method with a teacher step (dmd, flowmap, mcm, rcm, scm)",
    ),
    (
        "method: {name: tract, student_steps: 2, guidance: 2}\n",
        "method.guidance: needs mode: distill and a method with a teacher step",
    ),
    ("search:\n  method.guidance: {grid: [0, 1]}\n", "method.guidance: needs a class-conditional"),
    ("data: {shape: [0]}\n", "data.shape.0"),
    ("data: {components: 0}\n", "data.components"),
    ("data: {shape: [4], rank: 5}\n", "data.rank: exceeds the dimension of shape [4] (4)"),
    ("data: {rank: 2, rank_std: 0}\n", "data.rank_std"),
    ("student: {net: unet}\n", "student.net: needs square images [C, H, H]"),  # the default data is 16-D vectors
    ("data: {shape: [3, 12, 12]}\nstudent: {net: unet, ch_mult: [1, 2, 2, 2]}\n", "H divisible by 8"),
    ("student: {net: resnet}\n", "student.net"),
    ("student: {lora: {rank: 2}}\n", "student.lora: adapters go on a copy of the teacher's network"),  # analytic
    ("teacher: {kind: checkpoint, path: /etc/hosts}\nstudent: {lora: {rank: 0}}\n", "student.lora.rank"),
    ("eval: {samples: 0}\n", "eval.samples"),
    ("eval: {teacher_steps: [1, -2]}\n", "eval.teacher_steps.1"),
    ("eval: {extractor: classifier}\n", "eval.extractor: classifier does not fit data.kind gmm"),
    ("eval: {extractor: sift}\n", "eval.extractor"),
    (
        "data: {kind: digits}\nteacher: {kind: checkpoint, path: /etc/hosts}\neval: {extractor: inception}\n",
        "eval.inception_path: extractor: inception needs the local path",
    ),
    (
        "data: {kind: digits}\nteacher: {kind: checkpoint, path: /etc/hosts}\neval: {extractor: inception, inception_path: /nope/inception.pt}\n",
        "eval.inception_path: file not found: /nope",
    ),
    (
        "data: {kind: digits}\nteacher: {kind: checkpoint, path: /etc/hosts}\neval: {extractor: identity}\n",
        "eval.extractor: identity does not fit data.kind digits",
    ),
    ("eval: {kid_subsets: -1}\n", "eval.kid_subsets"),
    ("eval: {kid_subsets: 1}\n", "eval.kid_subsets: a standard error needs at least 2 subsets"),
    ("eval: {batch_size: 0}\n", "eval.batch_size"),
    ("resources: {runner: tune, num_workers: 2}\n", "resources: runner: tune trains in the trial's own process"),
    ("resources: {runner: fast}\n", "resources.runner"),
    ("resources: {num_workers: 0}\n", "resources.num_workers"),
    ("resources: {max_concurrent_trials: 0}\n", "resources.max_concurrent_trials"),
    ("eval: {samples: 1}\n", "eval.samples: an evaluation needs at least 2 samples"),
    ("eval: {samples: 10}\n", "eval.samples: KID's 10 disjoint subsets need at least 20 samples"),
    ("scheduler: {name: hyperband}\n", "scheduler.name"),
    ("search:\n  method.student_steps: {}\n", "give exactly one of"),
    ("search:\n  method.student_steps: {grid: []}\n", "must not be empty"),
    ("search:\n  train.learning_rate: {loguniform: [1.0e-3, 1.0e-4]}\n", "low < high"),
    ("search:\n  nothing.here: {grid: [1]}\n", "search.nothing.here: unknown config path"),
    ("search:\n  method.student_steps: {grid: [1, 0]}\n", "method.student_steps"),
    ("max_trials: 3\nsearch:\n  method.student_steps: {grid: [1, 2, 4, 8]}\n", "more than max_trials"),
    ("eval: {samples: 400, keep_rows: 500}\n", "eval.keep_rows: more rows than eval.samples (400)"),
    ("search_alg: {name: optuna, metric: [fd, nfe]}\n", "search_alg.sampler: several metrics need sampler: nsga2"),
    (
        "search_alg: {name: optuna, sampler: nsga2, metric: [fd, nfe], mode: [min]}\n",
        "search_alg.mode: give one mode per metric (2)",
    ),
    ("search_alg: {name: optuna, metric: [fd, fd], sampler: nsga2}\n", "search_alg.metric: names a metric twice"),
    ("search_alg: {name: random}\n", "search_alg.name"),
    ("search_alg: {name: optuna}\n", "search: search_alg optuna needs at least one axis"),
    (
        "search_alg: {name: optuna}\nsearch:\n  student.hidden: {grid: [16, 32]}\n",
        "search.student.hidden: an adaptive search cannot vary",
    ),
    (
        "search_alg: {name: optuna}\nsearch:\n  train.seed: {grid: [0, 1]}\n",
        "search.train.seed: an adaptive search cannot vary",
    ),
    (
        "search_alg: {name: optuna}\nsearch:\n  - method.student_steps: {grid: [1]}\n",
        "takes one block of axes, not a list",
    ),
    ("search_alg: {name: optuna}\nsearch:\n  method.student_steps: {choice: [1, 0]}\n", "method.student_steps"),
    (
        "search_alg: {name: optuna}\nnum_samples: 300\nsearch:\n  method.student_steps: {grid: [1]}\n",
        "num_samples 300 is more than max_trials",
    ),
    ("scheduler: {name: pbt}\n", "scheduler.mutations: pbt needs at least one of"),
    ("scheduler: {name: pbt, mutations: {train.learning_rate: {grid: [0.1]}}}\n", "give choice, uniform or loguniform"),
    ("scheduler: {name: pbt, mutations: {train.batch_size: {choice: [8]}}}\n", "scheduler.mutations.train.batch_size"),
    (
        "scheduler: {name: pbt, mutations: {train.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}}}\nsearch:\n  method.student_steps: {grid: [4]}\n",
        "scheduler: pbt needs a population: the search gives 1",
    ),
    (
        "scheduler: {name: pbt, mutations: {train.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}}}\nsearch:\n  method.student_steps: {grid: [2, 4]}\n",
        "must share method.student_steps",
    ),
    (
        "scheduler: {name: pbt, mutations: {train.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}}}\nsearch:\n  train.seed: {grid: [0, 1]}\nresources: {num_workers: 2}\n",
        "needs single-worker trials",
    ),
    (
        "scheduler: {name: pbt, mutations: {train.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}}}\nsearch_alg: {name: optuna}\nsearch:\n  train.batch_size: {grid: [32, 64]}\n",
        "cannot be combined with search_alg",
    ),
    (
        "scheduler: {name: pbt, mutations: {method.anneal.end: {choice: [64, 128]}}}\n"
        "method: {name: tract, student_steps: 2}\nsearch:\n  train.seed: {grid: [0, 1]}\n",
        "method.anneal.end needs method.name mcm",
    ),
    (
        "scheduler: {name: pbt, mutations: {train.learning_rate: {uniform: [-1, 1]}}}\n"
        "search:\n  train.seed: {grid: [0, 1]}\n",
        "train.learning_rate",
    ),
    ("name: 'bad name!'\n", "name"),
    ("- just\n- a list\n", "top level must be a mapping"),
    ("42\n", "top level must be a mapping"),
    ("train: {iterations: 1, iterations: 2}\n", "duplicate key"),
    ("train: [unclosed\n", "invalid YAML"),
    ("train:\n\titerations: 3\n", "invalid YAML"),
]


@pytest.mark.parametrize("text, expect", CASES, ids=[f"case{i:02d}" for i in range(len(CASES))])
def test_rejected_with_one_line(tmp_path, text, expect):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_sweep(f)
    msg = str(e.value)
    assert "\n" not in msg and str(f) in msg and expect in msg, msg


def test_valid_files_in_repo_load():
    from conftest import REPO

    for f in (REPO / "sweeps").glob("*.yaml"):
        if f.name.startswith("teacher"):
            continue
        try:
            assert load_sweep(f).trials
        except ConfigError as e:  # a sweep from a trained teacher: valid once `multistep teacher` has written it
            made_later = "teacher.path:" in str(e) and "teacher checkpoint not found" in str(e)
            # or on data a benchmarks/ script writes first (under bench/, named in the file's header)
            made_by_script = "data.path:" in str(e) and "/bench/" in str(e) and "benchmarks/" in f.read_text()
            assert made_later or made_by_script, str(e)


@pytest.mark.parametrize(
    "doc, expect",
    [
        ({"teacher": {"kind": "checkpoint"}}, "teacher.path: required for kind: checkpoint"),
        (
            {"teacher": {"kind": "checkpoint", "path": "nope/teacher.pt"}},
            "nope/teacher.pt: teacher checkpoint not found",
        ),
        (
            {"teacher": {"kind": "hub"}},
            "teacher.kind: 'hub': not a teacher kind (registered: analytic, checkpoint, mlflow, diffusers, torchscript, state_dict)",
        ),
        ({"teacher": {"kind": "mlflow"}}, "teacher.run_id: required for kind: mlflow"),
        (
            {"data": {"kind": "parquet"}, "teacher": {"kind": "mlflow", "run_id": "x"}},
            "data.path: required for kind: parquet",
        ),
        (
            {"data": {"kind": "parquet", "path": "no/such/dir"}, "teacher": {"kind": "mlflow", "run_id": "x"}},
            "data.path: /",
        ),
        ({"data": {"kind": "digits", "size": 12}}, "data.size"),
        ({"data": {"kind": "digits"}}, "teacher: the analytic teacher is the exact denoiser of a gmm"),
    ],
)
def test_sweep_teacher_and_data_errors(tmp_path, doc, expect):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(ConfigError) as e:
        load_sweep(f)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{f}: ") and expect in msg
