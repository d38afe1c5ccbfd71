"""rtk: from a folder of labelled images to a verified, served image classifier."""

__version__ = "0.1.0"
