"""The options of a curation run, defined once.

``SelectConfig`` (what defines a run's output; hashed into ``config_hash``) and ``RunOptions``
(how to run it) are the single source of the options of ``kdata select``, of ``--config
run.yaml`` and of the ``curate`` flow's parameters: every field carries its help text, its CLI
flag and its check. ``validate`` checks every value before any work starts, so a bad option is
one line and exit 2, never a failure after the pool was scored.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from kdata.core.errors import KdataError
from kdata.core.jsonable import config_hash
from kdata.pools.base import PoolLimits
from kdata.scoring.precision import PRECISIONS, check_precision

DEFAULT_METHOD = "default"
DEFAULT_POOL = "builtin:digits-web"


class _DefaultPool(str):
    """``SelectConfig.pool`` left at its default: the built-in pool, or, with ``scores``, no pool (a plain
    ``str`` after ``__post_init__``, so hashes and dicts see the value only)."""
BALANCES = ("none", "class", "cluster", "domain")
SPEC_FIELDS = ("pool", "scores", "teacher", "student", "reference", "critic", "embedder")
DEDUP_LEVELS = ("none", "exact", "near", "semantic")


def opt(default, help: str, *, flag: str | None = None, metavar: str | None = None, choices=None,
        cli: bool = True, kind=None):
    """A config field with what the CLI and the config file need to know about it."""
    meta = {"help": help, "flag": flag, "metavar": metavar, "choices": choices, "cli": cli, "kind": kind}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(kw_only=True)
class SelectConfig:
    """Everything that defines a curation run (hashed into ``config_hash``)."""

    pool: str | None = opt(_DefaultPool(DEFAULT_POOL), "pool: builtin:digits-web, Parquet, image folder, .tar "
                           "shards; with --scores: where the kept rows' payload comes from (omit for shards "
                           "without payload)", kind=str)
    teacher: str = opt("builtin:digits-teacher", "teacher model spec (.pt2, .pt, open_clip:…, timm:…, builtin:…)",
                       kind=str)
    student: str = opt("builtin:digits-student", "student model spec", kind=str)
    method: str = opt(DEFAULT_METHOD, "method or chain, e.g. kd3 or critic,kd3; `default` is the default recipe",
                      kind=str)
    budget: str = opt("0.3", "rows to keep: a count (200), a fraction (0.3) or a percentage (30%%)", kind=str)
    seed: int = opt(0, "random seed of every randomised choice", kind=int)
    topk: int = opt(5, "teacher soft labels kept per row", kind=int)
    temperature: float = opt(1.0, "temperature of the stored soft labels and of the statistics the methods rank by "
                             "(> 0)", kind=float)
    balance: str | None = opt(None, "spread the budget over predicted classes, embedding clusters or domains "
                              "(default: the recipe's choice)", choices=BALANCES, kind=str)
    dedup: str | None = opt(None, "remove duplicates before the budget: exact (decoded-pixel hash), near "
                            "(+ pixel cosine), semantic (+ SemDeDup on teacher embeddings) (default: near for the "
                            "default recipe, none for other methods)", choices=DEDUP_LEVELS,
                            kind=str)
    dedup_threshold: float | None = opt(None, "cosine threshold of the deepest dedup level "
                                        "(defaults: near 0.996, semantic 0.995)", kind=float)
    dedup_frac: float | None = opt(None, "semantic dedup: remove this fraction of the candidates instead",
                                   kind=float)
    hard: int = opt(0, "HARD: generate K augmented rows per kept row where teacher and student disagree, "
                    "critic-filtered", metavar="K", kind=int)
    critic: str | None = opt(None, "fitted critic for --method critic,… (from `kdata critic fit`)", metavar="DIR",
                             kind=str)
    critic_recall: float | None = opt(None, "re-choose the critic's cut for this recall on its validation split",
                                      kind=float)
    reference: str | None = opt(None, "reference model spec for --method miniplm (text: a causal LM, hf:PATH)",
                                kind=str)
    token_topk: int = opt(8, "text (causal LMs): teacher next-token soft labels kept per token", kind=int)
    max_length: int | None = opt(None, "text: tokens per sample at most (default: min(512, the model's limit))",
                                 kind=int)
    max_text_chars: int = opt(200_000, "text: samples longer than this many characters are quarantined",
                              kind=int)
    embedder: str | None = opt(None, "text: sentence-embedding model for --dedup near/semantic on text (a local "
                               "transformers or sentence-transformers directory; exact dedup needs none)",
                               metavar="hf:PATH", kind=str)
    scores: str | None = opt(None, "bring-your-own predictions instead of models: sample_id + teacher/student "
                             "logits or top-k probabilities (docs/methods.md)", metavar="FILE.parquet", kind=str)
    follow_symlinks: bool = opt(False, "follow symlinks that leave the pool directory (devices are never read)",
                                kind=bool)
    max_file_mb: float = opt(64.0, "files over this many MiB are quarantined, not read", kind=float)
    max_pixels: int = opt(64_000_000, "images over this many pixels are quarantined from their header, "
                          "not decoded", kind=int)
    precision: str = opt("auto", "forward-pass precision, recorded in the manifest and the score cache key: "
                         "auto (bf16 autocast on CUDA, fp32 on CPU), fp32 (on a GPU also without TF32, "
                         "to match a CPU run), bf16", choices=PRECISIONS, kind=str)
    rows_per_shard: int = opt(10_000, "rows per Parquet shard", kind=int)
    row_group_rows: int = opt(1_000, "rows per Parquet row group", kind=int)
    method_options: dict = opt({}, "per-method options (config file only)", cli=False, kind=dict)

    def __post_init__(self):
        for name in SPEC_FIELDS:  # a pathlib.Path works where a path string does (one run, one hash)
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        if isinstance(self.budget, (int, float)) and not isinstance(self.budget, bool):
            self.budget = str(self.budget)  # 0.1 and "0.1" (the CLI's and a config file's spelling): one run
        if type(self.pool) is _DefaultPool:  # left at its default: with --scores, shards without payload
            self.pool = None if self.scores else DEFAULT_POOL
        if isinstance(self.pool, str) and "://" not in self.pool and os.path.exists(self.pool):
            norm = os.path.normpath(self.pool)  # ./pool/ and pool: one run, one identity (hash)
            if os.path.exists(norm) and os.path.samefile(norm, self.pool):  # (a/../b through a symlink: kept)
                self.pool = norm

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def recorded(self) -> dict:
        """The options as the manifest records them: a ``--scores`` run loads no model, so it names none."""
        values = self.to_dict()
        if self.scores:
            values.update(teacher=None, student=None, precision=None)
        return values

    def hash(self) -> str:
        """The identity of the run's output (``kdata.core.jsonable.config_hash``). With ``--critic``, the
        sha256 of the critic's files too: a critic refitted in place is another run, never one found
        "already complete" (runs without a critic hash as they always did)."""
        from kdata.selection.critic_checks import critic_digest

        values = self.to_dict()
        if self.critic:
            values["critic_sha256"] = critic_digest(self.critic)
        if self.hard:  # HARD's draws changed scheme: an output of another scheme is another run
            from kdata.augment.params import HardConfig

            values["hard_seeding"] = HardConfig().seeding
        return config_hash(values)

    @property
    def is_default_recipe(self) -> bool:
        return self.method in (None, "", DEFAULT_METHOD)


@dataclass(kw_only=True)
class RunOptions:
    """How to run (not hashed): device, decode workers, batch size, caching, progress."""

    device: str = opt("auto", "auto, cpu, cuda or cuda:N", kind=str)
    num_workers: int | str = opt("auto", "image decode worker processes, started once per run: a number, or "
                                 "auto (none for pools under 2,000 rows, else one per core but one, at most 8 "
                                 "on CPU, 12 with CUDA)", flag="--workers", metavar="N|auto", kind=str)
    batch_size: int = opt(256, "samples per forward pass", kind=int)
    cache: bool = opt(True, "reuse cached scores", cli=False, kind=bool)
    progress: object = opt(None, "callable(stage, done=None, total=None)", cli=False)
    trust_remote_code: bool = opt(False, "text models: allow a model directory's own Python code (auto_map); "
                                  "refused otherwise", kind=bool)
    card_dir: str | None = opt(None, "also copy the data card to DIR/<dataset-name>.md", metavar="DIR", kind=str)


def document_fields(cls) -> type:
    """Append each field's default and help (its ``opt`` metadata) to ``cls.__doc__``, so ``help(cls)``
    lists the options the CLI and config files show."""
    import textwrap

    lines = ["", "", "Fields (keyword arguments; the command-line flag in brackets):", ""]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        where = f"  [{flag_of(f)}]" if f.metadata.get("cli") else "  [no command-line flag]"
        lines.append(f"    {f.name} = {repr(str(default)) if isinstance(default, str) else repr(default)}{where}")
        lines += textwrap.wrap(f.metadata.get("help", "").replace("%%", "%"), 96, initial_indent=" " * 8,
                               subsequent_indent=" " * 8)
    cls.__doc__ = (cls.__doc__ or cls.__name__) + "\n".join(lines)
    return cls


def cli_fields(cls) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are command-line options, in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", False)]


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def canonical_names(cls, values: dict, *, where: str) -> dict:
    """``values`` with an option's command-line name (``workers`` for ``--workers``) turned into its
    field name (``num_workers``), so a config file may use either."""
    alias = {flag_of(f)[2:].replace("-", "_"): f.name for f in dataclasses.fields(cls) if f.metadata.get("flag")}
    both = sorted(k for k in values if k in alias and alias[k] in values)
    if both:
        raise KdataError(f"{where}: {both[0]} and {alias[both[0]]} name the same option; give one")
    return {alias.get(k, k): v for k, v in values.items()}


def check_types(cls, values: dict, *, where: str) -> dict:
    """``values`` with every key a field of ``cls`` and every value of the field's kind (ints stay ints)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = canonical_names(cls, values, where=where)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise KdataError(f"{where}: unknown option(s) {unknown}; known: {sorted(fields)}")
    out = {}
    for name, value in values.items():
        kind = fields[name].metadata.get("kind")
        if value is None or kind is None:
            out[name] = value
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool) and \
                name in ("budget", "num_workers"):  # numbers written in a config file, kept as their text
            value = str(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise KdataError(f"{where}: {name} = {value!r}: expected {kind.__name__}")
        out[name] = value
    return out


def load_yaml(path: str | Path) -> dict:
    """A YAML mapping from ``path``; a missing or malformed file is one KdataError line."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise KdataError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise KdataError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise KdataError(f"{p}: expected a mapping at the top level")
    return data


def select_config(values: dict, *, where: str = "config") -> SelectConfig:
    """A validated ``SelectConfig`` from a mapping (config file section, flow parameter, CLI values)."""
    cfg = SelectConfig(**check_types(SelectConfig, values, where=where))
    if "pool" not in values and cfg.scores:
        cfg.pool = None  # --scores without --pool: shards without payload
    validate(cfg, where=where)
    return cfg


def run_options(values: dict, *, where: str = "config") -> RunOptions:
    opts = RunOptions(**check_types(RunOptions, values, where=where))
    validate_run(opts)
    from kdata.models.decode_pool import check_workers  # torch: loaded when a run is checked, not for --help

    opts.num_workers = check_workers(opts.num_workers)  # "2" from a command line or a config file → 2
    return opts


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def pool_limits(cfg: SelectConfig) -> PoolLimits:
    """What readers agree to read (``--follow-symlinks``, ``--max-file-mb``), checked."""
    return PoolLimits(follow_symlinks=cfg.follow_symlinks, max_file_mb=cfg.max_file_mb)


def validate(cfg: SelectConfig, *, where: str = "config") -> None:
    """Every value of ``cfg`` checked before any work starts (one KdataError line each)."""
    from kdata.dedup.faiss_dedup import check_options as check_dedup
    from kdata.selection.critic_model import check_target
    from kdata.selection.run import check_budget, parse_methods

    if not cfg.pool and not cfg.scores:
        raise KdataError("--pool: give a pool to score (precomputed predictions: kdata select --scores FILE)")
    methods = [] if cfg.is_default_recipe else parse_methods(cfg.method)
    check_budget(cfg.budget)
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or not -2**63 <= cfg.seed < 2**63:
        raise KdataError(f"--seed {cfg.seed!r}: must be an integer (from -2**63 to 2**63 - 1)")
    if not isinstance(cfg.topk, int) or not 1 <= cfg.topk <= 1024:
        raise KdataError(f"--topk {cfg.topk}: expected an integer from 1 to 1024 (soft labels kept per row)")
    if not _finite(cfg.temperature) or cfg.temperature <= 0:
        raise KdataError(f"--temperature {cfg.temperature}: must be a finite number > 0")
    if cfg.balance is not None and cfg.balance not in BALANCES:
        raise KdataError(f"--balance '{cfg.balance}': expected one of {', '.join(BALANCES)}")
    check_dedup(cfg.dedup, threshold=cfg.dedup_threshold, frac=cfg.dedup_frac)
    if cfg.scores and not cfg.pool and cfg.dedup not in (None, "none"):
        raise KdataError(f"--dedup {cfg.dedup}: dedup compares the rows' images or texts, and --scores without "
                         "--pool gives none; add --pool for the payloads, or leave --dedup out")
    if not isinstance(cfg.hard, int) or isinstance(cfg.hard, bool) or cfg.hard < 0:
        raise KdataError(f"--hard {cfg.hard}: must be ≥ 0 (an integer: generated rows per kept row)")
    if cfg.hard:
        from kdata.augment.hard import check_per_sample  # torch: loaded when a run is checked

        check_per_sample(cfg.hard)
    check_target(recall=cfg.critic_recall, option="--critic-{}")
    if "critic" in methods and not cfg.critic:
        raise KdataError("--method critic needs a fitted critic: --critic DIR (from `kdata critic fit`)")
    if cfg.critic and not Path(cfg.critic).exists():
        raise KdataError(f"{cfg.critic}: --critic directory not found")
    if cfg.scores and not Path(cfg.scores).exists():
        raise KdataError(f"{cfg.scores}: --scores file not found")
    for role in ("teacher", "student"):  # the predictions stand in for both: a model given too would be ignored
        if cfg.scores and getattr(cfg, role) != SelectConfig.__dataclass_fields__[role].default:
            raise KdataError(f"--{role} {getattr(cfg, role)}: --scores {cfg.scores} holds the {role}'s predictions; "
                             f"give one or the other")
    if cfg.scores and cfg.precision != SelectConfig.__dataclass_fields__["precision"].default:
        raise KdataError(f"--precision {cfg.precision}: --scores {cfg.scores} holds predictions already made; "
                         "nothing runs a model to take a precision")
    _validate_text(cfg)
    pool_limits(cfg)
    from kdata.models.images import check_max_pixels  # torch: loaded when a run is checked, not for --help

    check_max_pixels(cfg.max_pixels)
    check_precision(cfg.precision)
    for name in ("rows_per_shard", "row_group_rows"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise KdataError(f"--{name.replace('_', '-')} {v}: must be an integer ≥ 1")
    if not isinstance(cfg.method_options, dict):
        raise KdataError(f"{where}: method_options must be a mapping of method name → options")
    _validate_method_options(cfg, methods, where=where)
    _validate_unused(cfg, methods)


def _validate_unused(cfg: SelectConfig, methods: list[str]) -> None:
    """``--critic``/``--critic-recall``/``--reference`` given to a run that would not read them: refused,
    so a user who expects a critic filter or a MiniPLM reference is not silently given neither."""
    from kdata.models.hf import is_text_spec
    from kdata.selection.methods import get_method
    from kdata.selection.recipes import default_recipe

    chain = methods
    if cfg.is_default_recipe:  # causal-LM text runs default to MiniPLM (kdata.pipeline.text), which reads it
        text = not cfg.scores and (is_text_spec(cfg.teacher) or is_text_spec(cfg.student))
        chain = default_recipe() + (["miniplm"] if text else [])
    needs = {n for name in chain for n in get_method(name).needs}
    named = f"--method {','.join(chain)}" + (" (the default recipe)" if cfg.is_default_recipe else "")
    if cfg.critic_recall is not None and not cfg.critic:
        raise KdataError("--critic-recall re-chooses a fitted critic's cut: give --critic DIR too")
    if cfg.critic and "critic" not in needs and not cfg.hard:
        raise KdataError(f"--critic {cfg.critic}: {named} has no critic step and --hard is 0, so the critic "
                         "would not be used; add critic to --method (e.g. --method critic,coverage)")
    if cfg.reference and "reference" not in needs:
        raise KdataError(f"--reference {cfg.reference}: {named} does not use a reference model "
                         "(MiniPLM does: --method miniplm)")


def _validate_method_options(cfg: SelectConfig, methods: list[str], *, where: str) -> None:
    """``method_options`` against the resolved chain (the default recipe's when ``--method`` is left
    at ``default``): only methods of the chain, and only options their functions take."""
    from kdata.selection.methods import check_chain_options
    from kdata.selection.recipes import default_recipe

    chain = default_recipe() if cfg.is_default_recipe else methods
    check_chain_options(chain, cfg.method_options,
                        where="method_options" if where == "config" else f"{where}: method_options",
                        chain=f"{','.join(chain)}: the default recipe" if cfg.is_default_recipe else None)


def _validate_text(cfg: SelectConfig) -> None:
    """The text options (``--token-topk``, ``--max-length``, ``--max-text-chars``)."""
    for name, lo in (("token_topk", 1), ("max_text_chars", 1)):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise KdataError(f"--{name.replace('_', '-')} {v}: must be an integer ≥ {lo}")
    if cfg.token_topk > 1024:
        raise KdataError(f"--token-topk {cfg.token_topk}: at most 1024 soft labels per token")
    if cfg.max_length is not None and (not isinstance(cfg.max_length, int) or cfg.max_length < 2):
        raise KdataError(f"--max-length {cfg.max_length}: must be an integer ≥ 2 (tokens per sample)")
    if cfg.embedder is not None and not str(cfg.embedder).startswith(("hf:", "builtin:text-")):
        raise KdataError(f"--embedder {cfg.embedder}: expected a text model spec (hf:PATH or builtin:text-*)")


def validate_run(opts: RunOptions) -> None:
    if not isinstance(opts.batch_size, int) or opts.batch_size < 1:
        raise KdataError(f"--batch-size {opts.batch_size}: must be an integer ≥ 1")
    from kdata.models.decode_pool import check_workers

    check_workers(opts.num_workers)
    dev = str(opts.device)
    if dev not in ("auto", "cpu", "cuda") and not (dev.startswith("cuda:") and dev[5:].isdigit()):
        raise KdataError(f"--device '{dev}': unknown device (auto, cpu, cuda or cuda:N)")


document_fields(SelectConfig)
document_fields(RunOptions)
