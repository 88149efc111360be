"""Teacher and student must agree on what each logit means before anything is scored."""

from __future__ import annotations


from kdata.core.errors import KdataError
from kdata.core.warn import warn
from kdata.models.spec import Model

__all__ = ["check_models"]


def check_models(teacher: Model, student: Model) -> None:
    """Logit i must mean the same class in both models: the class counts must match, and names that
    differ are refused unless one side is unnamed (indices ``0…C−1`` or transformers' ``LABEL_i``:
    taken in index order) — a name at two positions, or two named lists that differ, is one line."""
    if teacher.num_classes != student.num_classes:
        raise KdataError(f"class-count mismatch: teacher {teacher.spec} has {teacher.num_classes} classes, "
                         f"student {student.spec} has {student.num_classes}")
    t, s = list(teacher.class_names), list(student.class_names)
    if t == s:
        return
    if set(t) == set(s):
        raise KdataError(f"class order differs: teacher {teacher.spec} and student {student.spec} list the same "
                         "class names in a different order (logit i must mean the same class in both)")
    where_s = {name: i for i, name in enumerate(s)}
    moved = next(((i, name) for i, name in enumerate(t) if where_s.get(name, i) != i), None)
    if moved is not None:
        i, name = moved
        raise KdataError(f"class names differ: class {name!r} is logit {i} of teacher {teacher.spec} but logit "
                         f"{where_s[name]} of student {student.spec} (logit i must mean the same class in both)")
    if _unnamed(t) and _unnamed(s):
        return
    i = next(i for i, (a, b) in enumerate(zip(t, s)) if a != b)
    if not (_unnamed(t) or _unnamed(s)):
        raise KdataError(f"class names differ: teacher {teacher.spec} calls logit {i} {t[i]!r}, student "
                         f"{student.spec} calls it {s[i]!r}; give both the same class_names (the student's sidecar)")
    warn(f"teacher {teacher.spec} and student {student.spec} name their classes differently "
         f"(logit {i}: {t[i]!r} and {s[i]!r}); one of them declares none, so logit i is taken as the same class "
         "in both")


def _unnamed(names: list[str]) -> bool:
    """Class names a model gets when it declares none: its indices, or transformers' ``LABEL_i``."""
    return names in ([str(i) for i in range(len(names))], [f"LABEL_{i}" for i in range(len(names))])
