"""`python -m orchestrator.bench`: the bench verb on its own, with the CLI verb's options."""

import sys

from orchestrator.bench.runner import main

sys.exit(main())
