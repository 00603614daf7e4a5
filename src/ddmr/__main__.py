import sys

from ddmr.cli import main

sys.exit(main())
