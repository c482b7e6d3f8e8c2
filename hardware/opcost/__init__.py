"""Per-operator cost models fitted to measured per-layer latencies, and the target built on them.

``model``: the cost model (operator families, features, NNLS fit); ``fit``: its in-sample
and leave-one-model-out errors on the profiles; ``target``: :class:`OpProfileTarget`, a
device (``conf/hw/pixel1.yaml``) emulated by a cost model fitted on its profiles.
"""

from hardware.opcost.fit import FitReport, fit_report
from hardware.opcost.model import OpCostModel
from hardware.opcost.target import PROFILE_FORMATS, OpProfileTarget

__all__ = ["PROFILE_FORMATS", "FitReport", "OpCostModel", "OpProfileTarget", "fit_report"]
