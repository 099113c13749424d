"""Synthetic dermoscopy data written in exactly the ISIC 2017 (or ISIC 2018 Task 1-2) layout (docs/design.md §2, §8).

ISIC images cannot be bundled, so the default data of the demo and of the tests is drawn here and
written the way the official zips unzip, so that the one ISIC reader (``dermogaze data prepare``)
handles both. One image goes through the modules in order:

==================  ==========================================================================
``sample``          the lesion's parameters: latent diagnosis, the three cues that decide it
                    (:func:`~.sample.melanoma_rule`), structures, shape (:class:`~.sample.SampleParams`,
                    :func:`~.sample.sample_params`); patient metadata; one random stream per image
                    (:func:`~.sample.image_rng`), so that the same seed gives the same bytes
``render``          the picture, the lesion mask and the drawn region of each structure
                    (:func:`~.render.render`; :func:`~.render.make_sample` adds the superpixels)
``superpixels``     SLIC0 superpixels, their ISIC RGB encoding, the per-superpixel feature labels
``write``           the ISIC 2017 / 2018 folders, CSVs and sidecars, written atomically per split
                    (:func:`~.write.write_synthetic_isic`)
==================  ==========================================================================

The entry points are re-exported here: :func:`write_synthetic_isic`, :func:`labels_path` (the
diagnosis CSV of a synthetic ISIC 2018 collection), :func:`truth_path` (a split's sidecar of
drawn cues) and :func:`is_synthetic_collection` (a folder this generator wrote).
"""

from __future__ import annotations

from .write import is_synthetic_collection, labels_path, truth_path, write_synthetic_isic

__all__ = ["is_synthetic_collection", "labels_path", "truth_path", "write_synthetic_isic"]
