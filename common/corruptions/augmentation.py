"""MR-artifact augmentation: a MONAI random transform that applies one corruption of :mod:`common.corruptions`.

The defence against artifacts (issue 15) trains on inputs corrupted the way the evaluation corrupts them: with
probability ``prob`` a sample gets one corruption drawn uniformly from a list (default: all of
:data:`~common.corruptions.CORRUPTIONS`) at a severity drawn uniformly from a list (default: 1-5), through
:func:`~common.corruptions.corrupt`, so training and the ``corruption`` threat share one artifact model and one
severity table, in the style of TorchIO's random artifact transforms. A model trained this way has seen the
evaluation's corruptions, so its ``corruption`` rows measure robustness to known artifacts, not to unseen ones:
Hendrycks & Dietterich (2019, ImageNet-C) ask that benchmark corruptions not be trained on for that reason. Hold some
out (``corruptions=[...]``) to measure generalisation.

All draws (whether to corrupt, which corruption, which severity, and the corruption's own seed) come from the
transform's ``R`` (NumPy), so :meth:`set_random_state` -- which MONAI's ``DataLoader`` and ``set_determinism`` drive
-- makes a run reproducible, as for any MONAI random transform.

Two or three spatial dimensions: :func:`~common.corruptions.corrupt` takes ``(C, H, W)`` and ``(C, H, W, D)``. The
"slice" of ``downsample`` (thick slices) and ``missing_*`` (lost slices) is the *last* spatial axis, the axial one of
a RAS volume. The 2D bundles therefore apply this transform to the whole volume, before
:class:`~common.data.slices.RandAxialSlicesd` stacks random axial slices along that axis, exactly as the evaluation
corrupts the volume before the slice-wise network sees it. On a single 2D slice ``(C, H, W)`` those corruptions act
along ``W`` instead (an in-plane resolution loss, zeroed columns), and after slicing they would mix unrelated slices:
do not put this transform after a slicing transform.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_tensor

from common.corruptions.base import SEVERITIES
from common.corruptions.registry import _SEED_LIMIT, check_corruption_names, check_severities, corrupt
from common.utils.validation import check_number

__all__ = ["RandMRArtifact", "RandMRArtifactd"]


class RandMRArtifact(RandomizableTransform):
    """With probability ``prob``, corrupt an image ``(C, *spatial)`` by one MR artifact at a random severity.

    The corruption is drawn uniformly from ``corruptions``, the severity uniformly from ``severities``, and the
    corruption's seed (for the random ones: the bias field's shape, the noise, the spike's location, the movement)
    uniformly from ``[0, 2**32)``, all from this transform's ``R``. The image keeps its type, shape and dtype (a
    :class:`~monai.data.MetaTensor` keeps its affine and metadata); see :func:`~common.corruptions.corrupt` for the
    intensity range of the result.

    Args:
        prob: probability of corrupting an image, in [0, 1].
        corruptions: ``"all"`` (every name of :data:`~common.corruptions.CORRUPTIONS`), one name, or a list of them.
        severities: the severities to draw from, integers 1 (mild) to 5 (severe).

    Raises:
        RobustsegError: if ``prob`` is outside [0, 1], a name is unknown (the names are listed), a severity is not an
            integer 1-5, or either list is empty.

    Example::

        artifact = RandMRArtifact(prob=0.5, corruptions=["motion", "rician_noise"]).set_random_state(seed=0)
        image = artifact(image)   # (4, H, W, D), corrupted with probability 0.5
        artifact.last             # ("motion", 3, 2712380519) after a corrupting call, None otherwise
    """

    def __init__(
        self, prob: float = 0.5, corruptions: str | Sequence[str] = "all", severities: Sequence[int] = SEVERITIES
    ) -> None:
        RandomizableTransform.__init__(self, check_number("prob", prob, 0.0, 1.0))
        self.corruptions = check_corruption_names(corruptions)
        self.severities = check_severities(severities)
        # the (corruption, severity, seed) of the last draw; None when it left the image clean
        self.last: tuple[str, int, int] | None = None

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            self.last = None
            return
        name = self.corruptions[self.R.randint(len(self.corruptions))]
        severity = self.severities[self.R.randint(len(self.severities))]
        seed = int(self.R.randint(0, _SEED_LIMIT, dtype=np.int64))
        self.last = (name, int(severity), seed)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Apply the transform to ``img`` (C, H, W) or (C, H, W, D); a tensor comes back (MetaTensor if tracked)."""
        img = convert_to_tensor(img, track_meta=get_track_meta())
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        if self.last is None:
            raise RuntimeError("call randomize() first.")
        name, severity, seed = self.last
        return corrupt(img, name, severity, seed)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(prob={self.prob}, corruptions={list(self.corruptions)}, "
                f"severities={list(self.severities)})")  # fmt: skip


class RandMRArtifactd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandMRArtifact`: the defence bundles' ``artaug`` augmentation.

    All ``keys`` share one draw (the same corruption, severity and seed), as in MONAI's ``RandGaussianNoised``; give
    only image keys (a label map must not be corrupted).

    Args:
        keys: keys of the images to corrupt, e.g. ``"image"``.
        prob: probability of corrupting a sample, in [0, 1].
        corruptions: ``"all"``, one name, or a list of names of :data:`~common.corruptions.CORRUPTIONS`.
        severities: the severities to draw from, integers 1-5.
        allow_missing_keys: do not raise if a key is missing.

    Raises:
        RobustsegError: as :class:`RandMRArtifact`.

    Example::

        {"_target_": "common.corruptions.RandMRArtifactd", "keys": "image", "prob": 0.5, "corruptions": "all",
         "severities": [1, 2, 3, 4, 5]}
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        corruptions: str | Sequence[str] = "all",
        severities: Sequence[int] = SEVERITIES,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, check_number("prob", prob, 0.0, 1.0))
        self.artifact = RandMRArtifact(prob=1.0, corruptions=corruptions, severities=severities)

    @property
    def last(self) -> tuple[str, int, int] | None:
        """The (corruption, severity, seed) applied by the last call, ``None`` if it left the sample clean."""
        return self.artifact.last if self._do_transform else None

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandMRArtifactd:
        super().set_random_state(seed, state)
        self.artifact.set_random_state(state=self.R)  # one stream: the draws follow from this transform's seed
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        if self._do_transform:
            self.artifact.randomize()
        for key in self.key_iterator(d):
            if self._do_transform:
                d[key] = self.artifact(d[key], randomize=False)
            else:
                d[key] = convert_to_tensor(d[key], track_meta=get_track_meta())
        return d

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(keys={list(self.keys)}, prob={self.prob}, "
                f"corruptions={list(self.artifact.corruptions)}, severities={list(self.artifact.severities)})")
