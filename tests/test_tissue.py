"""The scan's own tissue classes and ventricles (lesionuq.location.tissue, issue 30)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from lesionuq.location.classify import classify_from_maps, scan_distances
from lesionuq.location.tissue import atlas_em, scan_ventricles, tissue_posteriors


def test_em_recovers_two_gaussians_from_weak_priors() -> None:
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(-2.0, 0.5, 4000), rng.normal(1.0, 0.25, 6000)])
    truth = np.repeat([0, 1], [4000, 6000])
    prior = np.where(np.eye(2, dtype=bool)[truth], 0.6, 0.4)  # a weak atlas, right 60 %
    post, mean, std = atlas_em(v, prior)
    order = np.argsort(mean)
    assert mean[order] == pytest.approx([-2.0, 1.0], abs=0.03)
    assert std[order] == pytest.approx([0.5, 0.25], rel=0.05)
    assert post.sum(axis=1) == pytest.approx(np.ones(v.size))
    assert (post.argmax(axis=1) == truth).mean() > 0.99  # the intensities decide


def test_posterior_is_the_prior_weighted_likelihood_by_hand() -> None:
    # two classes fixed at N(0, 1) and N(2, 1) by symmetric data; at the midpoint v = 1 the
    # likelihoods are equal, so the posterior is the prior: 0.8 / 0.2
    v = np.array([0.0, 0.0, 2.0, 2.0, 1.0])
    prior = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0.8, 0.2]], dtype=np.float64)
    post, mean, _ = atlas_em(v, prior, iterations=1)
    # one iteration: means from the (floored) priors, then the posterior at v = 1
    assert mean[0] < 1.0 < mean[1]
    assert post[4, 0] > 0.75  # prior 0.8, likelihoods nearly equal (means symmetric)


def test_em_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="do not match"):
        atlas_em(np.zeros(5), np.ones((4, 2)))
    with pytest.raises(ValueError, match="cannot fit"):
        atlas_em(np.zeros(1), np.ones((1, 3)))


def head(shift_mm: float) -> dict[str, np.ndarray]:
    """A 1 mm FLAIR-like head whose "registered template" ventricle is ``shift_mm`` off.

    Brain: a sphere of radius 27 (WM 1.0, a grey-matter shell r > 24 at 1.3), the scan's
    ventricle a CSF-dark (0.1) sphere of radius 6 at (30, 30, 30), a CSF sulcus cutting
    the shell. The priors (GM, WM, CSF) are the template's: the same shell and sulcus, the
    ventricle moved ``shift_mm`` along x, all smoothed by 1 voxel (what an affine leaves
    for a brain whose ventricles lie elsewhere).
    """
    shape = (60, 60, 60)
    g = np.indices(shape).astype(np.float64)
    r = np.sqrt(((g - 30.0) ** 2).sum(axis=0))
    brain = r < 27
    shell = brain & (r > 24)
    vent = r < 6
    sulcus = brain & (r > 22) & (np.abs(g[1] - 30) < 1.5) & (g[0] > 30)
    rng = np.random.default_rng(1)
    image = np.where(shell, 1.3, 1.0) + rng.normal(0, 0.05, shape)
    image[vent | sulcus] = 0.1 + rng.normal(0, 0.05, int((vent | sulcus).sum()))
    image[~brain] = 0.0
    t_vent = np.sqrt((g[0] - 30 - shift_mm) ** 2 + (g[1] - 30) ** 2 + (g[2] - 30) ** 2) < 6
    csf = ndi.gaussian_filter((t_vent | sulcus).astype(np.float32), 1.0) * brain
    gm = np.clip(ndi.gaussian_filter(shell.astype(np.float32), 1.0) * brain - csf, 0, 1)
    wm = np.clip(brain - gm - csf, 0, 1).astype(np.float32)
    return {
        "image": image.astype(np.float32),
        "brain": brain,
        "vent": vent,
        "sulcus": sulcus,
        "priors": np.stack([gm, wm, csf]),
        "tvdist": ndi.distance_transform_edt(~t_vent).astype(np.float32),
        "tcortex": shell,
    }


def test_tissue_csf_follows_the_scan_not_the_shifted_prior() -> None:
    h = head(shift_mm=5.0)
    post = tissue_posteriors(h["image"], h["brain"], list(h["priors"]), (1.0, 1.0, 1.0))
    csf = post[2] > 0.5
    inner = ndi.binary_erosion(h["vent"])  # away from the partial-volume edge
    assert csf[inner].mean() > 0.95  # the scan's ventricle is CSF, prior or not
    assert not csf[h["brain"] & ~ndi.binary_dilation(h["vent"] | h["sulcus"], iterations=2)].any()
    assert post[:, ~h["brain"]].max() == 0.0


def test_scan_ventricles_keep_the_component_that_reaches_the_template_not_the_sulcus() -> None:
    h = head(shift_mm=8.0)
    csf = (h["vent"] | h["sulcus"]).astype(np.float32)
    vent = scan_ventricles(csf, h["tvdist"])
    assert np.array_equal(vent, h["vent"])  # 8 mm off, yet the edge is within 4 mm
    far = scan_ventricles(csf, h["tvdist"] + 10.0)  # nothing within 4 mm: none
    assert not far.any()


def distances(h: dict[str, np.ndarray], image: np.ndarray, labels: np.ndarray, **kw):
    """:func:`scan_distances` of a :func:`head` (template cortex ``h["tcortex"]``)."""
    tcdist = ndi.distance_transform_edt(~h["tcortex"]).astype(np.float32)
    return scan_distances(
        image, labels, np.ones(3), tuple(h["priors"]), h["tvdist"], h["tcortex"], tcdist, **kw
    )


def test_lesion_on_the_scans_ventricle_is_periventricular_when_the_template_is_off() -> None:
    # the template's ventricle is 8 mm off: a lesion on the scan's ventricle wall lies
    # > 3 mm from the template's, but touches the scan's own
    h = head(shift_mm=8.0)
    labels = np.zeros(h["image"].shape, np.int64)
    labels[22:25, 29:32, 29:32] = 1  # x = 22..24, next to the ventricle (x = 25..35)
    image = h["image"].copy()
    image[labels > 0] = 2.0  # a bright lesion
    far = np.full(labels.shape, 50.0)
    old = classify_from_maps(labels, h["tvdist"], far, np.zeros(labels.shape))
    assert old[0][0] == "deep" and old[1][0] > 3.0
    vdist, _ = distances(h, image, labels)
    loc, vmin, _, _ = classify_from_maps(labels, vdist, far, np.zeros(labels.shape))
    assert loc[0] == "periventricular" and vmin[0] == 1.0  # one voxel from x = 25


def test_template_cortex_over_the_scans_white_matter_is_not_cortex() -> None:
    # the template's cortex reaches 4 mm deeper (r > 20) than the scan's grey shell
    # (r > 24): a lesion at r = 17-19 is 1-3 mm from the template's cortex but lies in
    # the scan's white matter, > 4.5 mm from its cortex
    h = head(shift_mm=0.0)
    r = np.sqrt(((np.indices(h["image"].shape) - 30.0) ** 2).sum(axis=0))
    h["tcortex"] = h["brain"] & (r > 20)
    labels = np.zeros(h["image"].shape, np.int64)
    labels[11:14, 29:32, 29:32] = 1  # x = 11..13: r = 17..19 along -x
    image = h["image"].copy()
    image[labels > 0] = 2.0
    tcdist = ndi.distance_transform_edt(~h["tcortex"])
    none = np.full(labels.shape, 50.0)
    zeros = np.zeros(labels.shape)
    assert classify_from_maps(labels, none, tcdist, zeros)[0][0] == "juxtacortical"
    _, cdist = distances(h, image, labels)
    loc, _, cmin, _ = classify_from_maps(labels, none, cdist, zeros)
    assert loc[0] == "deep" and cmin[0] > 4.5  # sqrt(21) to the nearest shell voxel
    # a lesion touching the scan's grey shell stays juxtacortical
    labels[:] = 0
    labels[5:7, 29:32, 29:32] = 1  # x = 5..6: r = 23..25, in and next to the shell
    _, cdist = distances(h, image, labels)
    assert classify_from_maps(labels, none, cdist, zeros)[0][0] == "juxtacortical"


def test_too_little_ventricle_or_cortex_falls_back_to_the_template() -> None:
    h = head(shift_mm=0.0)
    labels = np.zeros(h["image"].shape, np.int64)
    vdist, cdist = distances(h, h["image"], labels, min_mm3=1e6)
    assert np.array_equal(vdist, h["tvdist"])
    tcdist = ndi.distance_transform_edt(~h["tcortex"]).astype(np.float32)
    assert np.array_equal(cdist, tcdist)
