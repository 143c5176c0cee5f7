"""The Slicer module panel's logic without Qt or Slicer: what each section shows and what its buttons do."""
