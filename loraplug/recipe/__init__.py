"""Recipes: TOML files that say what to train, checked completely before anything loads."""

from loraplug.recipe.model import ExportSection, KindSection, Recipe
from loraplug.recipe.validate import load_recipe

__all__ = ["ExportSection", "KindSection", "Recipe", "load_recipe"]
