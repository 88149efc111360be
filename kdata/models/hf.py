"""Hugging Face ``transformers`` models from local directories: ``hf:PATH`` (and ``builtin:text-*``).

A directory holds ``config.json``, a tokenizer and weights. What it is comes from the config's
``architectures``: ``…ForCausalLM``/``…LMHeadModel`` → a causal LM, ``…ForSequenceClassification``
→ a classifier (class names from ``id2label``). Nothing in the directory runs code
(``kdata.models.hf_safety``): ``model.safetensors`` (or its sharded index) is preferred; a
``pytorch_model.bin`` is read only by a weights-only load after its pickle was checked; a config
that asks for custom code (``auto_map``) is refused unless ``--trust-remote-code``.

Precision: fp32 on a CPU, bf16 weights on CUDA (``auto``); ``max_length`` is the smaller of the
asked length and the model's position limit, and is recorded with the scores.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kdata.core.errors import KdataError
from kdata.core.extras import require
from kdata.models.hf_safety import check_remote_code, model_checksum, read_config, weight_files
from kdata.models.hf_weights import FATAL, check_safetensors

DEFAULT_MAX_LENGTH = 512
KINDS = ("causal_lm", "classifier")


def pad_token_id(tok) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its end-of-text, else unknown, else 0."""
    for v in (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id):
        if v is not None:
            return int(v)
    return 0


@dataclass
class HFModel:
    """A loaded transformers model with its tokenizer and what the manifest records."""

    spec: str
    kind: str  # causal_lm | classifier
    model: torch.nn.Module
    tokenizer: object
    name: str
    checksum: str
    max_length: int
    class_names: list[str] = field(default_factory=list)  # classifier: id2label in id order; LM: []
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    extra: dict = field(default_factory=dict)
    path: str = ""  # the model directory (its tokenizer.json named in tokenizer errors)

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.kind == "classifier" else self.vocab_size

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def pad_id(self) -> int:
        return pad_token_id(self.tokenizer)

    def describe(self) -> dict:
        return {"spec": self.spec, "checksum": self.checksum, "kind": self.kind, "name": self.name,
                "max_length": self.max_length, "num_classes": len(self.class_names),
                "vocab_size": self.vocab_size, "precision": self.precision}


def kind_of(config: dict, *, where: str) -> str:
    """``causal_lm`` or ``classifier`` from config.json's ``architectures`` (one line otherwise)."""
    archs = config.get("architectures") or []
    for a in archs:
        if a.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal_lm"
        if a.endswith("ForSequenceClassification"):
            return "classifier"
    raise KdataError(f"{where}: config.json architectures {archs or 'missing'}: expected a causal LM "
                     "(…ForCausalLM) or a sequence classifier (…ForSequenceClassification)")


def resolve_max_length(config: dict, tokenizer, asked: int | None) -> int:
    """min(asked or DEFAULT_MAX_LENGTH, the model's position limit, the tokenizer's limit when sane)."""
    limits = [asked or DEFAULT_MAX_LENGTH]
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        v = config.get(key)
        if isinstance(v, int) and v > 0:
            limits.append(v)
            break
    tl = getattr(tokenizer, "model_max_length", None)
    if isinstance(tl, int) and 0 < tl < 10**7:
        limits.append(tl)
    return int(min(limits))


PROBE_TEXTS = ["Probe text 123 aaaa\n\tend.", "hello world", "x", "héllo wörld 世界 🙂 0x1f !!", "a" * 64 + " 99"]


def tokenizer_file(path) -> str:
    """The file a tokenizer error names: ``tokenizer.json`` when there is one, else the directory."""
    path = Path(path)
    return str(path / "tokenizer.json") if (path / "tokenizer.json").is_file() else str(path)


def tokenizer_failure(path, exc: BaseException, what: str) -> KdataError:
    """One line for a tokenizer that raised or panicked (pyo3 ``PanicException`` is a BaseException)."""
    msg = str(exc).strip().splitlines()
    return KdataError(f"{tokenizer_file(path)}: {what} ({type(exc).__name__}: {msg[0][:160] if msg else ''})")


class _RustPanicQuiet:
    """fd 2 into a temporary file while a tokenizer loads and probes: the Rust panic hook writes
    its ``thread … panicked at …`` lines straight to fd 2. Kept output is replayed unless it panicked."""

    def __enter__(self):
        import sys
        import tempfile

        self.tmp, self.saved = None, None
        try:
            sys.stderr.flush()
            self.tmp = tempfile.TemporaryFile()
            self.saved = os.dup(2)
            os.dup2(self.tmp.fileno(), 2)
        except (OSError, ValueError, AttributeError):
            self.saved = None
        return self

    def __exit__(self, et, ev, tb):
        import sys

        if self.saved is None:
            return False
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self.saved, 2)
        os.close(self.saved)
        if et is None:  # no failure: what was written goes where it would have gone
            self.tmp.seek(0)
            data = self.tmp.read()
            if data:
                os.write(2, data)
        self.tmp.close()
        return False


