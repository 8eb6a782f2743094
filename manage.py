#!/usr/bin/env python
"""Django's command-line entry point.

`platform/` is a plain folder (a package of that name would shadow the standard library's
`platform` module), so it is put on sys.path here rather than imported.
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "modelport.config.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
