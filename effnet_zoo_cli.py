"""The ``effnet-zoo`` command's entry point.

It sits outside the effnet_zoo package on purpose: importing the package registers the models with timm, which
imports torch and timm (4-7 s on a small machine). With this module loaded first, ``import effnet_zoo`` leaves the
registration to the command that runs, so ``--help`` and argument errors answer at once.
"""

from __future__ import annotations


def main() -> int:
    from effnet_zoo.cli import main as run

    return run()
