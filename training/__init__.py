"""Training of the shipped models: one resumable, time-budgeted command per family, run from the
repository root. Not part of the installed package (setup.py packages `codec` and `bitstream` only).

    python -m training.hp --data .data/train --out runs/hp --minutes 8    # the hp family
    python -m training.vq --stage autoencoder --data .data/train --out runs/vq --minutes 8

Their defaults build the shipped models; docs/training.md says how each shipped model was made.
"""
