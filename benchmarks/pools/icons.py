"""A third benchmark pool from real images: Debian's ``oxygen-icon-theme`` icons, made webly collected.

    python benchmarks/pools/icons.py            # build (or reuse) the pool and models, print where

The KDE Oxygen icons (PNGs filed by size and category folders, ``usr/share/icons/oxygen/base/<size>/
<category>/``) are fetched with ``apt-get download oxygen-icon-theme`` (32 MB) and unpacked with
``dpkg -x`` into ``$KDATA_CACHE/bench-icons/`` — never into the repository. Without apt or dpkg (or
offline), ``build`` raises ``Unavailable`` with one line saying why, and the quality benchmark skips
the pool.

Every icon is taken at ONE size (``roots``: 48×48, else 64, 32, 128, 256 — 16 and 22 px are left
out), so an icon never reaches two splits at two sizes. Symlinks (aliases such as
``mimetypes/application-x-archive`` → ``application-x-ar``) are dropped, and so are renders identical
or nearly so to an earlier one (``dup_rms`` 6: RMS difference ≤ 6 of 255 — the same drawing filed
under two names, e.g. ``apps/kmail`` = ``apps/internet-mail``; 15 icons): the first is kept, a
drawing filed under two classes (``actions/system-search`` = ``apps/kfind``,
``actions/mail-mark-unread`` ≈ ``places/mail-message``) leaves both, and junk that matches a class
icon is dropped. What remains is family resemblance
(``text-calendar``/``text-vcalendar``, RMS 10), which stays. Classes are the six category folders
with enough distinct icons (``SPEC.classes``: actions 633, mimetypes 182, apps 177, status 83,
devices 59, places 47); the other folders (applets, categories, emblems, emotes, animations: 107
icons) are junk.

Per class, a seeded shuffle splits the icons (each class capped at ``cap``) into a clean held-out
**test** split (22%), the **pool base** (38%), and of the rest — the icons past the cap included —
up to ``teacher_cap`` are the teacher's clean training split (360 icons: 140 actions, 19 places);
the student is pre-trained on ``student_per_class`` (12) icons per class of that split, so there is
something to distil. The pool mixes, as a web crawl would (fractions of the pool): ``clean`` (an icon
with its folder's label), ``label_noise`` (15%, filed under a wrong folder), ``shift`` (15%, rendered
differently with its right label: inverted, heavily blurred, rotated by 90–270° or a small crop
blown up), ``junk`` (15%, out-of-class icons — two thirds — and noise textures, with a random
label) and ``near_dup`` (10%, a lightly noised, re-encoded or shifted copy of a clean or mislabelled
row). The v1 build: 499 pool rows (clean 224, label_noise 75, shift 75, junk 75, near_dup 50) and 173
test rows (actions 53 … places 10: the majority class is 31%).

Images are ``size``×``size`` RGB PNGs (transparency composited on white, the icon's bounding box
padded to a square); pool schema, ``source``/``domain`` and ``truth.parquet`` as in
``openclipart.py`` (the shared machinery is ``webpool.py``). Teacher (CNN widths ``teacher_widths``,
94k parameters, 100 epochs) and student (``student_widths``, 6k) are
``kdata.models.digits_net.DigitsNet`` with three input channels, trained here (seeded, one thread)
and exported as ``.pt2`` + sidecar. On the clean test split the teacher scores 0.58 and the student
before distillation 0.40 (six classes; per class the teacher is best on mimetypes, 0.90, and worst
on apps, 0.23 — every application has its own drawing). The teacher is data-bound: other splits of
the same icons gave 0.58–0.65, more epochs or widths within that spread. The first build takes about
two minutes on one busy core (the teacher ~100 s); everything is cached under a directory named for
``version`` and the size, ``info.json`` is written last, and a rerun reuses it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import webpool
from webpool import Bench, Spec, Unavailable  # noqa: F401  (re-exported for quality.py)

SPEC = Spec(
    name="icons", package="oxygen-icon-theme", png_root="usr/share/icons/oxygen/base", version="icons-web-v1",
    roots=("48x48", "64x64", "32x32", "128x128", "256x256"), unique=True, dup_rms=6.0,
    classes={c: [c] for c in ("actions", "apps", "mimetypes", "status", "devices", "places")},
    seed=20250, size=48, cap=240, teacher_cap=140, min_per_class=40,
    teacher_widths=(32, 64, 128), student_widths=(8, 16, 32), teacher_epochs=100, student_epochs=60,
)


def build(*, log=print) -> Bench:
    """The pool, test split, truth and models (cached; see the module docstring). Raises ``Unavailable``."""
    return webpool.build(SPEC, log=log)


def main() -> int:
    return webpool.main(SPEC)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
