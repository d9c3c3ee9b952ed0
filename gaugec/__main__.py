import sys

from gaugec.cli import main

sys.exit(main())
