import sys

from kdata.cli import main

sys.exit(main())
