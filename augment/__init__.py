"""Named deterministic image transforms, catalog variants, and the random training pipeline.

>>> from augment import apply_transform, parse_transform
>>> parse_transform("rotate:90").canonical
'rotate'
"""

from .pipeline import DEFAULT_STEPS, RandomAugment, Step, parse_step, with_overrides
from .preview import contact_sheet
from .synthetic import make_collection, make_synthetic_image
from .transforms import (
    ORIGINAL_FOUR,
    TRANSFORMS,
    Param,
    Transform,
    TransformSpec,
    all_transforms,
    apply_transform,
    apply_transforms,
    parse_transform,
    parse_transforms,
    valid_transforms,
)
from .variants import DEFAULT_MAX_SIDE, AugmentSummary, augment_catalog, bound_image, variant_bytes

__all__ = [
    "DEFAULT_MAX_SIDE",
    "DEFAULT_STEPS",
    "ORIGINAL_FOUR",
    "TRANSFORMS",
    "AugmentSummary",
    "Param",
    "RandomAugment",
    "Step",
    "Transform",
    "TransformSpec",
    "all_transforms",
    "apply_transform",
    "apply_transforms",
    "augment_catalog",
    "bound_image",
    "contact_sheet",
    "make_collection",
    "make_synthetic_image",
    "parse_step",
    "parse_transform",
    "parse_transforms",
    "valid_transforms",
    "variant_bytes",
    "with_overrides",
]
