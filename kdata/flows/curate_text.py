"""The text branch of the ``curate`` flow: Hugging Face text models (``hf:PATH``, ``builtin:text-*``).

The scoring task of a text unit calls ``kdata.scoring.text.score_text_unit`` — the scorer and score
cache ``kdata select`` uses — with the models loaded through the flow's per-process cache under
the same load options as ``kdata.pipeline.text.prepare_text``; the finish task reports the same
``scoring`` facts as ``kdata.scoring.text.score_text_pool``, so the flow's dataset is the one
``kdata select`` writes. Tasks still pass unit names, paths and checksums, never tables or models.
"""

from __future__ import annotations


def text_load(cfg, run: dict | None) -> dict:
    """The load options of a text run's models (``cfg``: its SelectConfig; ``run``: the flow's run options)."""
    return {"precision": cfg.precision, "trust_remote_code": bool((run or {}).get("trust_remote_code", False)),
            "max_length": cfg.max_length}


def score_text_unit_files(select: dict, u, checksums: dict, score_config: dict, device: str, *, cache: bool,
                          load: dict, model) -> dict:
    """One text unit into the text score cache; ``model(spec, device=, checksum=, **load)`` loads (cached)."""
    from kdata.scoring.text import TextScoreConfig, score_text_unit, text_models

    roles = [r for r in ("teacher", "student", "reference") if select.get(r)]
    m = {r: model(select[r], device=device, checksum=checksums.get(r), **load) for r in roles}
    models = text_models(m["teacher"], m["student"], m.get("reference"))
    path, quarantined, n_in, hit = score_text_unit(u, models, config=TextScoreConfig(**score_config),
                                                   device=device, cache=cache)
    return {"unit": u.name, "path": str(path), "quarantined": [list(q) for q in quarantined],
            "n_in": n_in, "score_cache_hit": hit, "decode_pids": []}


def text_info(prep) -> dict:
    """The manifest's ``scoring`` facts of a text run (what ``score_text_pool`` reports)."""
    models = prep.extra["text_models"]
    info = {"device": str(prep.device).split(":")[0], "precision": models.teacher.precision, "workers": 0,
            "kind": models.kind, "max_length": models.teacher.max_length, "tokenizer_shared": models.shared}
    if models.kind == "causal_lm":
        info["token_topk"] = prep.score_cfg.token_topk  # capped at the teacher's vocabulary by prepare_text
        if models.reference is not None:
            info["reference_tokenizer_shared"] = models.ref_shared
    return info


def empty_scores(prep):
    """An empty scores table of the run's kind (every unit failed)."""
    from kdata.dataset.schema import SCORES_SCHEMA
    from kdata.scoring.text_lm import LM_SCHEMA

    models = prep.extra.get("text_models")
    return LM_SCHEMA.empty_table() if models is not None and models.kind == "causal_lm" else SCORES_SCHEMA.empty_table()
