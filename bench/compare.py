"""Runs ``oxidip bench compare`` (``oxidip.bench.compare``): oxidip and its peers side by side
on the same workloads; writes the report, its raw data and its chart to ``bench/results/``.

    .venv/bin/python bench/compare.py                  # the full comparison, ~20 minutes
    .venv/bin/python bench/compare.py --quick --repeats 1   # smoke test, under a minute
"""

import sys

from oxidip.bench.compare import main

if __name__ == "__main__":
    sys.exit(main())
