"""Prompted segmentation with the pretrained or a finetuned VISTA3D: one-shot ``predict`` and the warm worker."""
