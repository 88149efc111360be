"""A second benchmark pool from real images: Debian's ``openclipart-png`` clip art, made webly collected.

    python benchmarks/pools/openclipart.py            # build (or reuse) the pool and models, print where

The clip art (public-domain PNGs rendered from SVG, filed by category folders) is fetched with
``apt-get download openclipart-png`` (131 MB) and unpacked with ``dpkg -x`` into
``$KDATA_CACHE/bench-openclipart/`` — never into the repository. Without apt or dpkg (or offline),
``build`` raises ``Unavailable`` with one line saying why, and the quality benchmark skips the pool.

Classes are nine category folders with enough images (``SPEC.classes``). Per class, a seeded shuffle
splits the images (each class capped at ``cap``) into a clean held-out **test** split (22%), the
**pool base** (38%), and of the rest — the images past the cap included — up to ``teacher_cap`` are
the teacher's clean training split; the student is pre-trained on ``student_per_class`` images per class of that
split, so there is something to distil. The pool mixes, as a web crawl would (fractions of the pool):

* ``clean`` — a base image with its folder's label;
* ``label_noise`` (15%) — a base image filed under a wrong folder;
* ``shift`` (15%) — a base image rendered differently, with its right label: colours inverted,
  heavy blur, rotated by 90–270°, or a small crop blown up;
* ``junk`` (15%) — out-of-class clip art from the other folders (two thirds) and noise textures
  (one third), with a random label;
* ``near_dup`` (10%) — a lightly noised, re-encoded or shifted copy of a clean or mislabelled row.

Images are ``size``×``size`` RGB PNGs (transparency composited on white, the drawing's bounding box
padded to a square). The pool is Parquet in kdata's pool schema, ``source`` = the row's kind (what
the precision table counts; no selection method reads it) and ``domain`` = one of three "sites"
whose mix depends on the kind (as in ``builtin:digits-web``, for domain-aware methods such as DDK).
``truth.parquet`` holds each row's kind and true label (-1 for junk).

Teacher (CNN widths ``teacher_widths``, 54k parameters) and student (``student_widths``, 6k) are
``kdata.models.digits_net.DigitsNet`` with three input channels, trained here (seeded, one intra-op
thread) and exported as ``.pt2`` + sidecar (``kdata.models.files.export_model``), so ``kdata select
--teacher/--student`` load them like any user model. Everything is cached under a directory named
for ``version`` and the size; a finished build leaves ``info.json`` last, and a rerun reuses it.

The machinery is shared with the other package pools (``webpool.py``); this module is the spec.
Symlinked and near-identical files are dropped before the split (``unique=True``): 1,221 of the
package's PNGs are symlinks, and the v1 build, which kept them, had 45 of its 412 test images also
in the pool base or the teacher's split.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import webpool
from webpool import Bench, Spec, Unavailable  # noqa: F401  (re-exported: quality.py, digits.py)

SPEC = Spec(
    name="openclipart", package="openclipart-png", png_root="usr/share/openclipart/png", version="openclipart-web-v2", unique=True,
    classes={  # class name → folders under usr/share/openclipart/png
        "animals": ["animals"], "food": ["food"], "people": ["people"], "transportation": ["transportation"],
        "flags": ["signs_and_symbols/flags"], "recreation": ["recreation"], "tools": ["tools"],
        "office": ["office"], "geography": ["geography"],
    },
    seed=20240, size=48, cap=240, teacher_cap=140, max_pixels=4_000_000,  # a few source PNGs are 168 Mpx
    teacher_widths=(24, 48, 96), student_widths=(8, 16, 32), teacher_epochs=30, student_epochs=60,
)


def cache_root() -> Path:
    return webpool.cache_root(SPEC)


def build(*, log=print) -> Bench:
    """The pool, test split, truth and models (cached; see the module docstring). Raises ``Unavailable``."""
    return webpool.build(SPEC, log=log)


def main() -> int:
    return webpool.main(SPEC)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
