"""Explanations per image: the sequence of gazes, the structure each names, and its figures (docs/design.md §7).

:mod:`.record` runs a model on one image and makes its JSON record (:func:`~.record.explain_image`);
:mod:`.run` is ``dermogaze explain``: a checkpoint on image files or a prepared split, and the files of
each image (record, gaze and mask figures).
"""
