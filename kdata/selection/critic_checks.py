"""What a fitted critic must be used with: the models whose statistics it was fitted on, and its own files.

A critic's features are the teacher's and the student's statistics of a sample (``critic_model``,
``critic_text``), so its cut only holds for the models it was fitted with. ``kdata critic fit``
records their checksums in ``critic.json``: under ``text`` (``teacher_checksum`` /
``student_checksum``, beside the ``teacher`` / ``student`` specs) for a text critic, under
``models`` (the same four keys) for an image critic scored with models (``{"scores_file": …}``
and ``scores_sha256`` when it was fitted on a scores Parquet, whose models kdata cannot know). Every consumer that
feeds the critic statistics of loaded models compares their checksums with the recorded ones
and refuses a mismatch in one line (``check_fitted_models``); a critic written before the
checksums were recorded keeps working, with one note (``kdata.core.warn``).

``critic_digest`` is the sha256 of the critic's files: runs that use a critic hash it into their
config, so refitting a critic in place is a different run, never "already complete".

Public API: ``critic_digest(dir)``, ``model_record(teacher, student)``, ``recorded_models(critic)``,
``check_fitted_models(dir, critic, teacher=, student=)``, ``require_image_critic(dir, critic, why=)``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from kdata.core.errors import KdataError, printable
from kdata.core.warn import warn

CRITIC_FILES = ("critic.json", "critic.npz")
ROLES = ("teacher", "student")


def critic_digest(path: str | Path | None) -> str | None:
    """``sha256:`` over the critic's files (names and contents); None without a critic directory."""
    if not path:
        return None
    d = Path(path)
    if not all((d / n).is_file() for n in CRITIC_FILES):
        return None
    h = hashlib.sha256()
    for name in CRITIC_FILES:
        h.update(f"{name}\0".encode())
        h.update(hashlib.sha256((d / name).read_bytes()).hexdigest().encode())
    return "sha256:" + h.hexdigest()


def model_record(teacher, student) -> dict:
    """What a critic records about the models whose statistics it was fitted on (specs and checksums)."""
    return {"teacher": teacher.spec, "teacher_checksum": teacher.checksum,
            "student": student.spec, "student_checksum": student.checksum}


def recorded_models(crit) -> dict | None:
    """``{role: (spec, checksum)}`` of the models the critic was fitted with (only those recorded with a
    checksum); None for a critic written before kdata recorded them."""
    rec = crit.text if crit.is_text else crit.models
    if rec is None or (crit.is_text and not any(f"{r}_checksum" in rec for r in ROLES)):
        return None
    return {r: (rec.get(r), rec[f"{r}_checksum"]) for r in ROLES if rec.get(f"{r}_checksum")}


def check_fitted_models(path, crit, *, teacher=None, student=None) -> None:
    """One line (exit 2) when ``teacher`` or ``student`` (loaded models; None: not in use) has another
    checksum than the model of that role the critic was fitted with; one note (``kdata.core.warn``) when the
    critic records no checksums."""
    rec = recorded_models(crit)
    in_use = {r: m for r, m in (("teacher", teacher), ("student", student)) if m is not None}
    if rec is None:
        if in_use:
            warn(f"{path}: the critic records no model checksums (fitted before kdata recorded "
                 f"them), so the {' and '.join(in_use)} it scores with cannot be checked against the models it "
                 "was fitted with; refit it to have them checked", note=True)
        return
    for role, model in in_use.items():
        if role not in rec or model.checksum == rec[role][1]:
            continue
        spec, fitted = rec[role]
        raise KdataError(f"{path}: the critic was fitted on the statistics of {role} {printable(spec)} "
                         f"({str(fitted)[:19]}), but the {role} in use, {printable(model.spec)}, is "
                         f"{str(model.checksum)[:19]}; its cut does not hold for other models — score with the "
                         f"{role} it was fitted with, or refit the critic")


def require_image_critic(path, crit, *, why: str) -> None:
    """One line when ``crit`` is a text critic where an image critic is needed (``why``: what needs it)."""
    if crit.is_text:
        raise KdataError(f"{path}: a text critic (fitted on causal-LM statistics of text); {why} needs an image "
                         "critic: kdata critic fit --scores-from IMAGE_POOL with the dataset's image teacher and "
                         "student")
