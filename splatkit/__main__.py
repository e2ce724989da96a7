import sys

from splatkit.cli import main

sys.exit(main())
