"""Family-neutral storage of compressed models: one container, codecs for every format, one load.

:mod:`.container` is the file (JSON header, raw parts), the codec and architecture
registries, :func:`save_model` and :func:`load_model`; :mod:`.bits` packs integers at their
width and holds the relative sparse index; :mod:`.codecs`, :mod:`.sparse` and
:mod:`.codebook` are the codecs; :mod:`.huffman` the entropy coder. Every method of every
family writes its model here, so any stored file is read by one function. Importing this
package registers every codec.
"""

from methods.storage import codebook, codecs, sparse  # noqa: F401  (register the codecs)
from methods.storage.container import (
    StorageError,
    StoredState,
    TensorEntry,
    load_model,
    load_state_into,
    part_sizes,
    read_entries,
    read_state,
    register_architecture,
    register_codec,
    save_model,
    size_metrics,
)

__all__ = [
    "StorageError",
    "StoredState",
    "TensorEntry",
    "load_model",
    "load_state_into",
    "part_sizes",
    "read_entries",
    "read_state",
    "register_architecture",
    "register_codec",
    "save_model",
    "size_metrics",
]
