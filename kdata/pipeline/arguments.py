"""Command-line options derived from the config dataclasses (used by ``kdata select`` and ``flows/curate.py``)."""

from __future__ import annotations

import os


def add_config_options(p, cls) -> None:
    """Add one option per command-line field of the config dataclass ``cls`` (kdata.pipeline.config).

    Defaults stay ``None`` here so that a value given on the command line can be told from one left
    out (``--config`` files fill the rest); the help shows the dataclass default.
    """
    import dataclasses

    from kdata.pipeline.config import cli_fields, flag_of

    for f in cli_fields(cls):
        kind = f.metadata.get("kind")
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = "" if default is None else f" (default: {default})"
        kwargs = {"dest": f.name, "default": None, "help": f.metadata["help"] + _extra_help(f.name) + shown}
        if f.metadata.get("choices"):
            kwargs["choices"] = list(f.metadata["choices"])
        if f.metadata.get("metavar"):
            kwargs["metavar"] = f.metadata["metavar"]
        if kind in (int, float):
            kwargs["type"] = kind
        if kind is bool:
            kwargs.update(action="store_const", const=True, help=f.metadata["help"])
        p.add_argument(flag_of(f), **kwargs)



def _extra_help(name: str) -> str:
    """What a field's help adds on the command line: the registered methods for ``--method``."""
    if name != "method":
        return ""
    from kdata.selection.methods import available

    return f"; one of {', '.join(available())} (`kdata methods` says what each does)"


def add_select_options(p) -> None:
    """The options of ``kdata select``: every field of SelectConfig and RunOptions, plus output options."""
    from kdata.pipeline.config import RunOptions, SelectConfig

    p.add_argument("--config", default=None, metavar="RUN.yaml",
                   help="read options from a YAML file (keys: the option names with _, e.g. rows_per_shard; "
                        "sections select: and run: are also accepted); options given on the command line win")
    add_config_options(p, SelectConfig)
    add_config_options(p, RunOptions)
    p.add_argument("--out", default=None, help="output directory for the curated dataset (required: here or as "
                                                "out: in the --config file)")
    p.add_argument("--no-cache", action="store_true", help="re-score even when cached scores exist")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars")



def given_values(args, cls) -> dict:
    from kdata.pipeline.config import cli_fields

    return {f.name: getattr(args, f.name) for f in cli_fields(cls) if getattr(args, f.name, None) is not None}



def config_file_values(args, *, outputs: bool = False) -> tuple[dict, dict, str]:
    """(select values, run values, where) from ``--config`` (flat, or with select:/run: sections).
    ``outputs``: ``kdata select``'s own keys (``OUTPUT_KEYS``, read by ``output_options``) are left out
    rather than refused as unknown options."""
    path = getattr(args, "config", None)
    if not path:
        return {}, {}, "command line"
    from kdata.pipeline.config import RunOptions, SelectConfig, canonical_names, load_yaml

    data = {k: v for k, v in load_yaml(path).items() if not (outputs and k in OUTPUT_KEYS)}
    if set(data) & {"select", "run"}:
        return (canonical_names(SelectConfig, dict(data.get("select") or {}), where=str(path)),
                canonical_names(RunOptions, dict(data.get("run") or {}), where=str(path)), str(path))
    data = canonical_names(RunOptions, canonical_names(SelectConfig, data, where=str(path)), where=str(path))
    sel_names = {f for f in SelectConfig.__dataclass_fields__}
    run_names = {f for f in RunOptions.__dataclass_fields__}
    return ({k: v for k, v in data.items() if k not in run_names},
            {k: v for k, v in data.items() if k in run_names and k not in sel_names}, str(path))



OUTPUT_KEYS = ("out", "no_cache", "json", "quiet")  # kdata select's options that are not config fields


def output_options(args) -> None:
    """Fill ``args.out``, ``no_cache``, ``json`` and ``quiet`` from the ``--config`` file where the command
    line left them out, so a run file may name them too; ``--out`` is required from one or the other."""
    from kdata.core.errors import KdataError
    from kdata.pipeline.config import load_yaml

    path = getattr(args, "config", None)
    data = load_yaml(path) if path else {}
    for key in OUTPUT_KEYS:
        value = data.get(key)
        if value is None or getattr(args, key, None):
            continue
        if key == "out" and not isinstance(value, str):
            raise KdataError(f"{path}: out: expected a directory path, got {value!r}")
        if key == "out":
            value = os.path.expanduser(value)  # as a shell expands --out ~/x
        if key != "out" and not isinstance(value, bool):
            raise KdataError(f"{path}: {key}: expected true or false, got {value!r}")
        setattr(args, key, value)
    if not getattr(args, "out", None):
        raise KdataError("--out: give the output directory for the curated dataset (or out: in the --config file)")


def config_from_args(args):
    """The validated SelectConfig of a command line (``--config`` file values, overridden by flags)."""
    from kdata.pipeline.config import SelectConfig, select_config

    file_values, _, where = config_file_values(args, outputs=True)
    given = given_values(args, SelectConfig)
    return _naming_the_file(select_config, {**file_values, **given}, file_values, given, where=where)



def run_options_from_args(args):
    from kdata.pipeline.config import RunOptions
    from kdata.pipeline.config import run_options as make

    _, file_values, where = config_file_values(args, outputs=True)
    given = given_values(args, RunOptions)
    values = {**file_values, **given}
    if getattr(args, "no_cache", False):
        values["cache"] = False
    return _naming_the_file(make, values, file_values, given, where=where)


def _naming_the_file(make, values: dict, file_values: dict, given: dict, *, where: str):
    """``make(values, where=where)``; a refused value that came from the ``--config`` file (not a flag)
    names the file too: ``run.yaml: --budget 150%: at most 100% of the pool``."""
    from kdata.core.errors import KdataError
    from kdata.pipeline.config import RunOptions, SelectConfig, cli_fields, flag_of

    try:
        return make(values, where=where)
    except KdataError as exc:
        msg = str(exc)
        flag = msg.split(" ", 1)[0].split("/", 1)[0].rstrip(":'")
        names = {flag_of(f): f.name for cls in (SelectConfig, RunOptions) for f in cli_fields(cls)}
        name = names.get(flag)
        if name in file_values and name not in given:
            raise KdataError(f"{where}: {msg}", exit_code=exc.exit_code) from None
        raise
