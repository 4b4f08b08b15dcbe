"""Recipes that chain rlhfkit stages into whole experiments."""
