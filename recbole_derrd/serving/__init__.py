"""Serving the distilled student: top-k recommendation and export as a stock RecBole model."""
