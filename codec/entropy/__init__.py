"""Entropy models: integer symbols + the CDF tables that code them, handed to the range coder."""
