"""``python -m hardware``: see hardware/cli.py."""

from hardware.cli import main

raise SystemExit(main())
