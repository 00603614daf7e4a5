"""Space: grids and their frames (:mod:`~ddmr.spatial.grid`), resampling
(:mod:`~ddmr.spatial.resample`), what a displacement means and its algebra, the Jacobian
included (:mod:`~ddmr.spatial.field`), warping (:mod:`~ddmr.spatial.warp`) and separable
filters (:mod:`~ddmr.spatial.filters`)."""
