"""Runs ``oxidip bench forward`` (``oxidip.bench.forward``): the same stored files forwarded to
dcmtk storescp by oxidip's engine, dcmsend and storescu; writes the report, its raw data and
its chart to ``bench/results/``.

    .venv/bin/python bench/forward.py                      # the full comparison
    .venv/bin/python bench/forward.py --quick --repeats 1  # smoke test
"""

import sys

from oxidip.bench.forward import main

if __name__ == "__main__":
    sys.exit(main())
