"""Entry point for the performance benchmark on a cluster node or a GPU box:
`python jobs/bench.py --size imagenet64 --precision bf16 --compile --channels-last --out bench.json`.

Same arguments as `multistep bench`; no logic of its own.
"""

from _entry import run

if __name__ == "__main__":
    run("bench")
