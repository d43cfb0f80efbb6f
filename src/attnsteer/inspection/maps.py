"""``at.maps``: the spatial attention maps a recording can keep (:mod:`.map_specs`) and the recording that keeps
them (:class:`MapRecording`, :class:`Heatmap`)."""

from .map_recording import Heatmap, MapRecording
from .map_specs import LayerBins, MapSpec, Onto, Region, StepBins, check_maps, onto, received, region

__all__ = ["Heatmap", "LayerBins", "MapRecording", "MapSpec", "Onto", "Region", "StepBins", "check_maps", "onto",
           "received", "region"]
