"""The worker: the child side of the process boundary.  ``python -m sweep_magic.worker``
runs one sweep agent in a fresh interpreter (``main``), hooks wandb to report what it does
(``hooks``), and lowers its own priority when asked (``priority``).  Never imports IPython,
ipywidgets or the kernel side (``agents/``)."""
