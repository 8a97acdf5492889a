"""`python -m serverflow_agent` is `serverflow-agent`."""

import sys

from serverflow_agent.cli import main

sys.exit(main())
