"""The faces: what the user sees of a session.  ``show`` is the one place that chooses
(the panel where widgets work, text elsewhere); ``text`` renders snapshots as text (cell,
terminal); ``panel*`` is the ipywidgets panel; ``kernel`` tells where we run; ``fmt``
formats numbers and durations for all of them.  Faces read ``SessionSnapshot``s and call
the public API; they never touch processes, NVML or the network."""
