"""`python -m cni_bridge.libcni add|check|del <network> <netns>` (see cli.py)."""

from cni_bridge.libcni.cli import main

raise SystemExit(main())
