"""Loading a text model leaves the caller's process as it was: the first use of a built-in text model
(trained then) reseeded the global torch RNG, and every text model load set transformers' logging to
ERROR and turned its progress bars off for good."""

from __future__ import annotations

import torch
from transformers.utils import logging as hf_logging

from kdata.models.spec import load_model


def test_first_use_of_a_builtin_text_model_leaves_rng_and_transformers_logging(tmp_path, monkeypatch):
    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "cache"))  # empty: the student is trained here (≈ 30 s)
    saved = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    try:
        hf_logging.set_verbosity_info()
        hf_logging.enable_progress_bar()
        torch.manual_seed(123)
        state = torch.random.get_rng_state()
        model = load_model("builtin:text-student")
        assert (tmp_path / "cache" / "models").is_dir()  # trained in this test, not found in a cache
        assert torch.equal(torch.random.get_rng_state(), state)
        assert hf_logging.get_verbosity() == hf_logging.INFO and hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_warning()
        hf_logging.disable_progress_bar()
        again = load_model("builtin:text-student")  # cached now: a plain load
        assert again.checksum == model.checksum
        assert hf_logging.get_verbosity() == hf_logging.WARNING and not hf_logging.is_progress_bar_enabled()
        assert torch.equal(torch.random.get_rng_state(), state)
    finally:
        hf_logging.set_verbosity(saved[0])
        (hf_logging.enable_progress_bar if saved[1] else hf_logging.disable_progress_bar)()
