"""``%%sweep_parallel``, ``%sweep_parallel``, ``%sweep_stop``, ``%sweep_status``.

The magic only parses: it finds the function in the cell, turns the line into
``sweep_magic.launch(...)`` arguments, and shows the session that returns.  Every
user mistake becomes a one-line ``UsageError`` before anything starts; the work
itself lives in ``api.py`` so it is the same from plain Python.

IPython expands ``{var}`` and ``$var`` in the line of line and cell magics alike
(``InteractiveShell.var_expand``), so ``%%sweep_parallel {sweep_id} --cpus 2`` works.
"""

from __future__ import annotations

import ast
import functools

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from sweep_magic import api, options
from sweep_magic.errors import SweepMagicError
from sweep_magic.faces import kernel, show

_EXAMPLES = """
Examples::

    %%sweep_parallel {sweep_id} --gpus 0,1 --agents-per-gpu 2 --count 10
    def train():
        with wandb.init() as run:
            run.log({"loss": run.config.lr * 2})

    %%sweep_parallel {sweep_id} --gpus all --isolate run      # a fresh process per run
    def train(): ...

    %%sweep_parallel --config sweep_config --cpus 2 --wait    # a local sweep from a dict (or a YAML path)
    def train(): ...

    %sweep_parallel entity/project/abc123 --function train --gpus free   # an existing function
    %sweep_parallel {sweep_id} -f train --ray --gpus 8 --agents-per-gpu 2  # 16 agents across a Ray cluster
    %sweep_parallel                                          # the panel, with a form
    %sweep_parallel --ray                                    # the panel over a Ray cluster's nodes and GPUs
    %sweep_status                                            # every session of this kernel
    %sweep_stop s1                                           # stop one session (all without an id)
"""


_count, _nice = options.count_type, options.nice_type


