"""Quantizers: continuous latents -> integer symbols and back."""
