"""Entry point for `ray job submit` and schedulers: `python jobs/sweep.py sweeps/quickstart.yaml [options]`.

Same arguments as `multistep sweep`; no logic of its own.
"""

import sys

from multistep.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
