"""``python -m oxidip``: same as the ``oxidip`` command."""

from oxidip.cli import main

raise SystemExit(main())
