"""What crosses a process boundary between the kernel side (``agents/``) and a worker
(``worker/``): the events wire, the worker spec, the side channel to the embedded server,
and the environment a worker starts with.  Imported by both sides; imports neither."""
