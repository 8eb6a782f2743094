import sys

from modelport_client.cli import main

sys.exit(main())
