"""Inspection: the recordings a session keeps and what they answer.

Frame-level attention (:class:`~.record.Record`: frame maps, text mass, reference mass), spatial heatmaps
(:mod:`.map_specs` says which maps to keep, :class:`~.map_recording.MapRecording` keeps them; :mod:`.maps` is the
public ``at.maps``), the running sums and counts both keep (:mod:`.accumulator`) and the checked ``.npz`` file
format both write and read (:mod:`.files`). It may import the runtime's call types, the rule language and the
base modules.
"""
