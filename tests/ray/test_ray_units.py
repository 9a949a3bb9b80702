"""The Ray backend's pieces that need no cluster: the request's shape, shipping a notebook's
own modules, the magic's ``--ray``, the text face's node.  (The cluster tests are in
``cluster/``, run by ``test_ray.py``.)"""

from __future__ import annotations

import sys
import types
import warnings

import cloudpickle
import pytest

import sweep_magic
from sweep_magic.agents import ray_ship
from sweep_magic.agents.ray import check_request
from sweep_magic.errors import PlacementError, SweepMagicError


@pytest.mark.parametrize("kwargs, shape", [
    (dict(gpus=4), ("gpu", 4)),
    (dict(gpus="4"), ("gpu", 4)),
    (dict(gpus="all", agents_per_gpu=2), ("gpu", "all")),
    (dict(gpus=" Free "), ("gpu", "free")),
    (dict(cpus=3), ("cpu", 3)),
    (dict(), ("auto", None)),
    (dict(gpus={"10.0.0.2": 2, " abcd ": 1}), ("nodes", {"10.0.0.2": 2, "abcd": 1})),
    (dict(gpus="10.0.0.2=2, abcd=1,abcd=1"), ("nodes", {"10.0.0.2": 2, "abcd": 2})),
    (dict(gpus="10.0.0.2:6379/ab=1"), ("nodes", {"10.0.0.2:6379/ab": 1})),
    (dict(cpus=2, cpus_per_agent=4), ("cpu", 2)),
])
def test_request_shapes(kwargs, shape):
    assert check_request(**kwargs) == shape


