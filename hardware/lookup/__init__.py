"""Latency lookup tables: profile layer configurations once, predict a network as their sum.

Implements the latency table of ProxylessNAS (Cai et al., 2019, Sec. 3.3: "we build a
latency prediction model ... the latency of a network is the sum of the latencies of its
operators") and CompactNet's platform simulator (Li et al., 2019: each layer type is
profiled on the device over a range of channel counts, and counts that were not
profiled are interpolated).

What a table entry is (the "unit"). Timing single ops (conv, then bn, then act)
misses what eager PyTorch spends between them, so a unit is what the runtime executes
as one piece of Python:

- ``conv`` / ``dwconv`` / ``gconv``: a convolution together with the BatchNorm and the
  activation that directly follow it (``granularity="block"``, the default; with
  ``granularity="op"`` each leaf layer is its own unit);
- ``linear``, ``pool``, ``bn``, ``act``: leaf layers not absorbed into a conv unit;
- ``func``: every ATen operation a model runs outside its leaf layers (residual adds,
  the flatten before the classifier, squeeze-excitation gates), captured with a
  ``TorchDispatchMode`` and replayed on tensors of the same shapes;
- ``module_call``: the Python cost of entering a container module (a ``Sequential``, a
  block's ``forward``), one unit per call.

The key of a unit is everything that determines its cost (op, input size, kernel,
stride, padding, groups, bias, fused BN/activation, batch) and its channel counts
(``cin``/``cout`` for convolutions and linear layers, ``channels`` for depthwise and
element-wise units). Units that share all but their channel counts form a *family*;
a count missing from the table is interpolated multilinearly between the nearest
profiled counts of its family (exact on table points, monotone between neighbours).
Departure from CompactNet: no extrapolation; a configuration outside the profiled
range is either measured on the spot (``on_missing="profile"``, recorded in the
report) or refused (``on_missing="error"``).
"""


from hardware.lookup.calibration import sequence_calibration
from hardware.lookup.interpolation import DEFAULT_CHANNEL_GRID, bracket_units, interpolate
from hardware.lookup.profiling import library_versions, profile, time_unit, unit_callable
from hardware.lookup.table import TABLE_FORMAT, LatencyTable
from hardware.lookup.target import TableTarget
from hardware.lookup.units import AXES, GRANULARITIES, Unit, model_units, trace_units, units_of

__all__ = [
    "AXES",
    "DEFAULT_CHANNEL_GRID",
    "GRANULARITIES",
    "TABLE_FORMAT",
    "LatencyTable",
    "TableTarget",
    "Unit",
    "bracket_units",
    "interpolate",
    "library_versions",
    "model_units",
    "profile",
    "sequence_calibration",
    "time_unit",
    "trace_units",
    "unit_callable",
    "units_of",
]
