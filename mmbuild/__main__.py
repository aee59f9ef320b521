"""``python -m mmbuild``: the command line (mmbuild.cli)."""

from __future__ import annotations

from mmbuild.cli import main

raise SystemExit(main())
