"""Preprocessing: a recipe (stored in each model's manifest) and the functions that apply it."""

from cxrtriage.preprocess.apply import (
    Geometry,
    ModelInput,
    PixelNeeds,
    from_original,
    max_scale,
    plan_geometry,
    skimage_resize,
    to_model_input,
    to_original,
)
from cxrtriage.preprocess.recipe import GeometryMode, IntensityMode, PreprocessRecipe, ResizeMode, VoiMode

__all__ = [
    "Geometry",
    "GeometryMode",
    "IntensityMode",
    "ModelInput",
    "PixelNeeds",
    "PreprocessRecipe",
    "ResizeMode",
    "VoiMode",
    "from_original",
    "max_scale",
    "plan_geometry",
    "skimage_resize",
    "to_model_input",
    "to_original",
]
