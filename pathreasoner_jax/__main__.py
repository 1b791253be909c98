import sys

from pathreasoner_jax.cli import main

sys.exit(main())
