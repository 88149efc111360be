"""The default recipe's sampler (kdata.selection.methods.coverage): tail cut, strata, allocation."""

import numpy as np
import pytest

from kdata.selection.methods.coverage import allocate, bias_gamma, pick_in_strata
from kdata.selection.tail import label_tail_fraction, tail_fraction
from kdata.selection.run import select
from tests.helpers.methods import random_scores, scores_from_probs


def test_tail_fraction_holds_up_to_half_then_shrinks_as_the_budget_nears_every_row():
    assert tail_fraction(0.1) == pytest.approx(0.3) and tail_fraction(0.5) == pytest.approx(0.3)
    assert tail_fraction(0.7) == pytest.approx(0.1)
    assert tail_fraction(0.9) == pytest.approx(0.05)
    # …and is never below the teacher's expected error rate (clipped to [0.05, 0.3])
    assert tail_fraction(0.7, 0.13) == pytest.approx(0.13) and tail_fraction(0.1, 0.13) == pytest.approx(0.3)
    assert tail_fraction(0.9, 0.6) == pytest.approx(0.3) and tail_fraction(0.7, 0.01) == pytest.approx(0.1)
    # with labels: at most the label-noise estimate (clipped to [0, 0.3]), whatever the teacher's error
    assert tail_fraction(0.1, label_noise=0.12) == pytest.approx(0.12)
    assert tail_fraction(0.1, 0.6, label_noise=0.01) == pytest.approx(0.01)
    assert tail_fraction(0.1, label_noise=0.0) == 0.0
    assert tail_fraction(0.1, label_noise=0.5) == pytest.approx(0.3) and tail_fraction(0.7, label_noise=0.2) == pytest.approx(0.1)
    assert bias_gamma(0.1) < 0 < bias_gamma(0.9) and bias_gamma(0.5) == 0


def test_allocate_fills_small_strata_first_and_covers_every_stratum():
    q = allocate(np.array([1, 5, 10, 0]), np.ones(4), 9)
    assert q.tolist() == [1, 4, 4, 0]
    # easier strata weighted up: more picks, still one for every stratum
    q = allocate(np.array([50, 50, 50]), np.array([4.0, 2.0, 1.0]), 21)
    assert q.sum() == 21 and (q >= 1).all() and q[0] > q[1] > q[2]
    # budget below the number of strata: no stratum gets two
    q = allocate(np.array([3, 3, 3, 3]), np.ones(4), 2)
    assert q.sum() == 2 and q.max() == 1


def test_pick_in_strata_takes_the_smallest_numbers():
    strata = np.array([0, 0, 0, 1, 1])
    u = np.array([0.5, 0.1, 0.9, 0.3, 0.2])
    assert pick_in_strata(strata, np.array([2, 1]), u).tolist() == [0, 1, 4]


@pytest.mark.parametrize("frac", [0.1, 0.3, 0.6])
def test_coverage_records_the_tail_cut_and_covers_strata(tmp_path, frac):
    rng = np.random.default_rng(5)
    scores = random_scores(tmp_path, rng, 400, 4, name=f"c{frac}.parquet")
    budget = int(frac * 400)
    sel = select(scores, methods=["coverage"], budget=budget, seed=2, num_classes=4)
    info = sel.info["coverage"]
    assert int(sel.kept.sum()) == budget
    n_tail = int((sel.reason == "coverage_tail").sum())
    conf = scores.column("teacher_conf").to_numpy()
    eps = float(np.mean(1.0 - conf))
    lp = scores.column("teacher_label_prob").to_numpy(zero_copy_only=False)
    labelled = np.isfinite(lp)
    assert 0 < labelled.sum() < 400  # some rows carry no label (-1): only the label-free stage sees them
    eta = float(np.mean(conf[labelled] - lp[labelled]))
    assert info["teacher_error"] == pytest.approx(eps) and info["label_noise"] == pytest.approx(eta)
    room = 400 - budget
    n_label = min(int(np.floor(label_tail_fraction(eta) * labelled.sum())), room)
    label_cut = np.flatnonzero(labelled)[np.argsort(lp[labelled], kind="stable")[:n_label]]
    left = np.setdiff1d(np.arange(400), label_cut)
    assert info["teacher_error_left"] == pytest.approx(float(np.median(1.0 - conf[left])))
    beta = tail_fraction(budget / 400, label_noise=eta, error_left=info["teacher_error_left"])
    n_ood = min(int(np.floor(beta * (400 - n_label))), room - n_label)
    assert (info["label_cut"], info["ood_cut"]) == (n_label, n_ood)
    assert info["tail_cut"] == n_tail == n_label + n_ood
    # the label stage cut the labelled rows the teacher believes least
    cut_lp = lp[(sel.reason == "coverage_tail") & labelled]
    if n_label:
        assert np.sort(lp[labelled])[n_label - 1] >= cut_lp.min()
    # every class x bin stratum with rows got a pick (the budget allows it here)
    assert info["strata_nonempty"] <= budget and info["strata_picked"] == info["strata_nonempty"]
    left = sel.reason != "coverage_tail"
    pred = scores.column("teacher_pred").to_numpy()
    assert set(pred[sel.kept]) == set(pred[left])
    # the tail is the most junk-like: higher outlier score than every kept row
    typical = sel.scores["score_coverage"] - sel.kept  # 1 - outlier score
    assert typical[sel.reason == "coverage_tail"].max() <= typical[sel.kept].min()


