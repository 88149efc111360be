"""The cache directory: ``$KDATA_CACHE`` first, then ``$XDG_CACHE_HOME/kdata``, then the platform default."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kdata.core.paths import cache_dir, cache_root, only_mine, private_cache_dir


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No KDATA_CACHE or XDG_CACHE_HOME; HOME points at an empty directory."""
    monkeypatch.delenv("KDATA_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_xdg_cache_home_is_honoured(clean_env, monkeypatch):
    xdg = clean_env / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    path = cache_dir("models")
    assert path == xdg / "kdata" / "models" and path.is_dir()


def test_kdata_cache_takes_precedence_over_xdg(clean_env, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(clean_env / "xdg-cache"))
    monkeypatch.setenv("KDATA_CACHE", str(clean_env / "mine"))
    assert cache_dir("scores") == clean_env / "mine" / "scores"
    assert (clean_env / "mine" / "scores").is_dir() and not (clean_env / "xdg-cache").exists()


def test_relative_xdg_cache_home_is_ignored(clean_env, monkeypatch):
    """The XDG spec: a relative path is invalid and must be ignored (kdata must not write into the cwd)."""
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert cache_root().is_absolute() and "relative" not in cache_root().parts


@pytest.mark.skipif(sys.platform != "linux", reason="the Linux default location")
def test_default_is_home_dot_cache_on_linux(clean_env):
    assert cache_root() == Path(clean_env / "home" / ".cache" / "kdata")


def test_what_kdata_runs_from_the_cache_lives_in_a_directory_only_its_user_can_write(tmp_path, monkeypatch):
    import os

    from kdata.core import native
    from kdata.flows.config import result_storage

    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "cache"))
    d = private_cache_dir("native")
    assert d is not None and only_mine(d) and (d.stat().st_mode & 0o777) == 0o700
    d.chmod(0o777)  # loosened by someone: made private again while it is this user's
    assert private_cache_dir("native") == d and only_mine(d)
    assert result_storage() == cache_dir("prefect-results")

    # a library in the cache that another user could have replaced is never loaded
    monkeypatch.setattr(native, "_STATE", {})
    if not native.available():
        pytest.skip(f"no native backend here: {native.status()}")
    built = Path(native.status().split(", ", 1)[1])
    assert built.parent == d
    built.write_bytes(b"not a library")  # what a planted file would be loaded as: refused before dlopen
    built.chmod(0o666)
    monkeypatch.setattr(native, "_STATE", {})
    assert native.available() and Path(native.status().split(", ", 1)[1]).parent != d
    if os.geteuid() == 0:  # root can hand the directory to another user: then nothing is kept there
        os.chown(d, 65534, -1)
        assert private_cache_dir("native") is None
        os.chown(cache_dir("prefect-results"), 65534, -1)
        with pytest.raises(Exception, match="other users can write here"):
            result_storage()
