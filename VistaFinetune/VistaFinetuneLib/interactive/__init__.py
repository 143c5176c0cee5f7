"""Prompted segmentation from an interactive client: model choices, class lists and the warm worker's client."""
