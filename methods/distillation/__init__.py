"""Knowledge distillation: a student trained on what a frozen teacher outputs (Hinton KD, logit mimic, FitNets).

:mod:`.losses` holds the losses (task losses and loss terms of the one training loop,
methods.losses), which the run pipeline also uses as the recovery fine-tuning of every other
method (``recipe.distill``); :mod:`.student` builds the teacher and the student, trains and
stores the student; :mod:`.kd`, :mod:`.mimic` and :mod:`.fitnets` are the methods.
"""
