"""Accuracy of a model on a labelled image set (the trainer's evaluation), and the check of a student's
class order against the web labels of shards that name no classes."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from kdata.core.errors import KdataError, brief
from kdata.models.images import decode_image
from kdata.models.spec import Model
from kdata.pools.spec import open_pool
from kdata.scoring.score import label_indices


class EvalSet:
    """Labelled images to measure accuracy on: ``builtin:digits-test``, an image folder or a Parquet pool.

    Decoded once (with the student's preprocessing) and kept as tensors, so per-epoch evaluation
    costs only a forward pass. Rows left out are counted: ``n_unlabelled`` (no label, or one that is not
    among the student's class names; ``n_no_label`` of them have none) and ``n_undecodable`` (an image
    that cannot be decoded).
    """

    def __init__(self, spec: str, *, model: Model, max_rows: int = 200_000):
        pool = open_pool(spec, what="evaluation set")
        xs, ys, n_unlabelled, n_undecodable, n_no_label = [], [], 0, 0, 0
        for unit in pool.units:
            t = unit.read()
            if t.num_rows == 0:
                continue
            if t.column("image").null_count == t.num_rows:
                raise KdataError(f"{spec}: evaluation set has no images")
            labels = label_indices(t.column("label"), model.class_names)
            n_unlabelled += int((labels < 0).sum())
            n_no_label += t.column("label").null_count
            for data, y in zip(t.column("image").to_pylist(), labels):
                if y < 0:
                    continue
                try:
                    xs.append(decode_image(data, input_size=model.input_size, mean=model.mean, std=model.std,
                                           interpolation=model.interpolation))
                except Exception:
                    n_undecodable += 1
                    continue
                ys.append(int(y))
                if len(ys) > max_rows:
                    raise KdataError(f"{spec}: evaluation set larger than {max_rows} labelled images")
        if not ys:
            raise KdataError(f"{spec}: evaluation set has no labelled images whose labels are among the "
                             f"student's class names" + (f" ({n_undecodable} images cannot be decoded)"
                                                         if n_undecodable else ""))
        self.spec = spec
        self.x = torch.stack(xs)
        self.y = torch.tensor(ys, dtype=torch.long)
        self.n_unlabelled, self.n_undecodable, self.n_no_label = n_unlabelled, n_undecodable, n_no_label

    def __len__(self) -> int:
        return len(self.y)

    def accuracy(self, model: Model, *, device=None, batch_size: int = 512) -> float:
        device = device or next(iter(model.module.parameters()), torch.empty(0)).device
        was = model.module.training
        model.module.eval()
        correct = 0
        with torch.inference_mode(), autocast(torch.device(device)):
            for i in range(0, len(self.y), batch_size):
                logits, _ = model.forward(self.x[i:i + batch_size].to(device))
                correct += int((logits.float().argmax(1).cpu() == self.y[i:i + batch_size]).sum())
        model.module.train(was)
        return correct / len(self.y)


def autocast(device: torch.device):
    """bf16 autocast on CUDA, nothing on CPU (fp32 on CPU gives the reference results)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def check_class_order(ds, student: Model) -> str | None:
    """``ds`` a ``ShardDataset`` that names no classes: their web labels (``label``) must be the student's class names at
    their ``label_idx`` (first row group), or the soft labels would train the classes in the wrong
    order. A note (None when checked) when there is nothing to check by; a mismatch is refused."""
    path, pairs = ds.label_sample()
    names = list(student.class_names)
    wrong = [(i, s) for i, s in pairs if i >= len(names) or names[i] != s]
    if wrong:
        i, label = wrong[0]
        have = f"'{names[i]}'" if i < len(names) else "no class"
        raise KdataError(f"{path}: the shards name no classes and their labels disagree with the class order of "
                         f"the student {student.spec}: label_idx {i} is '{label}' in the shards but {have} for the "
                         f"student ({len(wrong)} of {len(pairs)} labelled rows of the first row group); write "
                         "class_names into the shards' metadata, or give the student a sidecar in their order")
    if not pairs:
        return (f"the shards name no classes and hold no web labels to check their order by: the student's "
                f"order ({brief(names)}) is assumed")
    return None
