from __future__ import annotations

import sys

from tests.stack import REPO

CLIENT_SRC = REPO / "clients" / "python"

try:  # installed by requirements-dev.txt (-e ./clients/python); the source tree works as well
    import modelport_client  # noqa: F401
except ImportError:
    sys.path.insert(0, str(CLIENT_SRC))
