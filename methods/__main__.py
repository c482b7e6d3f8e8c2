"""``python -m methods list [PATTERN]`` | ``python -m methods show NAME [KEY=VALUE ...]``.

list: every method (conf/method/*.yaml) with its family and summary; show: a method's
configuration, its yaml with the overrides applied, as ``create_method`` would build it.
"""

from __future__ import annotations

import argparse
from typing import Any, cast

from omegaconf import OmegaConf

from methods.base import MethodConfigError
from methods.registry import list_methods, method_config, method_info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m methods", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the methods, their family and summary")
    listing.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. '*prun*'")
    show = commands.add_parser("show", help="a method's configuration with overrides applied")
    show.add_argument("name")
    show.add_argument("overrides", nargs="*", help="KEY=VALUE (yaml values; nested keys dotted: finetune.lr=0.01)")
    args = parser.parse_args(argv)

    try:
        if args.command == "list":
            infos = [method_info(name) for name in list_methods(args.pattern)]
            width = max((len(i.name) for i in infos), default=0)
            family_width = max((len(i.family) for i in infos), default=0)
            for info in infos:
                print(f"{info.name:<{width}}  {info.family or '-':<{family_width}}  {info.summary}")
            return 0
        dotted = cast(dict[str, Any], OmegaConf.to_container(OmegaConf.from_dotlist(args.overrides)))
        print(OmegaConf.to_yaml(method_config(args.name, **dotted)), end="")
    except MethodConfigError as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
