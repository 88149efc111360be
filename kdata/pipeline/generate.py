"""``kdata generate``: the teacher writes candidates from prompts (Symbolic KD, West et al., arXiv 2110.07178).

Stages (each a plain function; the CLI and the ``generate`` flow call the same ones):

1. ``read_prompts`` — the prompts JSONL, validated before any work: one JSON object per line with
   a string ``id`` (or number) and a string ``prompt``; a bad line (also a string holding an unpaired
   surrogate, which no tokenizer or Parquet file takes) is one line naming the file and the line (exit 2).
2. ``generate_shard`` — prompts in shards of ``shard_size`` (64); each shard's candidates are
   written atomically to ``.OUT.kdata-generate/`` beside OUT, then a done marker, under a key
   hashing the shard's prompts, the teacher's checksum and the decoding settings
   (``shard_key``): a rerun after a crash regenerates only shards without a marker.
3. ``kdata.pipeline.generate_output.finish_generate`` — every candidate accounted for (empty
   generations quarantined as ``empty_generation``; with ``--critic``, the critic's rejections as
   ``critic_reject`` with ``score_critic``), written with kdata's writer (shards, decisions,
   ``excluded.parquet``, card, manifest).

Candidate rows: ``sample_id`` = ``{prompt_id}:{j}``, ``text`` (the continuation), ``prompt``,
``parent_id`` (prompt id), ``kind`` = ``synthetic``, ``source`` = ``generate:<teacher>``, the decoding
settings (``temperature``, ``top_p``, ``max_new_tokens``, ``seed``), ``gen_token_ids`` and
``gen_token_logprobs`` (the teacher's log-prob of each generated token), ``gen_teacher_nll``
(their negative mean), ``gen_n_tokens``, ``finish`` (``eos``/``length``), ``prompt_truncated``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa

from kdata.core.atomic import read_parquet, write_json, write_parquet
from kdata.core.cache_admin import touch_used
from kdata.core.errors import KdataError
from kdata.core.version import __version__
from kdata.models.hf_generate import DecodeConfig, check_decode, sample
from kdata.pools.json_depth import MAX_DEPTH, too_deep

GENERATE_VERSION = 1  # bump when what a candidate row holds changes (invalidates shard keys)
WORK_SUFFIX = ".kdata-generate"


@dataclass
class GenerateConfig:
    """What defines a generation run (hashed into the output's config)."""

    teacher: str = "builtin:text-teacher"
    prompts: str = ""
    per_prompt: int = 4
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    shard_size: int = 64
    precision: str = "auto"
    student: str | None = None  # with a critic: whose statistics are the critic's student features (the
    #                             student it was fitted with; I2D2 rounds: that one too, not the one they train)
    critic: str | None = None
    critic_recall: float | None = None
    critic_precision: float | None = None
    critic_teacher: str | None = None  # whose statistics feed the critic (default: teacher; I2D2 rounds: the teacher)

    def to_dict(self) -> dict:
        return asdict(self)


def check_config(cfg: GenerateConfig) -> None:
    """One line for options that cannot run, before any work."""
    check_decode(cfg.decode)
    if cfg.per_prompt < 1:
        raise KdataError(f"--per-prompt {cfg.per_prompt}: must be ≥ 1")
    if cfg.shard_size < 1:
        raise KdataError(f"--shard-size {cfg.shard_size}: must be ≥ 1")
    if cfg.critic:
        if not Path(cfg.critic).is_dir():
            raise KdataError(f"{cfg.critic}: --critic directory not found")
        if not cfg.student:
            raise KdataError("--critic needs --student: the critic's features include the student's statistics")


def read_prompts(path: str | Path) -> list[dict]:
    """The prompts file as ``[{"id", "prompt", **other string fields}]`` (module doc, step 1)."""
    p = Path(path)
    if not p.is_file():
        raise KdataError(f"{path}: prompts file not found")
    try:
        raw = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KdataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    out, seen = [], {}
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        if too_deep(line):
            raise KdataError(f"{path}: line {lineno}: JSON nested more than {MAX_DEPTH} levels deep")
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise KdataError(f"{path}: line {lineno}: not JSON ({str(exc).splitlines()[0][:80]})") from None
        except RecursionError:
            raise KdataError(f"{path}: line {lineno}: JSON nested too deeply to read") from None
        if not isinstance(obj, dict):
            raise KdataError(f"{path}: line {lineno}: a JSON {type(obj).__name__}, expected an object with id and prompt")
        for key in ("id", "prompt"):
            if key not in obj:
                raise KdataError(f"{path}: line {lineno}: missing '{key}'")
        pid = obj["id"]
        if isinstance(pid, bool) or not isinstance(pid, (str, int)) or str(pid) == "":
            raise KdataError(f"{path}: line {lineno}: 'id' must be a non-empty string or integer, got {pid!r}")
        if not isinstance(obj["prompt"], str):
            raise KdataError(f"{path}: line {lineno}: 'prompt' must be a string")
        pid = str(pid)
        for key in ("id", "prompt", "domain"):
            bad = unpaired_surrogate(obj.get(key) if key != "id" else pid)
            if bad is not None:
                raise KdataError(f"{path}: line {lineno}: '{key}' holds an unpaired surrogate (U+{ord(bad[1]):04X} at "
                                 f"character {bad[0] + 1}), which is not text; fix or drop the line")
        if pid in seen:
            raise KdataError(f"{path}: line {lineno}: duplicate id {pid!r} (first on line {seen[pid]})")
        seen[pid] = lineno
        out.append({"id": pid, "prompt": obj["prompt"], "line": lineno,
                    **({"domain": obj["domain"]} if isinstance(obj.get("domain"), str) else {})})
    if not out:
        raise KdataError(f"{path}: no prompts (one JSON object per line: {{\"id\": ..., \"prompt\": ...}})")
    return out


def unpaired_surrogate(value) -> tuple[int, str] | None:
    """(index, character) of the first lone UTF-16 surrogate in a string (JSON ``"\\ud800"`` decodes to one;
    no tokenizer or Parquet file takes it), None when ``value`` is valid text or not a string."""
    if not isinstance(value, str):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start, value[exc.start]
    return None


def prompt_shards(prompts: list[dict], size: int) -> list[list[dict]]:
    return [prompts[i:i + size] for i in range(0, len(prompts), size)]


def shard_key(shard: list[dict], *, teacher_checksum: str, cfg: GenerateConfig, device_type: str) -> str:
    """What a shard's candidates depend on: its prompts, the teacher, the decoding settings, precision, device."""
    payload = {"prompts": [[p["id"], p["prompt"]] for p in shard], "teacher": teacher_checksum,
               "decode": asdict(cfg.decode), "per_prompt": cfg.per_prompt, "precision": cfg.precision,
               "device": device_type, "version": GENERATE_VERSION, "kdata": __version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def work_dir(out: str | Path) -> Path:
    """Where finished prompt shards wait for the final write (beside OUT, removed after it)."""
    out = Path(out).resolve()
    return out.parent / f".{out.name}{WORK_SUFFIX}"


def shard_paths(work: Path, index: int, key: str) -> tuple[Path, Path]:
    stem = f"shard-{index:05d}-{key[:16]}"
    return work / f"{stem}.parquet", work / f"{stem}.done.json"


def shard_done(work: Path, index: int, key: str) -> Path | None:
    path, marker = shard_paths(work, index, key)
    if not (path.is_file() and marker.is_file()):
        return None
    touch_used(marker)  # `kdata cache prune` removes the flows' shards by last use
    return path


def candidate_table(results: list[dict], shard: list[dict], *, cfg: GenerateConfig, teacher_spec: str) -> pa.Table:
    """Candidate rows (module doc) from ``hf_generate.sample`` results, in prompt order then j."""
    by_id = {p["id"]: p for p in shard}
    n = len(results)
    lps = [r["token_logprobs"] for r in results]
    nll = [(-sum(x) / len(x)) if x else None for x in lps]
    d = cfg.decode
    return pa.table({
        "sample_id": pa.array([f"{r['prompt_id']}:{r['j']}" for r in results], pa.string()),
        "text": pa.array([r["text"] for r in results], pa.string()),
        "prompt": pa.array([by_id[r["prompt_id"]]["prompt"] for r in results], pa.string()),
        "parent_id": pa.array([r["prompt_id"] for r in results], pa.string()),
        "kind": pa.array(["synthetic"] * n, pa.string()),
        "source": pa.array([f"generate:{teacher_spec}"] * n, pa.string()),
        "domain": pa.array([by_id[r["prompt_id"]].get("domain") for r in results], pa.string()),
        "temperature": pa.array([d.temperature] * n, pa.float32()),
        "top_p": pa.array([d.top_p] * n, pa.float32()),
        "max_new_tokens": pa.array([d.max_new_tokens] * n, pa.int32()),
        "seed": pa.array([d.seed] * n, pa.int64()),
        "gen_token_ids": pa.array([r["token_ids"] for r in results], pa.list_(pa.int32())),
        "gen_token_logprobs": pa.array(lps, pa.list_(pa.float32())),
        "gen_teacher_nll": pa.array(nll, pa.float32()),
        "gen_n_tokens": pa.array([len(x) for x in lps], pa.int32()),
        "finish": pa.array([r["finish"] for r in results], pa.string()),
        "prompt_truncated": pa.array([r["prompt_truncated"] for r in results], pa.bool_()),
    })


def generate_shard(model, shard: list[dict], *, index: int, key: str, work: Path, cfg: GenerateConfig,
                   batch_size: int = 16) -> Path:
    """Generate one prompt shard's candidates into ``work`` (atomic file, then the done marker)."""
    done = shard_done(work, index, key)
    if done is not None:
        return done
    results = sample(model, [(p["id"], p["prompt"]) for p in shard], per_prompt=cfg.per_prompt,
                     config=cfg.decode, batch_size=batch_size)
    table = candidate_table(results, shard, cfg=cfg, teacher_spec=model.spec)
    path, marker = shard_paths(work, index, key)
    write_parquet(path, table, row_group_size=1024)
    write_json(marker, {"key": key, "index": index, "rows": table.num_rows, "prompts": len(shard)})
    return path


def read_candidates(paths: list[Path]) -> pa.Table:
    """Every shard's candidates, concatenated in shard order."""
    return pa.concat_tables([read_parquet(p) for p in paths])


def prompts_checksum(prompts: list[dict]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps([p["id"], p["prompt"]]).encode())
    return "sha256:" + h.hexdigest()
