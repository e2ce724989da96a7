import sys

from splatkit.launcher import main

sys.exit(main())
