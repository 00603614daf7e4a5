"""Files: images and label maps (:mod:`~ddmr.io.images`), displacement fields in the
ITK/ANTs convention (:mod:`~ddmr.io.fields`), SimpleITK/ANTs objects
(:mod:`~ddmr.io.convert`), and safe writes and output folders (:mod:`~ddmr.io.files`).
Grids and resampling live in :mod:`ddmr.spatial`."""
