"""Hinton et al., "Distilling the Knowledge in a Neural Network" (2015): a student trained on the teacher's soft targets.

The loss is ``alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(y, z_s)``
(:class:`methods.distillation.losses.HintonKD`); the ``T^2`` factor, from the paper, keeps the soft
targets' gradients the same size as ``T`` changes. Distiller's defaults are T = 1, alpha = 0.5, its
CIFAR examples T in {1, 2, 5} with alpha = 0.7; ours (T = 4, alpha = 0.9) weigh the soft targets most.
Berthelier et al. (2020, Sec. 2.1) survey distillation as the first of the compression techniques.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.config import option
from methods.distillation.losses import HintonKD
from methods.distillation.student import Distillation, DistillationConfig
from methods.losses import LossTerm


@dataclass
class KDConfig(DistillationConfig):
    """conf/method/kd.yaml: the student, the teacher, its training, the temperature and the soft targets' weight."""

    T: float = option(4.0, gt=0, why="the softmax temperature")
    alpha: float = option(0.9, ge=0, le=1, why="the weight of the soft targets; 1 - alpha weighs the labels")


class KnowledgeDistillation(Distillation):
    """``kd``: Hinton's soft targets at temperature ``T``."""

    name = "kd"
    Config = KDConfig
    config: KDConfig

    def task_loss(self) -> LossTerm:
        return HintonKD(self.config.T, self.config.alpha)

    def uses_teacher(self) -> bool:
        """``alpha = 0`` is the student trained on the labels alone: the same loop, the baseline of a KD study."""
        return self.config.alpha > 0
