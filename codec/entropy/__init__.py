"""The entropy layer: integer CDF tables and the rules that pick one per symbol, as plain numpy
arrays for the range coder (bitstream.coder). Models compute their priors and hand them over."""
