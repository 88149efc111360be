"""Build real scores tables (through a real Parquet file and kdata.scoring.byo) for the methods tests."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_predictions(path, t_logits, s_logits, *, ids=None, label=None, domain=None, extra=None) -> str:
    t_logits = np.asarray(t_logits, dtype=np.float32)
    s_logits = np.asarray(s_logits, dtype=np.float32)
    n = len(t_logits)
    cols = {"sample_id": pa.array(ids if ids is not None else [f"s{i}" for i in range(n)], pa.string()),
            "teacher_logits": pa.array(t_logits.tolist(), pa.list_(pa.float32())),
            "student_logits": pa.array(s_logits.tolist(), pa.list_(pa.float32()))}
    if label is not None:
        cols["label_idx"] = pa.array(np.asarray(label, dtype=np.int32))
    if domain is not None:
        cols["domain"] = pa.array(list(domain), pa.string())
    for k, v in (extra or {}).items():
        cols[k] = v
    pq.write_table(pa.table(cols), path)
    return str(path)


def scores_from_probs(tmp_path, p_teacher, p_student, name="p.parquet", **kw) -> pa.Table:
    """A scores table whose probabilities are exactly ``p_teacher``/``p_student`` (logits = log p)."""
    from kdata.scoring.byo import load_scores

    path = write_predictions(tmp_path / name, np.log(np.asarray(p_teacher, dtype=np.float64)),
                             np.log(np.asarray(p_student, dtype=np.float64)), **kw)
    return load_scores(path)[0]


def random_scores(tmp_path, rng, n, c, *, name="r.parquet", domains=("a", "b", "c")) -> pa.Table:
    from kdata.scoring.byo import load_scores

    t = rng.normal(size=(n, c)) * 3
    s = t + rng.normal(size=(n, c)) * 2
    label = rng.integers(-1, c, size=n)
    dom = [domains[i] for i in rng.integers(0, len(domains), size=n)]
    path = write_predictions(tmp_path / name, t, s, label=label, domain=dom)
    return load_scores(path)[0]


# rows s0..s3, two classes: the hand-computed cases of the methods tests
PT = [[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.1, 0.9]]
PS = [[0.8, 0.2], [0.2, 0.8], [0.6, 0.4], [0.05, 0.95]]
# combined confidence max((pT + pS)/2): s0 .85, s1 .55 (they disagree), s2 .60, s3 .925


def kept_ids(scores, sel) -> list[str]:
    """The kept rows' sample ids, sorted."""
    ids = np.array(scores.column("sample_id").to_pylist())
    return sorted(ids[sel.kept].tolist())
