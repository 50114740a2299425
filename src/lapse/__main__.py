"""``python -m lapse``: the same as the ``lapse`` command."""

from lapse.cli import main

raise SystemExit(main())
