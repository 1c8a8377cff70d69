"""`python -m gateway` is the `tollbooth` command."""

from gateway.cli import main

raise SystemExit(main())
