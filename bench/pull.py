"""Runs ``oxidip bench pull`` (``oxidip.bench.pull``): the same series retrieved from Orthanc
by ``oxidip pull`` (move and get), dcmtk movescu (to storescp) and getscu, against Orthanc's
own push; writes the report, its raw data and its chart to ``bench/results/``.

    .venv/bin/python bench/pull.py                      # the full comparison
    .venv/bin/python bench/pull.py --quick --repeats 1  # smoke test
"""

import sys

from oxidip.bench.pull import main

if __name__ == "__main__":
    sys.exit(main())
