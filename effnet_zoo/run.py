"""``python -m effnet_zoo.run SCRIPT.py [ARGS ...]``: run one of timm's scripts with our models registered.

timm's ``validate.py``, ``inference.py`` and ``benchmark.py`` have no option to import a plugin (``train.py`` has
``--device-modules effnet_zoo``), so ``--model effnet_v1_b0`` is unknown to them. This imports effnet_zoo, then runs
the script exactly as ``python SCRIPT.py ARGS`` would (``__main__``, its folder first on ``sys.path``, its argv).
Under torchrun: ``torchrun --nproc_per_node 2 -m effnet_zoo.run train.py ARGS``.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

USAGE = "usage: python -m effnet_zoo.run SCRIPT.py [ARGS ...]   (e.g. timm's validate.py --model effnet_v1_b0 ...)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0 if argv else 2
    script = Path(argv[0])
    if not (script.is_file() or (script / "__main__.py").is_file()):
        print(f"effnet_zoo.run: error: {ascii(str(script))[1:-1]} is not a script; {USAGE}", file=sys.stderr)
        return 2
    import effnet_zoo  # noqa: F401  (registers effnet_v1_* / effnet_lite* with timm)

    script = script.resolve()  # what `python SCRIPT.py` gives: an absolute __file__ whatever the script chdirs to
    sys.argv = [str(script), *argv[1:]]
    # `python -m` put the working folder first on sys.path; `python SCRIPT.py` puts the script's folder there
    sys.path[0] = str(script if script.is_dir() else script.parent)
    runpy.run_path(str(script), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
