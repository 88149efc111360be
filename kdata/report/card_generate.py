"""The card section of a generated dataset (``kdata generate``; Symbolic KD, arXiv 2110.07178).

Read back from the manifest's ``generate`` section, so ``kdata card DIR`` regenerates it: the
prompts (count and examples), the teacher and decoding settings, the critic's threshold with its
validation precision/recall, the accepted/rejected/quarantined counts and examples of each.
"""

from __future__ import annotations

import math

from kdata.report.markdown import md_code, md_table, md_text

N_CHARS = 160


def _clip(text) -> str:
    """One line of at most ``N_CHARS`` characters (raw: ``md_table`` / ``md_text`` escape it)."""
    s = str(text if text is not None else "").replace("\n", " ")
    return s if len(s) <= N_CHARS else s[:N_CHARS - 1] + "…"


def _row(r: dict, *, score: bool, reason: bool) -> list:
    cells = [md_code(r["sample_id"]), _clip(r.get("prompt")), _clip(r.get("text"))]
    if score:
        v = r.get("score_critic")
        cells.append(f"{v:.3f}" if isinstance(v, (int, float)) and math.isfinite(v) else "–")
    if reason:
        cells.append(r.get("reason") or "–")
    return cells


def _examples(title: str, rows: list[dict], *, score: bool) -> list[str]:
    if not rows:
        return []
    reason = "reason" in rows[0]
    head = ["id", "prompt", "text"] + (["P(accept)"] if score else []) + (["reason"] if reason else [])
    body = [_row(r, score=score, reason=reason) for r in rows]
    return [f"**{title}**", "", *md_table(head, body), ""]


def generate_lines(manifest: dict) -> list[str]:
    """The ``## Generation`` section (empty for datasets that were not generated)."""
    g = manifest.get("generate")
    if not g:
        return []
    d, c, crit = g["decoding"], g["counts"], g.get("critic")
    wrote = (f"The teacher {md_code(g['teacher'])} wrote {g['n_candidates']} candidates: {g['per_prompt']} per prompt for "
             f"{g['prompts']['n']} prompts (Symbolic Knowledge Distillation, arXiv 2110.07178).")
    decoding = (f"Decoding: temperature {d['temperature']}, top-p {d['top_p']}, at most {d['max_new_tokens']} new "
                f"tokens, seed {d['seed']} (each candidate's sampler seeded from seed, prompt id and its index).")
    L = ["## Generation", "", wrote, "", decoding, ""]
    if g.get("finish"):
        L += ["Stopped by: " + ", ".join(f"{md_text(k)} {v}" for k, v in sorted(g["finish"].items())) + ".", ""]
    L += ["Example prompts:", ""] + [f"- {md_code(p['id'])}: {md_text(_clip(p['prompt']))}" for p in g["prompts"]["examples"]] + [""]
    if crit:
        target = ", ".join(f"{k} {v}" for k, v in (crit.get("target") or {}).items()) or "default"
        embedder = f" (embedder {md_code(crit['embedder'])})" if crit.get("embedder") else ""
        L += [f"Critic {md_code(crit['path'])}{embedder}"
              + f": threshold {crit['threshold']:.4f} on P(accept), chosen for {target} on its validation split "
              f"({crit.get('val_n')} labelled rows: precision {crit['val_precision']:.3f}, "
              f"recall {crit['val_recall']:.3f}" + (f", {crit['estimate']}" if crit.get("estimate") else "") + ").", ""]
    else:
        L += ["No critic: every non-empty candidate is kept.", ""]
    L += md_table(["candidates", "accepted (kept)", "rejected by the critic", "quarantined"],
                [[c["candidates"], c["kept"], c["rejected"], c["quarantined"]]]) + [""]
    ex = g.get("examples") or {}
    L += _examples("Accepted", ex.get("accepted") or [], score=bool(crit))
    L += _examples("Rejected (lowest P(accept) first)", ex.get("rejected") or [], score=True)
    L += _examples("Quarantined", ex.get("quarantined") or [], score=False)
    L += ["Rows not kept are in `excluded.parquet` with their prompt, text, reason and critic score.", ""]
    return L


def generated_summary(manifest: dict, *, pool: str) -> list[str]:
    """The ``## Summary`` of a generated dataset: what its rows carry (the generated text, its prompt and
    the teacher's sampled tokens — no soft labels until ``kdata select`` scores it)."""
    g, c = manifest["generate"], manifest["generate"]["counts"]
    how = "kept by the critic" if g.get("critic") else "kept (no critic: every non-empty candidate)"
    return ["## Summary", "",
            f"{c['kept']:,} of {c['candidates']:,} candidates that {md_code(g['teacher'])} wrote for the prompts "
            f"of {md_code(pool)} were {how}. Every row carries the generated text with its prompt, the teacher's "
            f"sampled token ids and log-probabilities and how decoding stopped; it holds no soft labels yet: "
            f"`kdata select --pool DIR` scores the rows with the teacher's per-token soft labels for training. "
            f"{c['rejected']:,} candidates were rejected by the critic and {c['quarantined']:,} quarantined (empty "
            f"or unscorable); the decision of every candidate is in `decisions.parquet`.", ""]


def generated_recipe(manifest: dict) -> list[str]:
    """The ``## Curation recipe`` of a generated dataset: generate, then filter with the critic."""
    g = manifest["generate"]
    d, crit = g["decoding"], g.get("critic")
    steps = [f"The teacher {md_code(g['teacher'])} writes {g['per_prompt']} continuations per prompt "
             f"(temperature {d['temperature']}, top-p {d['top_p']}, at most {d['max_new_tokens']} new tokens, "
             f"seed {d['seed']}); an empty continuation (and, with a critic, one it cannot score) is quarantined."]
    if crit:
        steps.append(f"The critic {md_code(crit['path'])} scores every candidate; those with P(accept) under "
                     f"{crit['threshold']:.4f} are rejected (`critic_reject`).")
    return (["## Curation recipe", ""] + [f"{i}. {s}" for i, s in enumerate(steps, 1)] +
            ["", f"Configuration hash {md_code(manifest.get('config_hash'))}, kdata {manifest.get('kdata_version')}.", ""])


def critic_name(critic) -> str:
    """A critic as the config records it (its path, or a dict naming it) → its name."""
    return str(critic.get("name") or critic.get("path")) if isinstance(critic, dict) else str(critic)
