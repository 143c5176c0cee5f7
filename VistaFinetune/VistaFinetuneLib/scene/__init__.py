"""Scene logic: Slicer's MRML nodes and logic classes only (no slicer.app, no qt), so it also runs under slicer-core."""
