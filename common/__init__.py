"""robustseg: adversarial and artifact robustness of brain-tumour segmentation, as MONAI bundles.

Bundle configs reference this package with ``"$import common"`` and ``"_target_": "common.<area>.<Name>"``. MONAI's
config parser resolves ``common.attacks.FGSM`` by attribute look-up, so the subpackages are reachable as attributes
of ``common``; they are imported on first access (PEP 562) so that ``robustseg --help`` does not pay for torch and
MONAI.
"""

from __future__ import annotations

import importlib
from typing import Any

from common import errors

errors.install_excepthook()

__version__ = "0.1.0"
_SUBPACKAGES = (
    "attacks", "bundles", "corruptions", "data", "defenses", "engines", "losses", "metrics", "networks", "report",
    "utils",
)  # fmt: skip
__all__ = ["errors", "__version__", *_SUBPACKAGES]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        module = importlib.import_module(f"common.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'common' has no attribute {name!r}")
