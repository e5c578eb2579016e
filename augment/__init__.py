"""Named deterministic image transforms, edit families drawn from ranges, catalog variants,
and the random training pipelines.

>>> from augment import apply_transform, parse_transform
>>> parse_transform("rotate:90").canonical
'rotate'
"""

import lazy_loader

# Names load on first use, so importing the package (for one small part) stays light.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "families": ["FAMILIES", "HELD_OUT_FAMILIES", "RANGES", "draw_combo", "draw_edit", "family_names"],
        "pipeline": [
            "DEFAULT_STEPS",
            "FamilyAugment",
            "RandomAugment",
            "SeededViews",
            "Step",
            "parse_step",
            "with_overrides",
        ],
        "preview": ["contact_sheet"],
        "synthetic": ["make_collection", "make_synthetic_image"],
        "transforms": [
            "ORIGINAL_FOUR",
            "TRANSFORMS",
            "Param",
            "Transform",
            "TransformChain",
            "TransformSpec",
            "VariantSpec",
            "all_transforms",
            "apply_transform",
            "apply_transforms",
            "parse_transform",
            "parse_transforms",
            "parse_variant",
            "valid_transforms",
        ],
        "variants": ["DEFAULT_MAX_SIDE", "AugmentSummary", "augment_catalog", "bound_image", "variant_bytes"],
    },
)