def _load_tokenizer(path: Path, *, trust_remote_code: bool):
    with _RustPanicQuiet():
        return _load_tokenizer_checked(path, trust_remote_code=trust_remote_code)


def _load_tokenizer_checked(path: Path, *, trust_remote_code: bool):
    from transformers import AutoTokenizer

    from kdata.models.text_tokens import encode_texts

    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    except FATAL:
        raise
    except BaseException as exc:  # noqa: BLE001  (a missing, broken or panicking tokenizer: one line)
        msg = str(exc).strip().splitlines()
        raise KdataError(f"{tokenizer_file(path)}: cannot load the tokenizer "
                         f"({type(exc).__name__}: {msg[0][:160] if msg else ''})") from None
    check_tokenizer(path, tok)
    try:  # a trial encode as scoring encodes (special tokens on): a tokenizer that fails here fails before any work
        encode_texts(tok, PROBE_TEXTS, max_length=64)
    except FATAL:
        raise
    except BaseException as exc:  # noqa: BLE001
        raise tokenizer_failure(path, exc, "the tokenizer fails on a sample text") from None
    return tok


def token_ids_max(tok) -> int:
    """The largest id the tokenizer can produce: its vocabulary, added tokens, and len − 1."""
    ids = [len(tok) - 1]
    try:
        ids.extend(int(v) for v in tok.get_vocab().values())
        ids.extend(int(k) for k in getattr(tok, "added_tokens_decoder", {}) or {})
    except Exception:  # noqa: BLE001
        pass
    return max(ids)


def check_token_ids(path: Path, tok, rows: int) -> None:
    """Refuse a tokenizer whose ids reach past the model's input embedding rows (one line)."""
    top = token_ids_max(tok)
    if top >= rows:
        raise KdataError(f"{tokenizer_file(path)}: the tokenizer has token id {top}, but the model's input "
                         f"embedding has {rows} row(s) (config.json vocab_size); tokenizer and model do not match")


def check_tokenizer(path: Path, tok) -> None:
    """Refuse a tokenizer with no vocabulary beyond its special tokens (one line naming ``path``).

    A directory without tokenizer files (no ``tokenizer.json``, ``vocab.json``/``merges.txt``,
    ``vocab.txt``, ``*.model``) still loads: transformers builds the config's tokenizer class with
    no vocabulary (GPT-2: one entry, ``<|endoftext|>``), which turns every text into zero tokens."""
    try:
        vocab = tok.get_vocab()
        special = set(tok.all_special_tokens)
    except Exception:  # noqa: BLE001  (a tokenizer that cannot list its vocabulary: judged by use, not here)
        return
    if not any(t not in special for t in vocab):
        raise KdataError(f"{path}: no tokenizer (tokenizer.json / vocab files) found (without them transformers "
                         f"builds one of {len(vocab)} special token(s)); save the tokenizer there with save_pretrained")


