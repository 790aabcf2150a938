class BitstreamError(ValueError):
    """A .bin file or coded payload that cannot be read; the message says why, for a person."""