def flip_labels(rng: np.random.Generator, true: np.ndarray, c: int, rate: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(labels, flipped mask): a ``rate`` share of the rows labelled with the next class instead of their own."""
    flipped = rng.random(len(true)) < rate
    label = true.copy()
    label[flipped] = (true[flipped] + 1) % c
    return label, flipped


def teacher_probs(true: np.ndarray, conf: np.ndarray, c: int) -> np.ndarray:
    """Teacher probabilities: ``conf`` on the true class, the rest spread evenly over the others."""
    p_t = np.zeros((len(true), c))
    p_t[np.arange(len(true)), true] = conf
    return p_t + ((1 - conf) / (c - 1))[:, None] * (p_t == 0)


def teacher_and_student(rng: np.random.Generator, n: int, c: int, *, conf: tuple[float, float],
                        student_weight: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(true classes, teacher confidence, p_T, p_S): a teacher ``conf``-sure of the true class, a student
    that mixes it with the uniform distribution (``student_weight`` of the teacher)."""
    true = rng.integers(0, c, n)
    confidence = rng.uniform(*conf, n)
    p_t = teacher_probs(true, confidence, c)
    return true, confidence, p_t, student_weight * p_t + (1 - student_weight) / c


def test_a_teacher_sure_of_the_rows_left_cuts_few_of_them(tmp_path):
    """Labels 20% wrong, a teacher confident and right everywhere: the label stage takes the wrong
    labels (η̂ ≈ 0.2), and the label-free stage, capped at twice the teacher's expected error on the
    rows left (≈ 2 × 0.03), no longer takes another η̂ of good rows."""
    rng = np.random.default_rng(6)
    n, c = 400, 4
    true, conf, p_t, p_s = teacher_and_student(rng, n, c, conf=(0.94, 0.99), student_weight=0.5)
    label, flipped = flip_labels(rng, true, c)
    info = select(scores_from_probs(tmp_path, p_t, p_s, label=label), methods=["coverage"], budget=100, seed=0,
                  num_classes=c).info["coverage"]
    eta, left = info["label_noise"], info["teacher_error_left"]
    assert 0.15 < eta < 0.25 and 0.01 < left < 0.06
    assert info["ood_tail_fraction"] == pytest.approx(2 * left) and info["ood_tail_fraction"] < eta / 2
    assert info["ood_cut"] <= 2 * left * (n - info["label_cut"])


def test_coverage_cuts_the_rows_whose_label_the_teacher_rejects(tmp_path):
    """Mislabelled rows (teacher confident in another class) form the tail; without labels the
    label-free signals decide and the rule falls back to the teacher's error rate."""
    rng = np.random.default_rng(3)
    n, c = 300, 3
    true, conf, p_t, p_s = teacher_and_student(rng, n, c, conf=(0.5, 0.95), student_weight=0.7)
    label, flipped = flip_labels(rng, true, c)
    scores = scores_from_probs(tmp_path, p_t, p_s, label=label)
    sel = select(scores, methods=["coverage"], budget=90, seed=0, num_classes=c)
    info = sel.info["coverage"]
    assert info["tail_signals"] == ["teacher_label_disagreement", "teacher_low_confidence", "kl_ts"]
    eta = info["label_noise"]
    # η̂ = mean(max p_T − p_T(label)): zero on the clean rows, conf − (1 − conf)/2 on the flipped ones
    assert eta == pytest.approx(float(np.sum(conf[flipped] - (1 - conf[flipped]) / 2)) / n, abs=1e-4)
    tail = sel.reason == "coverage_tail"
    n_label = int(np.floor(label_tail_fraction(eta) * n))
    assert info["label_cut"] == n_label > 0
    # the label stage takes the rows the teacher believes least, all of them mislabelled here (η̂
    # counts the probability gap, so with a teacher this unsure it cuts fewer rows than are flipped)
    least = np.argsort(scores.column("teacher_label_prob").to_numpy(), kind="stable")[:n_label]
    assert flipped[least].all() and tail[least].all()
    assert flipped[sel.kept].mean() < flipped.mean() / 2
    unlabelled = scores_from_probs(tmp_path, p_t, p_s, name="u.parquet")
    info = select(unlabelled, methods=["coverage"], budget=90, seed=0, num_classes=c).info["coverage"]
    assert info["label_noise"] is None and "teacher_label_disagreement" not in info["tail_signals"]
    assert any(s.startswith("tail_signal_label_agreement") for s in info["skipped"])


def test_a_pool_whose_labels_the_teacher_confirms_loses_few_rows(tmp_path):
    """Clean labelled pool: both stages take only the small label-noise estimate (no floor), not the
    budget term's 30% — on a clean pool the hardest rows are informative. Unlabelled, the same scores
    give no such evidence and the budget term cuts its 30%."""
    rng = np.random.default_rng(4)
    n, c = 400, 4
    true, conf, p_t, p_s = teacher_and_student(rng, n, c, conf=(0.85, 0.99), student_weight=0.6)
    label = true.copy()
    label[:12] = (true[:12] + 1) % c  # 3% of the labels wrong
    clean = scores_from_probs(tmp_path, p_t, p_s, label=label)
    info = select(clean, methods=["coverage"], budget=100, seed=0, num_classes=c).info["coverage"]
    eta = info["label_noise"]
    assert 0.02 < eta < 0.05 and info["ood_tail_fraction"] == pytest.approx(eta)
    assert info["label_cut"] == int(np.floor(eta * n))
    assert info["tail_cut"] == info["label_cut"] + info["ood_cut"] <= 2 * eta * n
    unlabelled = scores_from_probs(tmp_path, p_t, p_s, name="u.parquet")
    info = select(unlabelled, methods=["coverage"], budget=100, seed=0, num_classes=c).info["coverage"]
    assert info["ood_tail_fraction"] == pytest.approx(0.3) and info["tail_cut"] == int(0.3 * n)


def test_coverage_without_embeddings_or_dedup_skips_and_records(tmp_path):
    scores = random_scores(tmp_path, np.random.default_rng(0), 60, 3)
    assert "embedding" not in scores.column_names
    sel = select(scores, methods=["coverage"], budget=59, seed=0, num_classes=3)  # no dedup hook given
    info = sel.info["coverage"]
    assert any(s.startswith("tail_signal_centroid_distance") for s in info["skipped"])
    assert any(s.startswith("dedup") for s in info["skipped"])
    assert info["tail_cut"] <= 1 and int(sel.kept.sum()) == 59  # never cut below the budget


def test_coverage_on_scores_without_teacher_signals_skips_the_tail():
    import pyarrow as pa

    scores = pa.table({"sample_id": [f"t{i}" for i in range(30)]})  # e.g. sequence scores with no class columns
    sel = select(scores, methods=["coverage"], budget=10, seed=0, num_classes=1)
    info = sel.info["coverage"]
    assert int(sel.kept.sum()) == 10 and info["tail_cut"] == 0 and info["difficulty"] == "none"
    assert any(s.startswith("tail_cut") for s in info["skipped"])


def test_rows_dedup_removed_before_the_sampler_have_no_coverage_score(tmp_path):
    """A duplicate never reached the sampler: its score_coverage is NaN, not 0.0 (which skewed the
    rejected rows' score quantiles in inspect and the card)."""
    scores = random_scores(tmp_path, np.random.default_rng(1), 80, 3)

    def every_fifth_is_a_copy(view, order):  # the select() dedup hook's contract: dup_of per visited row
        dup_of = np.full(len(order), -1)
        dup_of[5::5] = 0
        return dup_of, {"removed": int((dup_of >= 0).sum())}

    sel = select(scores, methods=["coverage"], budget=20, seed=0, num_classes=3, dedup=every_fifth_is_a_copy)
    dup = sel.stage == "dedup"
    cov = sel.scores["score_coverage"]
    assert dup.sum() == 15 and np.isnan(cov[dup]).all() and np.isfinite(cov[~dup]).all()
    assert int(sel.kept.sum()) == 20
