from __future__ import annotations

import pytest
import torch

#: Test tiers (docs/DESIGN.md): ``make test`` and CI run every test; ``make test-fast``
#: (``pytest -m "not slow"``) skips the integration tests, marked ``slow`` here, in one
#: table, by the fixture they use (even indirectly) or by name ("file" or "file::test").
SLOW_FIXTURES = {
    "tiny_run": "the whole protocol, run once per session",
    "ddp_run": "two-process (torchrun-style) training",
    "cluster": "a Dask LocalCluster",
}
_TRAINS_UNET = "trains a U-Net"
_PHANTOM = "generates phantom scans on the MNI template"
_SUBPROCESS = "a fresh interpreter importing the package"
_PREDICTS = "several end-to-end predictions"
SLOW_TESTS = {
    "test_gcnn_ens.py": "trains GCNN ensembles",
    "test_scorer_pins.py": "trains seven tiny GCNNs",
    "test_gcnn.py::test_gcnn_beats_every_baseline_on_spatial_arrangement": "trains GCNNs",
    "test_gcnn.py::test_gcnn_reg_learns_the_arrangement": "trains a GCNN",
    "test_gcnn.py::test_fit_is_deterministic_and_seeded": "trains three GCNNs",
    "test_train.py::test_training_lowers_the_loss_and_checkpoint_round_trips": _TRAINS_UNET,
    "test_train.py::test_resume_continues_exactly": _TRAINS_UNET,
    "test_train.py::test_early_stop_on_patience": _TRAINS_UNET,
    "test_train.py::test_patch_larger_than_volume_is_clipped_with_one_warning": _TRAINS_UNET,
    "test_train.py::test_channels_last_training_keeps_fp32_results": _TRAINS_UNET,
    "test_train.py::test_fp32_training_is_unchanged_and_auto_without_bf16_is_fp32": _TRAINS_UNET,
    "test_train.py::test_bf16_training_close_to_fp32_with_float32_weights": _TRAINS_UNET,
    "test_train.py::test_resume_in_another_precision": _TRAINS_UNET,
    "test_train.py::test_poly_schedule_reaches_the_optimiser_and_survives_resume": _TRAINS_UNET,
    "test_phantom.py::test_grid_and_dtypes": _PHANTOM,
    "test_phantom.py::test_shape_crops_the_field_of_view_centred": _PHANTOM,
    "test_phantom.py::test_tissue_contrast_order": _PHANTOM,
    "test_phantom.py::test_lesion_counts_sizes_and_ratios_within_spec": _PHANTOM,
    "test_phantom.py::test_rasterised_mask_matches_drawn_volumes": _PHANTOM,
    "test_phantom.py::test_mimics_present_and_outside_the_mask": _PHANTOM,
    "test_phantom.py::test_dataset_uses_config_params": _PHANTOM,
    "test_phantom.py::test_same_seed_same_bytes_different_seed_differs": _PHANTOM,
    "test_phantom.py::test_interrupted_dataset_leaves_no_partial_case": _PHANTOM,
    "test_phantom.py::test_dataset_files_manifest_preview_and_determinism": _PHANTOM,
    "test_phantom.py::test_lesion_placement_by_kind": _PHANTOM,
    "test_phantom.py::test_golden_bytes_and_draw_replay_through_json": _PHANTOM,
    "test_cli.py::test_phantom_command_writes_a_manifest": _PHANTOM,
    "test_location.py::test_registration_recovers_a_known_rotation_and_shift": (
        "two registrations to the MNI152 template"
    ),
    "test_predict.py::test_location_columns_untrusted_registration_gives_unknown": (
        "a prediction with a registration to the MNI152 template"
    ),
    "test_reference_unet.py::test_reference_unet_segments_a_held_out_phantom_case": _PHANTOM,
    "test_reference_unet.py::test_sample_with_reference_writes_stacks_the_samples_protocol_reads": (
        _PHANTOM
    ),
    "test_parallel.py::test_default_path_imports_no_dask": _SUBPROCESS,
    "test_outputs.py::test_pyg_generated_modules_do_not_pile_up_in_tmp": _SUBPROCESS,
    "test_preprocess.py::test_data_package_exports_lazily": _SUBPROCESS,
    "test_parallel.py::test_local_workers_start_without_dasks_malloc_trim_threshold": (
        "starts Dask worker processes"
    ),
    "test_parallel.py::test_a_failed_scan_is_named_the_others_finish_and_a_rerun_completes": (
        _PREDICTS
    ),
    "test_predict.py::test_manifest_batch_and_resume": _PREDICTS,
    "test_location_batch.py::test_batch_location_columns_dis_csv_and_reuse": _PREDICTS,
    "test_located.py::test_predict_locates_before_scoring_once": _PREDICTS,
    "test_parallel.py::test_local_cluster_keeps_its_workers_and_prints_no_worker_traceback": (
        "starts a Dask LocalCluster"
    ),
    "test_predict.py::test_earlier_prediction_needs_overwrite_and_keeps_user_files": _PREDICTS,
    "test_refit.py::test_location_reading_scorers_are_refitted_on_located_lesions": (
        "refits a model folder's scorers on two predicted scans"
    ),
    "test_predict.py::test_bids_out_batch_over_bids_manifest_is_indexed_by_pybids": (
        "predictions indexed by pybids"
    ),
}


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs ``-n auto``), one torch thread per worker.

    The workers share the machine's cores, so more threads only oversubscribe them; and one
    count for the whole worker session keeps float sums, hence the 4-step U-Net's voxels near
    0.5, the same whichever test first builds a session fixture (``tests/test_refit.py``
    compares lesions found in two such places).
    """
    if hasattr(config, "workerinput"):
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the :data:`SLOW_FIXTURES` users and the :data:`SLOW_TESTS` ``slow``.

    ``tests/test_tiers.py`` checks that every name of :data:`SLOW_TESTS` still exists.
    """
    for item in items:
        file = item.path.name
        name = f"{file}::{item.originalname if isinstance(item, pytest.Function) else item.name}"
        named = file in SLOW_TESTS or name in SLOW_TESTS
        if named or SLOW_FIXTURES.keys() & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny convolutions single-threaded (faster and deterministic here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny experiment (helpers.TINY), run once per session: (root, cases.csv, result).

    Tests that write into the run beyond what ``run_experiment`` does should work on a copy.
    """
    from helpers import TINY
    from lesionuq.data.phantom import make_phantom_dataset
    from lesionuq.pipeline.experiment import run_experiment

    root = tmp_path_factory.mktemp("exp")
    csv = make_phantom_dataset(root / "data", TINY.phantom, progress=False)
    result = run_experiment(csv, root / "run", TINY, progress=False)
    return root, csv, result
