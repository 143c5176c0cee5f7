"""VistaFinetune's headless engine: finetune the MONAI VISTA3D bundle on your own CT data.

Importing this package never imports torch or monai; those run only inside job processes.

Subpackages, imports pointing one way (``finetune`` and ``jobs`` use the rest; ``review``, ``data`` and ``bundle``
never import ``finetune`` or ``jobs``): ``bundle/`` (the bundle folder, its runner, log, label table, the tiny
reference bundle), ``data/`` (datasets, synthetic phantoms, label mapping, geometry), ``finetune/`` (plan, staging,
phases, verdict, formal Dice, checkpoints, verify), ``jobs/`` (background jobs), ``review/`` (metrics, confusion,
pictures, the HTML page).

Coordinates (left is left): world coordinates are RAS millimetres, the NIfTI world and Slicer's, where +x is the
patient's right. Voxel indices (i, j, k) index the stored array. The one conversion between them is
:mod:`VistaFinetuneLib.data.geometry`:

- RAS in: ``geometry.ras_to_ijk`` (points -> fractional indices), ``geometry.voxel_to_voxel`` (grid -> grid, used by
  ``review.compare.on_grid`` to resample a prediction onto its ground truth's grid);
- voxel indices in: ``geometry.ijk_to_ras``, ``geometry.voxel_centres_ras`` / ``grid_centre_ras`` (used by
  ``data.synthetic`` to place organs in RAS: liver and lesion at x > 0, spleen and left kidney at x < 0) and
  ``geometry.voxel_spacing_mm`` (``data.dataset``, ``review``);
- pictures: ``review.figures.canonical_ras`` reorders any stored array to RAS axes; ``display_slice`` then draws
  radiologically (patient's right on the screen's left, under "R"), as Slicer's slice views do.

Point prompts reach the bundle's inference as voxel indices of the input image; RAS clicks (Slicer's) are
converted with ``geometry.ras_to_ijk`` first.
"""

__version__ = "0.1.0"
