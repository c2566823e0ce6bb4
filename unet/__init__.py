"""unet-medical: the ISBI 2012 U-Net as a versioned, orchestrated pipeline."""

__version__ = "0.1.0"
