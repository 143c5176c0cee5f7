"""VistaFinetune's headless engine: finetune the MONAI VISTA3D bundle on your own CT data.

Importing this package never imports torch or monai; those run only inside job processes.
"""

__version__ = "0.1.0"
