"""Scoring puts the models' modules in eval mode for the forward pass and gives each submodule its own
mode back: a module handed over in train mode was scored in train mode (BatchNorm on batch statistics,
its running statistics moved by the pool)."""

from __future__ import annotations

import torch
from torch import nn

from kdata.models.base import Model
from kdata.pools.spec import open_pool
from kdata.scoring.score import ScoreConfig, score_pool, score_table
from tests.helpers.bn_nets import bn_model
from tests.helpers.bn_nets import bn_net as helper_net
from tests.helpers.real_inputs import make_image_folder

NAMES = ["a", "b", "c"]


def bn_net(seed: int) -> nn.Module:
    return helper_net(seed, len(NAMES))


def model(net: nn.Module, name: str) -> Model:
    return bn_model(net, name, NAMES)


def test_a_module_in_train_mode_is_scored_in_eval_mode_and_left_as_it_was(tmp_path, cache):
    pool = open_pool(str(make_image_folder(tmp_path / "pool", n=24)))
    teacher_net, student_net = bn_net(0), bn_net(1)
    student_net[3].eval()  # a submodule in its own mode keeps it
    before = {k: v.clone() for k, v in teacher_net.state_dict().items()}
    cfg = ScoreConfig(batch_size=8, embeddings=False)
    in_train, _, _ = score_pool(pool, model(teacher_net, "t"), model(student_net, "s"), config=cfg, cache=False)
    assert teacher_net.training and student_net.training and not student_net[3].training
    assert all(torch.equal(v, before[k]) for k, v in teacher_net.state_dict().items())  # running stats untouched
    teacher_net.eval()
    student_net.eval()
    in_eval, _, _ = score_pool(pool, model(teacher_net, "t"), model(student_net, "s"), config=cfg, cache=False)
    same = [c for c in in_eval.column_names if c != "teacher_label_prob"]  # NaN there: the labels are not classes
    assert in_train.num_rows == 24 and in_train.select(same).equals(in_eval.select(same))
    table, _ = score_table(pool.read_all(), model(bn_net(0), "t"), model(bn_net(1), "s"), config=cfg)
    assert table.column("teacher_logits").equals(in_eval.column("teacher_logits"))
