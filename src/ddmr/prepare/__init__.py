"""Preparation: the one recipe that turns an image into a network's input
(:mod:`~ddmr.prepare.recipe`) and ``ddmr prepare`` over a dataset
(:mod:`~ddmr.prepare.dataset`)."""
