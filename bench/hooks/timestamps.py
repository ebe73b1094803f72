"""Series completion times, for ``bench/registration.py`` (``OXIDIP_HOOKS=timestamps``,
``PYTHONPATH=bench/hooks``): ``on_series_complete`` appends ``<time.time()> <SeriesInstanceUID>``
as one line to the file named by ``BENCH_TIMESTAMPS_FILE``."""

import os
import time

#: The environment variable naming the file the lines are appended to.
ENV = "BENCH_TIMESTAMPS_FILE"


def on_series_complete(series) -> None:  # oxidip.registry.SeriesRow
    now = time.time()
    line = f"{now:.6f} {series.series_instance_uid}\n"
    # One short write in append mode: a line is never interleaved with another.
    with open(os.environ[ENV], "a") as out:
        out.write(line)
