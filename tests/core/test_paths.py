"""The cache directory: ``$KDATA_CACHE`` first, then ``$XDG_CACHE_HOME/kdata``, then the platform default."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kdata.core.paths import cache_dir, cache_root


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
