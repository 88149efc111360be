"""The built-in ``builtin:digits-web`` pool as a quality-benchmark pool (same shape as ``openclipart.build``).

Nothing is built: the pool, test split and models ship with kdata. The ground truth of pool seed 0
(``kdata.pools.builtin.digits_web_truth``) is written once to ``$KDATA_CACHE/bench-digits/truth.parquet``
so both pools hand the benchmark the same kind of file.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from openclipart import Bench, cache_root  # noqa: E402  (the same record; cache beside it)


def build(*, log=print) -> Bench:
    from kdata.core.atomic import write_parquet
    from kdata.pools.builtin import digits_web_truth

    truth = cache_root().parent / "bench-digits" / "truth.parquet"
    if not truth.is_file():
        write_parquet(truth, digits_web_truth(seed=0))
    return Bench(name="digits", pool="builtin:digits-web", eval="builtin:digits-test",
                 teacher="builtin:digits-teacher", student="builtin:digits-student", truth=truth,
                 info={"pool_rows": 1457, "classes": [str(i) for i in range(10)]})
