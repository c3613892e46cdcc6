"""Regenerate hub_configs/ from the registry: ``python tools/gen_hub_configs.py``.

tests/test_registry.py fails when the committed files drift from what this writes.
"""

from pathlib import Path

import effnet_zoo  # noqa: F401  (registers the models)
from effnet_zoo.hub.config import write_hub_configs

if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "hub_configs"
    for path in write_hub_configs(out):
        print(path.relative_to(out.parent))
