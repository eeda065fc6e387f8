"""``python -m mmjax.evaluate``: zero-shot classification and retrieval benchmarks of a two-tower model; the
command is ``mmjax.commands.evaluate`` (docs/evaluate_command.md)."""

import sys

from mmjax.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