@magics_class
class SweepMagics(Magics):
    @magic_arguments()
    @argument("sweep_id", nargs="?", help="the sweep: a local_sweep id, or a W&B sweep id / ENTITY/PROJECT/ID")
    @argument("--function", "-f", metavar="NAME", help="the function to run (default: the one the cell defines)")
    @argument("--config", metavar="VAR_OR_YAML", help="make a local sweep from a dict variable or a YAML file")
    @argument("--gpus", metavar="LIST|all|free",
              help="GPUs for agents: 0,1 or all or free (idle ones); with --ray: how many, or NODE=N,NODE=N per node")
    @argument("--agents-per-gpu", type=_count, default=1, metavar="N", help="agents sharing each GPU (default 1)")
    @argument("--cpus-per-agent", type=_count, metavar="N",
              help="with --ray: CPUs each agent reserves, and its thread caps (default 1)")
    @argument("--cpus", type=_count, metavar="N", help="run N agents on CPU cores")
    @argument("--count", type=_count, metavar="N", help="runs per agent (default: until the sweep is done)")
    @argument("--nice", type=_nice, metavar="N", help="lower the agents' CPU priority, 0..19 (keeps the notebook responsive)")
    @argument("--isolate", choices=("agent", "run"), default="agent",
              help="run: each run in a fresh process (memory and globals die with it); agent (default): all runs in the agent's")
    @argument("--ray", nargs="?", const="", metavar="ADDRESS",
              help="run the agents on a Ray cluster (ADDRESS as ray.init takes it; default: this kernel's Ray, "
                   "else 'auto'); --gpus N then counts GPUs across the cluster")
    @argument("--project", metavar="P", help="W&B project (of the sweep, or of the new local sweep)")
    @argument("--entity", metavar="E", help="W&B entity")
    @argument("--wait", action="store_true", default=None, help="block until the sweep ends (default when headless)")
    @argument("--no-wait", dest="wait", action="store_false", help="return at once even when headless")
    @argument("--no-widget", action="store_true", help="show text instead of the panel")
    @line_cell_magic
    def sweep_parallel(self, line: str = "", cell: str | None = None):
        """Run a W&B sweep's agents in parallel, each in its own process, on GPUs or CPU cores.

        The cell runs in the notebook's namespace; its function (the only one it
        defines, or ``--function NAME``) is sent to every agent.  Without a cell,
        ``--function`` names an existing function; with no arguments at all the
        panel opens.  Headless runs (nbclient, papermill, ``jupyter execute``) wait
        for the sweep by default; ``SWEEP_MAGIC_WAIT=0|1`` overrides that.
        """
        if cell is None and not line.strip():
            return self._panel()
        args = parse_argstring(self.sweep_parallel, line)
        if cell is not None and not cell.strip():
            raise UsageError("%%sweep_parallel needs a cell that defines the function to run")
        _ray_address(args)
        if cell is None and args.ray is not None and args.sweep_id is None and args.config is None \
                and args.function is None:
            return self._panel(ray_address=args.ray or None, ray=True)
        function = self._function(args, cell)
        if args.config is not None:
            _precheck(function, args)  # a bad function or placement must not leave a new sweep behind
        sweep_id = self._sweep_id(args)
        try:
            session = api.launch(
                function,
                sweep_id,
                gpus=args.gpus,
                cpus=args.cpus,
                agents_per_gpu=args.agents_per_gpu,
                cpus_per_agent=args.cpus_per_agent,
                count=args.count,
                project=args.project,
                entity=args.entity,
                nice=args.nice,
                isolate=args.isolate,
                backend="ray" if args.ray is not None else None,
                ray_address=args.ray or None,
            )
        except SweepMagicError as err:
            raise UsageError(str(err)) from None
        wait = args.wait if args.wait is not None else kernel.headless(self.shell)
        view = show.show(session, widget=False if args.no_widget else None)
        if wait and _wait(session, view):
            # A headless notebook (nbclient, papermill, CI) must not pass quietly when the
            # sweep produced nothing: one line, as the cell's error.
            failure = session.failures()
            if failure is not None:
                raise UsageError(failure)

    # --- the pieces ----------------------------------------------------------------------
    def _function(self, args, cell: str | None):
        ns = self.shell.user_ns
        if cell is None:
            if not args.function:
                # No function: the sweep's own `program:` runs, as `wandb agent` runs it
                # (launch refuses in one line when the sweep has none).
                return None
            return self._named(args.function)
        code = self.shell.transform_cell(cell)
        try:
            tree = ast.parse(code)
        except SyntaxError as err:
            raise UsageError(f"the cell does not parse: {err.msg} (line {err.lineno})") from None
        defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        if not args.function:
            if not defined:
                raise UsageError("the cell defines no function: write `def train(): ...` in it, or pass --function NAME")
            if len(defined) > 1:
                raise UsageError(f"the cell defines {', '.join(defined)}: say which to run with --function NAME")
        # The cell's other statements (imports, helpers, constants) run too, in the notebook's namespace.
        filename = self.shell.compile.cache(code)  # kept in linecache, so tracebacks show the cell
        exec(self.shell.compile(code, filename, "exec"), ns)  # noqa: S102 - running the user's own cell is the point
        return self._named(args.function or defined[0])

    def _named(self, name: str):
        if name not in self.shell.user_ns:
            raise UsageError(f"no function named {name!r} in the notebook")
        function = self.shell.user_ns[name]
        if not callable(function):
            raise UsageError(f"{name!r} is a {type(function).__name__}, not a function")
        return function

    def _sweep_id(self, args) -> str:
        if args.config is None:
            if not args.sweep_id:
                raise UsageError("give a sweep id (%%sweep_parallel SWEEP_ID) or --config to make a local sweep")
            return args.sweep_id
        if args.sweep_id:
            raise UsageError("give either a sweep id or --config, not both")
        config = _load_config(args.config, self.shell.user_ns)
        from sweep_magic.server import local_sweep  # the server starts on first use only

        try:
            return local_sweep(config, project=args.project or "sweep_magic", entity=args.entity)
        except SweepMagicError as err:
            raise UsageError(str(err)) from None
        except ValueError as err:  # a config the sweeps engine rejects
            raise UsageError(f"--config {args.config}: {err}") from None

    def _panel(self, ray_address: str | None = None, ray: bool = False) -> None:
        """The panel with a form: over this machine's devices, or over the Ray cluster's nodes
        when ``--ray`` asked for it or this kernel already has Ray connected."""
        try:
            from sweep_magic.faces.panel import show_panel

            usable = kernel.widgets_available(self.shell)
        except Exception:  # noqa: BLE001 - ipywidgets missing, or the panel module broken: the text path still works
            usable = False
        if not usable:
            raise UsageError(
                "the panel needs a notebook with ipywidgets; here give a sweep id: "
                "%%sweep_parallel SWEEP_ID --cpus 2 (see %sweep_parallel?)"
            )
        from sweep_magic.server import local_sweep

        cluster = None
        if ray or api.ray_connected():
            try:
                api.ray_nodes(ray_address)  # connect now: an unreachable cluster is one line here
            except SweepMagicError as err:
                raise UsageError(str(err)) from None
            cluster = functools.partial(api.ray_nodes, ray_address)
        # It displays itself (returning it would show it twice); Start calls the public API.
        show_panel(self.shell, launch=api.launch, local_sweep=local_sweep, cluster=cluster, ray_address=ray_address)

    @magic_arguments()
    @argument("session", nargs="?", help="session id (s1), number or sweep id; default: every running session")
    @argument("--drain", action="store_true", help="let each agent finish its current run first")
    @line_magic
    def sweep_stop(self, line: str = ""):
        """Stop the agents of one session, or of every session of this kernel."""
        args = parse_argstring(self.sweep_stop, line)
        try:
            targets = [api.get_session(args.session)] if args.session else [s for s in api.sessions() if not s.done]
        except SweepMagicError as err:
            raise UsageError(str(err)) from None
        for session in targets:
            session.stop(drain=args.drain)
        print(f"stopped {', '.join(s.id for s in targets)}" if targets else "no running sessions")

    @magic_arguments()
    @argument("session", nargs="?", help="show one session in full (id, number or sweep id)")
    @line_magic
    def sweep_status(self, line: str = ""):
        """One line per session of this kernel, or the full text of one."""
        from sweep_magic.faces import text

        args = parse_argstring(self.sweep_status, line)
        try:
            if args.session:
                print(text.render(api.get_session(args.session).snapshot()))
                return
        except SweepMagicError as err:
            raise UsageError(str(err)) from None
        found = api.sessions()
        print("\n".join(text.header(s.snapshot()) for s in found) if found else "no sweep sessions yet")


