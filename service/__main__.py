"""``python -m service`` is the same as the ``coder-bridge`` console script."""

from service.cli import main

raise SystemExit(main())
