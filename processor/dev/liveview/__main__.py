"""`python -m processor.dev.liveview`."""

from processor.dev.liveview.cli import main

raise SystemExit(main())
