"""Compression methods, one class per method configured by conf/method/<name>.yaml.

The Python door (methods.registry): ``list_methods(pattern)``, ``create_method(name, **overrides)``;
on the command line, ``python -m methods list``.
"""

from methods.registry import create_method, list_methods

__all__ = ["create_method", "list_methods"]
