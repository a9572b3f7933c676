"""Exceptions raised by the data code, so callers can catch bad user data in one place."""


class DatasetError(ValueError):
    """A dataset (annotation file, image folder, image) is missing or malformed."""


class ImageReadError(DatasetError):
    """An image file is missing, unreadable or not an image."""
