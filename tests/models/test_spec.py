"""kdata.models.spec.load_model from Python: a pathlib.Path spec loads like its string; a spec of another
type and an unknown device name are one KdataError line, not an AttributeError or torch's device list."""

from __future__ import annotations

import pytest

from kdata.core.errors import KdataError
from kdata.models.spec import load_model
from kdata.models.files import export_model


def test_a_path_spec_loads_like_its_string(tmp_path):
    student = load_model("builtin:digits-student")
    path = export_model(student.module, tmp_path / "student.pt2", input_size=student.input_size, mean=student.mean,
                        std=student.std, class_names=student.class_names)
    by_path, by_string = load_model(path), load_model(str(path))
    assert by_path.spec == by_string.spec == str(path) and by_path.class_names == student.class_names


@pytest.mark.parametrize("spec, kw, says", [
    (5, {}, "model spec 5: expected a path or spec string"),
    (None, {}, "model spec None: expected a path or spec string"),
    ("builtin:digits-student", {"device": "gpu"}, "--device 'gpu': unknown device"),
])
def test_bad_spec_or_device_is_one_line(spec, kw, says):
    with pytest.raises(KdataError, match=says):
        load_model(spec, **kw)
