"""The kernel side of the process boundary: the supervisor's per-agent state machines
(``supervisor``, ``record``) over the backend seam (``backend``), with local processes
(``local``) as the first backend.  Never imports a face or the worker side."""
