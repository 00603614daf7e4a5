"""Pieces of native-space registration (:func:`ddmr.register`): the model's space, the
trip of the predicted field back to the fixed image's grid, affine pre-alignment."""
