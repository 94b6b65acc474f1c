"""The pipeline: steps that read and write a run folder and chain the layers below.

One module per concern:

- :mod:`.stages`: the per-case stages (preprocess, sample, graphs) and the helper every
  stage shares (:func:`~.stages.run_stale`: the units whose stamp is missing or stale,
  run with :func:`lesionuq.parallel.map_cases`, failures raised at the end);
- :mod:`.train`: each fold's U-Net (per fold, possibly under ``torchrun``);
- :mod:`.fit`: fitting and calibrating each fold's scorers;
- :mod:`.evaluate`: a fold's test lesions scored by the stored scorers, their
  calibration and detection, and the results of a run (:class:`~.evaluate.ExperimentResult`);
- :mod:`.experiment`: :func:`~.experiment.run_experiment`, the run's plan and the stage list;
- :mod:`.learning_curve`: the learned scorers refitted on subsamples of the validation
  lesions.
"""
