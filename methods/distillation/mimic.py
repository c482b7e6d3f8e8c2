"""Ba & Caruana, "Do Deep Nets Really Need to be Deep?" (2014): a student regresses the teacher's logits.

The loss is ``1/2 * ||z_s - z_t||^2`` per example, averaged over the batch
(:class:`methods.distillation.losses.LogitMimic`): no softmax, no temperature, no labels; the
logits keep the information a softmax would squash. The paper's students are shallow and wide,
trained on the teacher's logits of (possibly unlabelled) data; here they see the training split.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.distillation.losses import LogitMimic
from methods.distillation.student import Distillation, DistillationConfig
from methods.losses import LossTerm


@dataclass
class MimicConfig(DistillationConfig):
    """conf/method/mimic.yaml: the student, the teacher and the student's training."""


class LogitMimicking(Distillation):
    """``mimic``: L2 regression of the student's logits on the teacher's."""

    name = "mimic"
    Config = MimicConfig
    config: MimicConfig

    def task_loss(self) -> LossTerm:
        return LogitMimic()
