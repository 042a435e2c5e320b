"""`python -m localcluster`: the local cluster in the foreground (see localcluster.cli)."""

import sys

from localcluster.cli import main

sys.exit(main())
