"""Training data: CT/label cases, synthetic phantoms, and the map from the user's labels to VISTA3D classes."""
