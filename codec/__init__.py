"""A learned image codec.

    import codec
    data = codec.encode("photo.png", model="hp", quality=50)   # bytes of a .bin
    image = codec.decode(data)                                 # PIL.Image
    data = codec.encode_video(frames, rate)                    # a video: RGB frames, frames a second
    header, rate, count, frames = codec.decode_video(data)
"""
__version__ = "0.4.0"
__all__ = ["encode", "decode", "encode_video", "decode_video"]


def __getattr__(name):
    # The API pulls in torch; import it on first use so `codec info` and `bitstream` stay light.
    if name in __all__:
        from codec import api
        return getattr(api, name)
    raise AttributeError(f"module 'codec' has no attribute {name!r}")
