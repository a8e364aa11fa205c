"""robustseg: adversarial and artifact robustness of brain-tumour segmentation, as MONAI bundles.

Bundle configs reference this package with ``"$import common"`` and ``"_target_": "common.<area>.<Name>"``; MONAI's
config parser resolves names by attribute look-up, so every subpackage is imported here.
"""

from __future__ import annotations

from common import errors

errors.install_excepthook()

from common import attacks, bundles, data, defenses, engines, losses, metrics, networks  # noqa: E402

__version__ = "0.1.0"
__all__ = ["attacks", "bundles", "data", "defenses", "engines", "errors", "losses", "metrics", "networks", "__version__"]
