"""One pool, one run identity, however its path is spelled: ``--pool photos`` then ``--pool /abs/photos``
(or ``./photos/``) into the same OUT finds the finished run; another folder of the same name does not
(``kdata.pipeline.rerun.as_recorded_pool``)."""

from __future__ import annotations

import json
import shutil

from kdata.cli import main
from tests.helpers.real_inputs import make_image_folder


def _select(pool: str, out: str, capsys) -> tuple[int, dict | str]:
    capsys.readouterr()
    rc = main(["select", "--pool", pool, "--budget", "0.5", "--out", out, "--device", "cpu", "--json"])
    captured = capsys.readouterr()
    return rc, (json.loads(captured.out) if rc == 0 else captured.err)


def test_a_pool_spelled_otherwise_is_the_same_run(builtin_models, tmp_path, monkeypatch, capsys):
    make_image_folder(tmp_path / "photos", 40)
    monkeypatch.chdir(tmp_path)
    rc, first = _select("photos", "out", capsys)
    assert rc == 0 and first["status"] != "already complete"
    manifest = (tmp_path / "out" / "manifest.json").read_bytes()
    for spelling in (str(tmp_path / "photos"), "./photos/", "../" + tmp_path.name + "/photos"):
        rc, again = _select(spelling, "out", capsys)
        assert rc == 0 and again["status"] == "already complete", (spelling, again)
    assert (tmp_path / "out" / "manifest.json").read_bytes() == manifest
    # the same name elsewhere is another pool: still a different run
    shutil.copytree(tmp_path / "photos", tmp_path / "elsewhere" / "photos")
    rc, err = _select(str(tmp_path / "elsewhere" / "photos"), "out", capsys)
    assert rc == 2 and "--out already holds a different run (pool 'photos' there" in err
