"""The ``effnet-zoo`` command's entry point.

It sits outside the effnet_zoo package on purpose: importing the package registers the models with timm, which
imports torch and timm (4-7 s on a small machine). With this module loaded first, ``import effnet_zoo`` leaves the
registration to the command that runs, so ``--help`` and argument errors answer at once. It is the console
script's entry only: a program that runs the command line in its own process calls ``effnet_zoo.cli.main(argv)``
(or ``effnet_zoo.register()`` after this one, if it then uses the models through timm).
"""

from __future__ import annotations

import sys


def main() -> int:
    from effnet_zoo.cli import main as run

    return run()


if __name__ == "__main__":  # python -m effnet_zoo_cli
    sys.exit(main())