SweepMagics.sweep_parallel.__doc__ += _EXAMPLES  # shown by %%sweep_parallel? after the options


def _precheck(function, args) -> None:
    """What ``launch`` would refuse, checked before ``--config`` creates a sweep."""
    from sweep_magic import devices, payload

    try:
        if function is not None:  # None: the sweep's program runs
            payload.prepare(function)
        if args.ray is not None:
            from sweep_magic.agents.ray import check_request  # the cluster is asked at launch

            check_request(gpus=args.gpus, cpus=args.cpus, agents_per_gpu=args.agents_per_gpu,
                          cpus_per_agent=args.cpus_per_agent)
        else:
            devices.plan(gpus=args.gpus, cpus=args.cpus, agents_per_gpu=args.agents_per_gpu,
                         cpus_per_agent=args.cpus_per_agent)
    except SweepMagicError as err:
        raise UsageError(str(err)) from None


def _ray_address(args) -> None:
    """``--ray`` takes an optional ADDRESS, so ``--ray SWEEP_ID`` would swallow the sweep id:
    a word that is no Ray address ("auto", "local", HOST:PORT, ray://…) is the sweep id."""
    value = args.ray
    if not value or value in ("auto", "local") or ":" in value:
        return
    if args.sweep_id is None and args.config is None:
        args.sweep_id, args.ray = value, ""
        return
    raise UsageError(f"--ray ADDRESS: expected 'auto', 'HOST:PORT' or 'ray://HOST:PORT', not {value!r}")


def _load_config(ref: str, ns: dict) -> dict:
    from sweep_magic.configs import config_from

    try:
        config = config_from(ref, ns)
    except SweepMagicError as err:
        raise UsageError(f"--config {err}") from None
    if config is None:
        raise UsageError(f"--config {ref}: no such variable in the notebook, nor YAML file")
    return config


def _wait(session, view) -> bool:
    """Block until the session ends (True); Ctrl-C stops the agents and keeps what they
    collected (False)."""
    ended = True
    try:
        session.wait()
    except KeyboardInterrupt:
        # SweepSession.wait already stopped the agents; the view below ends with the table.
        print(f"interrupted: stopped {session.id}; {len(session.results())} runs in results()")
        ended = False
    # Let the view's last refresh (the final table) land before the cell ends, so a
    # headless executor (nbclient) records it in this cell's output.
    join = getattr(view, "join", None)
    if callable(join):
        join(timeout=10)
    return ended


def register(ipython) -> None:
    ipython.register_magics(SweepMagics)


def unregister(ipython) -> None:
    api.stop_all()
    magics = ipython.magics_manager.magics
    for kind, names in (("line", ("sweep_parallel", "sweep_stop", "sweep_status")), ("cell", ("sweep_parallel",))):
        for name in names:
            magics[kind].pop(name, None)
