"""Registration of two images in world space (:func:`ddmr.register`): the steps of
:mod:`~ddmr.registration.pipeline`, each in its own module, and applying a saved result
(:mod:`~ddmr.registration.apply`)."""
