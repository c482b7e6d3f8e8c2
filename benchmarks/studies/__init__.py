"""Studies: experiments beside the benchmark matrix whose reports live in results/.

Each is a module run as ``python -m benchmarks.studies.<name>``, built from the same pieces
as a run (datamodules, the model zoo, ``benchmarks.context.make_context``, the hardware
targets) and from methods made by ``methods.create_method``, so a study's method settings
are its yaml's defaults plus the overrides it states. Their markdown reports are rendered
from the JSON figures the studies write (``python -m benchmarks.studies.report``).
"""
