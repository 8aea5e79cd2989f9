"""Entry point for `ray job submit` and schedulers: `python jobs/sweep.py sweeps/quickstart.yaml [options]`.

Same arguments as `multistep sweep`; no logic of its own.
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("multistep") is None:  # a bare checkout (e.g. a job's working dir): use its source root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

import multistep  # noqa: E402
from multistep.cli import main  # noqa: E402

if __name__ == "__main__":
    print(f"multistep {multistep.__version__} from {Path(multistep.__file__).parent}", flush=True)
    sys.exit(main(["sweep", *sys.argv[1:]]))
