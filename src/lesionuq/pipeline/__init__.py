"""The pipeline: steps that read and write a run folder and chain the layers below.

So far :mod:`.evaluate` (a fold's test lesions scored by the stored scorers, their
calibration and detection) and :mod:`.learning_curve` (the learned scorers refitted on
subsamples of the validation lesions). ``lesionuq.experiment`` is the rest of the pipeline.
"""