@pytest.mark.parametrize("kwargs, message", [
    (dict(gpus="0,1"), "with Ray, gpus= is how many GPUs of the cluster to use"),
    (dict(gpus=[0, 1]), "with Ray, gpus= is how many GPUs"),
    (dict(gpus=0), "with Ray, gpus= is how many GPUs"),
    (dict(gpus=True), "with Ray, gpus= is how many GPUs"),
    (dict(gpus=2, cpus=2), "either gpus= or cpus="),
    (dict(cpus=0), "cpus must be a whole number"),
    (dict(gpus=2, agents_per_gpu=0), "agents_per_gpu must be"),
    (dict(gpus={}), "name at least one node"),
    (dict(gpus={"a": 0}), "how many GPUs of the node, a whole number ≥ 1"),
    (dict(gpus={"a": 1.5}), "how many GPUs of the node"),
    (dict(gpus={3: 1}), "a node is named by a string"),
    (dict(gpus="a=1,b"), "expected NODE=COUNT[,NODE=COUNT...], not 'b'"),
    (dict(gpus="a=x"), "expected NODE=COUNT"),
    (dict(gpus="=2"), "expected NODE=COUNT"),
    (dict(cpus=2, cpus_per_agent=0), "cpus_per_agent must be a whole number ≥ 1"),
    (dict(cpus=2, cpus_per_agent="2"), "cpus_per_agent must be"),
])
def test_bad_requests_are_one_line(kwargs, message):
    with pytest.raises(PlacementError) as err:
        check_request(**kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def _nodes():
    from sweep_magic.cluster import ClusterNode, node_labels

    listed = [("aaaa1111", "10.0.0.1", "gpu-a"), ("aaaa2222", "10.0.0.2", "gpu-b"), ("bbbb3333", "10.0.0.2", "gpu-b2"),
              ("cccc4444", "10.0.0.3", "gpu-c")]
    labels = node_labels([(i, a) for i, a, _ in listed[:3]])  # the fourth is dead: not labelled with the live
    return [ClusterNode(node_id=i, address=a, hostname=h, gpus=2, gpus_free=2, cpus=4.0, alive=i != "cccc4444",
                        head=False, label=labels.get(i, f"{a}/{i[:6]}")) for i, a, h in listed]


def test_node_labels_add_a_short_id_only_where_an_address_is_shared():
    assert [n.label for n in _nodes()][:3] == ["10.0.0.1", "10.0.0.2/aaaa22", "10.0.0.2/bbbb33"]


@pytest.mark.parametrize("key, node_id", [
    ("aaaa1111", "aaaa1111"), ("aaaa2", "aaaa2222"), ("10.0.0.1", "aaaa1111"), ("gpu-b2", "bbbb3333"),
    ("10.0.0.2/bbbb33", "bbbb3333"), (" bbbb ", "bbbb3333"),
])
def test_a_node_is_found_by_id_prefix_address_hostname_or_label(key, node_id):
    from sweep_magic.cluster import find_node

    assert find_node(key, _nodes()).node_id == node_id


@pytest.mark.parametrize("key, message", [
    ("aaaa", "'aaaa' names 2 nodes of the Ray cluster (10.0.0.1, 10.0.0.2/aaaa22)"),
    ("10.0.0.2", "'10.0.0.2' names 2 nodes"),
    ("aaa", "no live node of the Ray cluster is 'aaa' (live nodes: 10.0.0.1, 10.0.0.2/aaaa22, 10.0.0.2/bbbb33)"),
    ("cccc4444", "no live node of the Ray cluster is 'cccc4444'"),  # dead
    ("", "an empty node name"),
])
def test_a_node_name_that_names_none_or_several_is_one_line(key, message):
    from sweep_magic.cluster import find_node

    with pytest.raises(PlacementError) as err:
        find_node(key, _nodes())
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_backend_is_refused_before_anything_starts():
    with pytest.raises(SweepMagicError, match="backend must be 'local' or 'ray'"):
        sweep_magic.launch(lambda: None, "abc", backend="slurm")


def test_cpus_per_agent_is_refused_on_this_machine_in_one_line():
    with pytest.raises(PlacementError, match=r"^cpus_per_agent \(--cpus-per-agent\) is for Ray; on this machine"):
        sweep_magic.launch(lambda: None, "abc", cpus=2, cpus_per_agent=2)
    assert sweep_magic.sessions() == []


@pytest.fixture
def notebook_module(tmp_path):
    """A `utils.py` next to the notebook: importable now, gone (file and module) afterwards."""
    (tmp_path / "h7_units_utils.py").write_text("SCALE = 3\n\ndef triple(x):\n    return SCALE * x\n")
    sys.path.insert(0, str(tmp_path))
    import h7_units_utils

    yield h7_units_utils
    sys.path[:] = [p for p in sys.path if p != str(tmp_path)]
    sys.modules.pop("h7_units_utils", None)


def _gone(module: types.ModuleType) -> None:
    import os

    os.unlink(module.__file__)
    sys.modules.pop(module.__name__, None)
    sys.path[:] = [p for p in sys.path if p != os.path.dirname(module.__file__)]


def test_a_notebooks_own_modules_travel_by_value(notebook_module):
    utils = notebook_module
    from h7_units_utils import triple

    def via_module():
        return utils.triple(2)

    def via_name():
        return triple(3)

    here = sys.modules[__name__]  # this test file is local too (a notebook cell is __main__)
    assert ray_ship.local_modules(via_module) == [here, utils]
    assert ray_ship.local_modules(via_name) == [here, utils]
    blobs = [ray_ship.pickle_function(f) for f in (via_module, via_name)]
    _gone(utils)  # as on a node that never had the file
    assert [cloudpickle.loads(b)() for b in blobs] == [6, 9]
    # The registration was for that pickle only.
    assert not cloudpickle.cloudpickle._is_registered_pickle_by_value(utils)


def test_installed_and_standard_modules_stay_by_reference():
    import json

    def uses_installed():
        return json.dumps(cloudpickle.__name__)

    assert ray_ship.local_modules(uses_installed) == [sys.modules[__name__]]
    assert not ray_ship.is_local_file(json.__file__) and not ray_ship.is_local_file(cloudpickle.__file__)


def test_a_local_import_inside_the_body_gets_one_warning_line(notebook_module):
    def imports_late():
        import os  # noqa: F401 - standard: no warning

        import h7_units_utils

        return h7_units_utils.triple(1)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ray_ship.pickle_function(imports_late)
    lines = [str(w.message) for w in caught]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "imports `h7_units_utils` inside its body" in lines[0] and notebook_module.__file__ in lines[0]


@pytest.fixture
def launched(monkeypatch):
    calls = []

    def fake(function, sweep_id, **kw):
        calls.append(dict(kw, sweep_id=sweep_id))
        raise SweepMagicError("stop here")

    monkeypatch.setattr(sweep_magic.api, "launch", fake)
    return calls


@pytest.mark.parametrize("line, sweep_id, address", [
    ("abc --ray", "abc", None),
    ("abc --ray auto --gpus 4", "abc", "auto"),
    ("abc --ray 10.0.0.5:6379", "abc", "10.0.0.5:6379"),
    ("--ray abc", "abc", None),  # the optional ADDRESS must not swallow the sweep id
])
def test_the_magics_ray_option(launched, line, sweep_id, address):
    from IPython.core.error import UsageError
    from shells import magic_shell

    with magic_shell() as shell:
        with pytest.raises(UsageError, match="stop here"):
            shell.run_cell_magic("sweep_parallel", line, "def train():\n    pass\n")
    assert launched[-1]["sweep_id"] == sweep_id
    assert launched[-1]["backend"] == "ray" and launched[-1]["ray_address"] == address


def test_the_text_face_names_the_node():
    from sweep_magic.faces import text
    from sweep_magic.snapshot import AgentSnapshot

    assert text.agent_label(AgentSnapshot(index=1, device="gpu 0", state="idle", node="10.0.0.5")) == \
        "[agent 1 · gpu 0 @ 10.0.0.5]"
    assert text.agent_label(AgentSnapshot(index=1, device="gpu 0", state="idle")) == "[agent 1 · gpu 0]"


def test_the_magics_ray_option_alone_opens_the_panel_over_the_cluster(launched):
    from IPython.core.error import UsageError
    from shells import magic_shell

    with magic_shell() as shell:  # no widget frontend here: the panel's own refusal shows the route
        with pytest.raises(UsageError, match="the panel needs a notebook with ipywidgets"):
            shell.run_line_magic("sweep_parallel", "--ray 10.0.0.5:6379")
    assert launched == []  # no launch: the panel asks for the rest
