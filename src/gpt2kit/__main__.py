"""`python -m gpt2kit ...` (and `torchrun -m gpt2kit train ...`) run the CLI."""
import sys

from gpt2kit.cli import main

sys.exit(main())
