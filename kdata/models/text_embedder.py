"""Sentence embeddings from any local transformers encoder: ``--embedder hf:PATH`` (or ``builtin:text-*``).

The embedding of a text is the mean of the last hidden states over its tokens (attention mask),
L2-normalised — the pooling sentence-transformers models such as all-MiniLM-L6-v2 are trained with
(Reimers & Gurevych, arXiv 1908.10084). A sentence-transformers directory works as-is (its
top level is a transformers model); so does a causal LM directory (its base model's states).
Loading follows ``kdata.models.hf``'s rules: safetensors weights only, no custom code unless
``trust_remote_code``; fp32 on a CPU, bf16 on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdata.core.errors import KdataError
from kdata.core.extras import require
from kdata.models.hf import check_tokenizer, pad_token_id, quiet_transformers, resolve_max_length, text_model_path
from kdata.models.hf_safety import (
    check_remote_code,
    model_checksum,
    read_config,
    weight_files,
)


@dataclass
class TextEmbedder:
    spec: str
    model: torch.nn.Module
    tokenizer: object
    checksum: str
    max_length: int
    device: torch.device

    def describe(self) -> dict:
        return {"spec": self.spec, "checksum": self.checksum, "max_length": self.max_length}


def load_embedder(spec: str, *, device="cpu", precision: str = "auto", trust_remote_code: bool = False,
                  max_length: int = 256) -> TextEmbedder:
    """Load ``hf:PATH`` / ``builtin:text-*`` as a mean-pooling sentence embedder (one line when it cannot)."""
    require("text", "transformers", "tokenizers")
    from transformers import AutoModel, AutoTokenizer

    path, device = text_model_path(spec), torch.device(device)
    if not Path(path).is_dir():
        raise KdataError(f"--embedder {spec}: model directory not found")
    config = read_config(path)
    check_remote_code(path, config, trust_remote_code=trust_remote_code)
    _, fmt = weight_files(path)
    if fmt != "safetensors":
        raise KdataError(f"--embedder {spec}: needs safetensors weights (model.safetensors)")
    try:
        with quiet_transformers():  # the caller's transformers logging is restored afterwards
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
            model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                              trust_remote_code=trust_remote_code, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001  (transformers' many errors: one line)
        msg = str(exc).strip().splitlines()
        raise KdataError(f"--embedder {spec}: cannot load ({type(exc).__name__}: {msg[0][:160] if msg else ''})") \
            from None
    check_tokenizer(path, tok)
    prec = ("bf16" if device.type == "cuda" else "fp32") if precision == "auto" else precision
    model = model.to(device=device, dtype=torch.bfloat16 if prec == "bf16" else torch.float32).eval()
    checksum = model_checksum(path)
    return TextEmbedder(spec=spec, model=model, tokenizer=tok, checksum=checksum,
                        max_length=resolve_max_length(config, tok, max_length), device=device)


@torch.inference_mode()
def embed_texts(emb: TextEmbedder, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
    """(len(texts), hidden) float32: mean-pooled, L2-normalised last hidden states (module doc)."""
    enc = [emb.tokenizer.encode(t or " ", add_special_tokens=True)[:emb.max_length] or [pad_token_id(emb.tokenizer)]
           for t in texts]
    out = np.zeros((len(texts), 0), dtype=np.float32)
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    parts: dict[int, np.ndarray] = {}
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        width = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_token_id(emb.tokenizer), dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, :len(enc[i])] = torch.tensor(enc[i])
            mask[r, :len(enc[i])] = 1
        ids, mask = ids.to(emb.device), mask.to(emb.device)
        hidden = emb.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        m = mask.unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        for r, i in enumerate(idx):
            parts[i] = pooled[r].cpu().numpy()
    if parts:
        out = np.stack([parts[i] for i in range(len(texts))]).astype(np.float32)
    return out
