"""Every registered method on zero and one candidate rows (causal-LM and classifier scores), alone and
behind a critic that lets nothing through: an empty selection, never a crash. End to end: a text pool
whose every row is quarantined gives an empty dataset under ``ddk`` and ``critic,ddk``."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from kdata.selection.critic_model import feature_matrix, fit_critic
from kdata.selection.critic_text import TEXT_STATS
from kdata.selection.methods import available
from kdata.selection.run import select
from tests.helpers.methods import scores_from_probs

METHODS = sorted(available())


def lm_scores(n: int, *, t_nll: float = 1.0) -> pa.Table:
    """Causal-LM scores as ``kdata.scoring.text`` writes them (the columns the methods and critic read)."""
    return pa.table({"sample_id": [f"x{i}" for i in range(n)], "label_idx": pa.array([-1] * n, pa.int32()),
                     "teacher_nll": pa.array([t_nll + i for i in range(n)], pa.float32()),
                     "student_nll": pa.array([t_nll + 0.5 + i for i in range(n)], pa.float32()),
                     "teacher_entropy": pa.array([0.5] * n, pa.float32()),
                     "kl_ts": pa.array([0.1 * (i + 1) for i in range(n)], pa.float32()),
                     "n_tokens": pa.array([8] * n, pa.int32()),
                     "domain": pa.array(["a", "b"] * (n // 2) + ["a"] * (n % 2))})


@pytest.fixture(scope="module")
def critics(tmp_path_factory) -> dict:
    """A text critic on the LM statistics and an image critic on the score features; both accept a row
    only when the teacher is sure of it (low NLL / high confidence)."""
    root = tmp_path_factory.mktemp("few-critics")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, len(TEXT_STATS) + 1)) * 0.3 + np.array([1.0, 1.5, 0.5, 0.1, 8.0, 0.5])
    X[:100, 0] += 30.0  # teacher NLL ≥ ~30: rejected
    text = fit_critic(X, np.arange(200) >= 100, feature_names=[*TEXT_STATS, "nll_gap"], recall=0.9)
    text.text = {"kind": "text"}
    img_rows = scores_from_probs(root, [[0.95, 0.05], [0.55, 0.45]] * 40, [[0.9, 0.1], [0.5, 0.5]] * 40)
    Xi, names = feature_matrix(img_rows, embedding=False)
    image = fit_critic(Xi + rng.normal(size=Xi.shape) * 1e-3, np.arange(80) % 2 == 0, feature_names=names, recall=0.9)
    return {"lm": str(text.save(root / "text")), "image": str(image.save(root / "image"))}


def _scores(kind: str, n: int, tmp_path, *, reject_all: bool = False) -> pa.Table:
    if kind == "lm":
        return lm_scores(n, t_nll=50.0 if reject_all else 1.0)
    pt = [[0.55, 0.45] if reject_all else [0.95, 0.05]] * max(n, 1)  # 0 rows: a 1-row file, sliced
    t = scores_from_probs(tmp_path, pt, [[0.5, 0.5]] * len(pt), domain=["a", "b"][:len(pt)])
    return t.slice(0, n)


def _options(method: str, table: pa.Table, critic: str) -> dict:
    opts = {"critic": {"path": critic}}
    if method == "coverage" and "domain" in table.column_names:
        opts["coverage"] = {"domains": table.select(["sample_id", "domain"])}
    return opts


def _run(table, chain, critic, kind):
    return select(table, methods=chain, budget=1, seed=0, num_classes=260 if kind == "lm" else 2,
                  options=_options(chain[-1], table, critic))


@pytest.mark.parametrize("kind", ["lm", "image"])
@pytest.mark.parametrize("n", [0, 1])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_zero_and_one_rows(method, n, kind, critics, tmp_path):
    table = _scores(kind, n, tmp_path)
    sel = _run(table, [method], critics[kind], kind)
    assert len(sel.kept) == n and int(sel.kept.sum()) == n  # the one row clears every method at budget 1
    for name, sc in sel.scores.items():
        assert sc.shape == (n,), name


@pytest.mark.parametrize("kind", ["lm", "image"])
@pytest.mark.parametrize("method", [m for m in METHODS if m != "critic"])
def test_a_critic_that_rejects_every_row_leaves_the_next_method_nothing(method, kind, critics, tmp_path):
    table = _scores(kind, 2, tmp_path, reject_all=True)
    sel = _run(table, ["critic", method], critics[kind], kind)
    assert not sel.kept.any() and list(sel.reason) == ["critic_reject"] * 2 and list(sel.stage) == ["critic"] * 2


def _embedding_critic(path, embedder: str) -> str:
    """A text critic that also embeds the text (a real tiny transformers embedder), fitted on made-up rows."""
    from kdata.selection.critic_text import embedder_info

    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, len(TEXT_STATS) + 1 + 32))
    crit = fit_critic(X, X[:, 0] > 0, feature_names=[*TEXT_STATS, "nll_gap", *[f"emb_{j}" for j in range(32)]],
                      recall=0.8)
    crit.text = {"kind": "text", **embedder_info(embedder)}
    return str(crit.save(path))


@pytest.mark.parametrize("chain", ["ddk", "critic,ddk", "critic,kd3", "coverage", "default"])
def test_an_all_quarantined_text_pool_gives_an_empty_dataset(chain, tmp_path, capsys):
    """The reviewer's pool: an empty text, a one-token text (too short for a causal LM), a number."""
    pytest.importorskip("transformers")
    from kdata.cli import main
    from tests.helpers.text_models import text_assets, tiny_lm

    d = text_assets()
    pool = tmp_path / "allbad.jsonl"
    pool.write_text('{"text": ""}\n{"text": "a"}\n{"text": 5}\n')
    extra = []
    if chain.startswith("critic"):
        emb = f"hf:{tiny_lm(tmp_path / 'emb', seed=4)}"
        extra = ["--critic", _embedding_critic(tmp_path / "critic", emb)]
    out = tmp_path / "o"
    capsys.readouterr()
    rc = main(["select", "--pool", str(pool), "--teacher", f"hf:{d / 't'}", "--student", f"hf:{d / 's'}",
               "--method", chain, "--budget", "1.0", "--out", str(out), "--device", "cpu", "--json", *extra])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    c = json.loads(cap.out)["counts"]
    assert (c["n_in"], c["kept"], c["rejected"], c["quarantined"]) == (3, 0, 0, 3)
    assert (out / "manifest.json").is_file()
