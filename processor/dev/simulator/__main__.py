"""`python -m processor.dev.simulator`."""

from processor.dev.simulator.cli import main

raise SystemExit(main())
