"""Models: files with their cards (:mod:`~ddmr.model.file`, :mod:`~ddmr.model.card`), the
shipped models (:mod:`~ddmr.model.shipped`, whose weights live in this folder), and a
network with its own affine stage (:mod:`~ddmr.model.predictor`,
:mod:`~ddmr.model.align`)."""
