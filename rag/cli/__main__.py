"""`python -m rag.cli ...` runs `medrag ...` (as `accelerate launch -m rag.cli` and the tests do)."""

import sys

from rag.cli import main

sys.exit(main())
