"""Preprocessing: a recipe (stored in each model's manifest) and the functions that apply it."""

from cxrtriage.preprocess.apply import (
    Geometry,
    ModelInput,
    PixelNeeds,
    from_original,
    max_scale,
    plan_geometry,
    to_model_input,
    to_original,
)
from cxrtriage.preprocess.recipe import GeometryMode, IntensityMode, PreprocessRecipe, VoiMode

__all__ = [
    "Geometry",
    "GeometryMode",
    "IntensityMode",
    "ModelInput",
    "PixelNeeds",
    "PreprocessRecipe",
    "VoiMode",
    "from_original",
    "max_scale",
    "plan_geometry",
    "to_model_input",
    "to_original",
]
