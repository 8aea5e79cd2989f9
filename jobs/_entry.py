"""Shared by the scripts in jobs/: run `multistep <command>` from an installed package or a bare checkout."""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("multistep") is None:  # a bare checkout (e.g. a job's working dir): use its source root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))


def run(command: str) -> None:
    import multistep
    from multistep.cli import main

    print(f"multistep {multistep.__version__} from {Path(multistep.__file__).parent}", flush=True)
    sys.exit(main([command, *sys.argv[1:]]))
