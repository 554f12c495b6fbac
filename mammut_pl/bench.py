"""`python -m mammut_pl.bench ...`: the old form of `python -m bench` (the benchmark moved out of the
package to bench/ of the source checkout); runs it with the same arguments."""

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "run.py").is_file():
        sys.exit(f"the benchmark lives in bench/ of a source checkout (not found beside {root / 'mammut_pl'}): "
                 "run `make bench` there")
    sys.path.insert(0, str(root))
    runpy.run_module("bench", run_name="__main__", alter_sys=True)
