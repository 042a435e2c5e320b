"""`python -m demomodels --out DIR`: write the demo SavedModels."""

import sys

from demomodels import main

sys.exit(main())
