"""``python -m mmbuild``: the same as the ``mmbuild`` console script."""

from __future__ import annotations

import sys

from mmbuild.cli import main

sys.exit(main())
