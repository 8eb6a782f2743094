"""The ASGI entry point's process-level setup."""

from __future__ import annotations

import subprocess
import sys

from tests import stack as stk


def test_startup_objects_are_frozen_out_of_full_collections():
    """The web process freezes what startup created (config/asgi.py): a full collection then
    walks only what calls allocate, not Django's ~100k objects (the c=1 tail latency)."""
    code = ("import gc; before = gc.get_freeze_count(); import modelport.config.asgi; "
            "print(before, gc.get_freeze_count())")
    out = subprocess.run([sys.executable, "-c", code], env=stk.process_env(), capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    before, after = int(out[0]), int(out[1])
    assert before == 0 and after > 50_000
