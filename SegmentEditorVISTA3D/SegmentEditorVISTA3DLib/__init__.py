from SegmentEditorEffects import *

from .SegmentEditorEffect import *
