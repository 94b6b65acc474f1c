"""Standard outputs: BIDS derivatives, viewer label tables and the NiiVue viewer."""

from lesionuq.export.bids import bids_entities, write_bids_derivatives
from lesionuq.export.labels import (
    label_colours,
    write_fsleyes_lut,
    write_itksnap_labels,
)
from lesionuq.export.viewer import find_niivue_bundle, viewer_html

__all__ = [
    "bids_entities",
    "find_niivue_bundle",
    "label_colours",
    "viewer_html",
    "write_bids_derivatives",
    "write_fsleyes_lut",
    "write_itksnap_labels",
]
