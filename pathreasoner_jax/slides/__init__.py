"""Whole-slide image handling that inference needs at run time (the library never
imports `data_prep`): OpenSlide reading and magnification (`reader`), tissue masks
(`tissue`), tiling at a target magnification (`tiling`), several image scales
(`views`), patch encoders in Flax NNX (`encoders`: `demo`, `conch_v1`), threaded
extraction (`extract.extract_slide`), TRIDENT/CLAM h5 and SlideChat CSV files
(`h5io`), k-means pseudo-bags (`cluster`).

Submodules are imported on demand so that `import pathreasoner_jax.slides.reader`
does not pull in JAX.
"""