def _load_module(path: Path, kind: str, *, trust_remote_code: bool) -> torch.nn.Module:
    """The model in fp32 on the CPU, from safetensors (headers checked first) or a checked weights-only ``.bin``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForCausalLM if kind == "causal_lm" else AutoModelForSequenceClassification
    files, fmt = weight_files(path)
    try:
        if fmt == "safetensors":
            check_safetensors(path, files, auto, trust_remote_code=trust_remote_code)
            model, info = auto.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                               trust_remote_code=trust_remote_code, dtype=torch.float32,
                                               output_loading_info=True)
            bad = list(info.get("missing_keys") or []) + [str(m) for m in info.get("mismatched_keys") or []]
            if bad:  # what the header check could not see (renamed checkpoints): never a random parameter
                raise KdataError(f"{files[0]}: weights lack or mis-shape {len(bad)} parameter(s) of the model, "
                                 f"e.g. '{bad[0]}'")
        else:
            from kdata.models.safe_load import load_state_file

            state = {}
            for f in files:  # each file's pickle checked, then loaded weights-only under the guard
                state.update(load_state_file(f))
            cfg = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
            model = auto.from_config(cfg, trust_remote_code=trust_remote_code, dtype=torch.float32)
            missing, _ = model.load_state_dict(state, strict=False)
            model.tie_weights()
            tied = {k for k, _ in model.named_parameters(remove_duplicate=False)} - \
                {k for k, _ in model.named_parameters()}
            missing = [k for k in missing if k not in tied]  # an untied head that is absent would be random
            if missing:
                raise KdataError(f"{files[0]}: weights lack {len(missing)} parameter(s) of the model, e.g. '{missing[0]}'")
    except KdataError:
        raise
    except Exception as exc:  # noqa: BLE001  (transformers' many errors: one line)
        msg = str(exc).strip().splitlines()
        raise KdataError(f"{path}: cannot load the model ({type(exc).__name__}: {msg[0][:200] if msg else ''})") from None
    return model.float().eval()


def load_hf(path: str | os.PathLike, *, device: torch.device | str = "cpu", precision: str = "auto",
            trust_remote_code: bool = False, max_length: int | None = None, spec: str | None = None) -> HFModel:
    """Load a local transformers directory as an ``HFModel`` (see the module docstring)."""
    require("text", "transformers", "tokenizers")
    with quiet_transformers():
        return _load_text_model(path, device=device, precision=precision, trust_remote_code=trust_remote_code,
                                max_length=max_length, spec=spec)


def not_a_model_dir(path: Path) -> str:
    """Why ``path`` is no ``hf:`` model directory (it is missing, or a file)."""
    return ("not a directory (an hf: model is the folder save_pretrained wrote)" if path.exists()
            else "model directory not found")


def _load_text_model(path, *, device, precision: str, trust_remote_code: bool, max_length: int | None,
                     spec: str | None) -> HFModel:
    path, device = Path(path), torch.device(device)
    where = str(path)
    if not path.is_dir():
        raise KdataError(f"{where}: {not_a_model_dir(path)}")
    config = read_config(path)
    check_remote_code(path, config, trust_remote_code=trust_remote_code)
    kind = kind_of(config, where=where)
    weight_files(path)  # a directory without weights is one line before the tokenizer loads
    tokenizer = _load_tokenizer(path, trust_remote_code=trust_remote_code)
    model = _load_module(path, kind, trust_remote_code=trust_remote_code)
    emb = model.get_input_embeddings()
    if emb is not None and getattr(emb, "num_embeddings", None):
        check_token_ids(path, tokenizer, int(emb.num_embeddings))
    prec = ("bf16" if device.type == "cuda" else "fp32") if precision == "auto" else precision
    model = model.to(device=device, dtype=torch.bfloat16 if prec == "bf16" else torch.float32)
    class_names = []
    if kind == "classifier":
        id2label = getattr(model.config, "id2label", None) or {}
        class_names = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(model.config.num_labels)]
    return HFModel(spec=spec or f"hf:{path}", kind=kind, model=model, tokenizer=tokenizer, name=path.name,
                   checksum=model_checksum(path), max_length=resolve_max_length(config, tokenizer, max_length),
                   class_names=class_names, device=device, precision=prec, path=str(path),
                   extra={"architectures": config.get("architectures"), "model_type": config.get("model_type")})


def quiet_transformers() -> QuietTransformers:
    """No progress bars or advisory log lines from transformers on kdata's stderr, for kdata's own calls:
    ``with quiet_transformers(): ...`` restores the caller's verbosity and progress-bar setting on exit.
    (Called bare, the settings stay until the process ends.)"""
    return QuietTransformers()


class QuietTransformers:
    """transformers' logging at ERROR and its progress bars off from construction until ``__exit__``,
    which puts back what was set before (``quiet_transformers``). Without transformers installed: nothing."""

    def __init__(self):
        try:
            from transformers.utils import logging as hf_logging
        except ImportError:
            self._log = None
            return
        self._log = hf_logging
        self._saved = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled())
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

    def __enter__(self) -> QuietTransformers:
        return self

    def __exit__(self, *exc) -> None:
        if self._log is None:
            return
        verbosity, bars = self._saved
        self._log.set_verbosity(verbosity)
        (self._log.enable_progress_bar if bars else self._log.disable_progress_bar)()


TEXT_PREFIXES = ("hf:", "builtin:text-")


def is_text_spec(spec: str | None) -> bool:
    """True for the model specs this module loads (``hf:PATH``, ``builtin:text-*``)."""
    return isinstance(spec, str) and spec.startswith(TEXT_PREFIXES)


def text_model_path(spec: str) -> Path:
    """The local directory of a text model spec (``builtin:text-*`` trained on first use)."""
    if spec.startswith("hf:"):
        rest = spec[3:]
        if not rest:
            raise KdataError("hf: give a local transformers directory, e.g. hf:models/my-lm")
        return Path(rest).expanduser()
    if not is_text_spec(spec):
        raise KdataError(f"{spec}: not a text model spec (hf:PATH or builtin:text-*)")
    from kdata.models import builtin_text  # written by the built-in text models (trains them on first use)

    with quiet_transformers():  # training on first use: no advisory lines, the caller's settings put back
        return Path(builtin_text.model_dir(spec.split(":", 1)[1]))


def load_text_model(spec: str, *, device="cpu", precision: str = "auto", trust_remote_code: bool = False,
                    max_length: int | None = None) -> HFModel:
    """Load ``hf:PATH`` or ``builtin:text-*`` (one KdataError line when it cannot)."""
    return load_hf(text_model_path(spec), device=device, precision=precision, trust_remote_code=trust_remote_code,
                   max_length=max_length, spec=spec)


def same_tokenizer(a: HFModel, b: HFModel) -> bool:
    """Whether two models tokenise alike: equal vocabularies (token → id) and equal special tokens."""
    if a.tokenizer is b.tokenizer:
        return True
    try:
        return a.tokenizer.get_vocab() == b.tokenizer.get_vocab() and \
            json.dumps(a.tokenizer.special_tokens_map, sort_keys=True) == \
            json.dumps(b.tokenizer.special_tokens_map, sort_keys=True)
    except Exception:  # noqa: BLE001
        return False
