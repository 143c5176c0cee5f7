"""Scene logic: the user's MRML nodes become a training set, and results come back as nodes.

MRML and Slicer logic classes only (``import slicer`` from Slicer or the ``slicer-core`` wheel): no ``slicer.app``,
no qt, no ``slicer.util`` load/save helpers, so the same code runs inside Slicer and under plain pytest. Files are
read and written with storage nodes; a NIfTI affine equals the volume's IJK-to-RAS. Arrays here are indexed
``[i, j, k]`` like nibabel's (VTK stores them ``[k, j, i]``).
"""
