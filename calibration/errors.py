"""Exceptions raised by the data code, so callers can catch bad user data in one place."""
from babo_edge.errors import BaboError


class DatasetError(BaboError, ValueError):
    """A dataset (annotation file, image folder, image) is missing or malformed."""


class ImageReadError(DatasetError):
    """An image file is missing, unreadable or not an image."""
