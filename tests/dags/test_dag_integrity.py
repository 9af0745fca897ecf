"""The DAG folder parses cleanly, follows the house rules, and does no I/O at parse time.

Airflow reads its configuration (AIRFLOW_HOME, the metadata DB, the DAG folder) once, at import
time, so the DagBag is filled in a separate interpreter with a clean environment and a throw-away
AIRFLOW_HOME. Before the DagBag loads, that interpreter replaces every way the DAG files could reach
the outside world (Connection.get, Variable.get, sqlalchemy.create_engine, any use of an existing
engine, socket connect / DNS) with a guard that records the call and raises. It prints one JSON
report that the tests below read. A negative control runs the same harness on a deliberately bad
DAG folder, so a guard that silently stopped working would fail the suite instead of passing it.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from _support import PROJECT

DAGS = PROJECT / "dags"
DOMAIN = PROJECT / "include" / "tend"
EXPECTED_DAG_IDS = {"tend_campaign", "tend_events", "tend_feedback", "tend_ingest",
                    "tend_programs"}
# Modules that must stay out of the parse: the domain core is imported inside tasks.
HEAVY_DOMAIN_MODULES = ("tend.delivery", "tend.store", "tend.shop", "tend.features",
                        "tend.programs", "tend.messages", "tend.signals")

PARSE_SCRIPT = textwrap.dedent(
    r'''
    import json, socket, sys

    dag_folder, report_path = sys.argv[1], sys.argv[2]
    attempts = []

    def guard(name):
        def forbidden(*args, **kwargs):
            attempts.append(name)
            raise RuntimeError(f"{name} called while parsing DAGs")
        return forbidden

    # Network first: nothing (not even importing airflow) may open a socket or resolve a name.
    socket.socket.connect = guard("socket.connect")
    socket.socket.connect_ex = guard("socket.connect")
    socket.getaddrinfo = guard("socket.getaddrinfo")

    # Importing airflow builds its metadata engine (settings.configure_orm), so the DB guards go
    # in after that import and before any DAG file is read.
    import airflow  # noqa: F401
    import airflow.sdk
    import sqlalchemy
    import sqlalchemy.engine
    import sqlalchemy.engine.create
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions._internal.types import NOTSET

    sqlalchemy.create_engine = guard("sqlalchemy.create_engine")
    sqlalchemy.engine.create_engine = guard("sqlalchemy.create_engine")
    sqlalchemy.engine.create.create_engine = guard("sqlalchemy.create_engine")
    sqlalchemy.engine.Engine.connect = guard("Engine.connect")
    sqlalchemy.engine.Engine.raw_connection = guard("Engine.connect")
    airflow.sdk.Connection.get = classmethod(guard("Connection.get"))
    airflow.sdk.Variable.get = staticmethod(guard("Variable.get"))

    modules_before = set(sys.modules)
    bag = DagBag(dag_folder=dag_folder)

    def assets_of(d):
        """The assets a DAG is scheduled on or emits, and whether each is the shared object."""
        from tend_airflow.assets import CUSTOMER_FEATURES

        condition = getattr(d.timetable, "asset_condition", None)
        scheduled = list(getattr(condition, "objects", [condition] if condition else []))
        emitted = [o for t in d.tasks for o in t.outlets]
        return {
            "scheduled": [[a.uri, a is CUSTOMER_FEATURES] for a in scheduled],
            "emitted": [[a.uri, a is CUSTOMER_FEATURES] for a in emitted],
            "watchers": [[w.name, w.trigger.scheme, w.trigger.kwargs]
                         for a in scheduled for w in getattr(a, "watchers", [])],
        }

    def aware(value):
        return value is not None and value.tzinfo is not None and value.utcoffset() is not None

    report = {
        "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
        "guard_attempts": attempts,
        "new_tend_modules": sorted(
            m for m in set(sys.modules) - modules_before if m == "tend" or m.startswith("tend.")
            or m == "tend_airflow" or m.startswith("tend_airflow.")
        ),
        "dags": [
            {
                "dag_id": d.dag_id,
                "fileloc": d.fileloc,
                "tags": sorted(d.tags or []),
                "doc_md": d.doc_md,
                "catchup": d.catchup,
                "start_date": d.start_date.isoformat() if d.start_date else None,
                "start_date_aware": aware(d.start_date),
                "timezone": str(d.timezone),
                "tasks": {t.task_id: t.retries for t in d.tasks},
                "queues": {t.task_id: t.queue for t in d.tasks},
                "params": {
                    k: {"title": p.schema.get("title"), "description": p.description,
                        "type": p.schema.get("type"), "format": p.schema.get("format"),
                        "default": "<required>" if p.value is NOTSET else p.value,
                        "section": p.schema.get("section"), "enum": p.schema.get("enum"),
                        "values_display": p.schema.get("values_display")}
                    for k, p in d.params.items()
                },
                "assets": assets_of(d),
            }
            for d in bag.dags.values()
        ],
    }
    with open(report_path, "w") as fh:
        json.dump(report, fh)
    '''
)


def parse_dags(dag_folder: Path, workdir: Path,
               settings: dict[str, str] | None = None) -> dict[str, Any]:
    """Fill a DagBag from ``dag_folder`` in a fresh interpreter (with the TEND_* ``settings``
    a deployment would give it); return its JSON report."""
    home = workdir / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    report = workdir / "report.json"
    env = {
        # A clean environment: no AIRFLOW_CONN_*/AIRFLOW_VAR_*/TEND_* leaking in from the caller.
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dag_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(workdir / "plugins"),
        # This checkout's code, whichever one the environment has installed.
        "PYTHONPATH": str(PROJECT / "include"),
        **(settings or {}),
    }
    proc = subprocess.run(
        [sys.executable, "-c", PARSE_SCRIPT, str(dag_folder), str(report)],
        env=env, cwd=workdir, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, f"DAG parse harness failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(report.read_text())


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return parse_dags(DAGS, tmp_path_factory.mktemp("dagbag"))


@pytest.fixture(scope="module")
def dags(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["dag_id"]: d for d in report["dags"]}


def test_no_import_errors(report: dict[str, Any]) -> None:
    assert report["import_errors"] == {}


def test_exactly_the_tend_dags(dags: dict[str, dict[str, Any]]) -> None:
    assert set(dags) == EXPECTED_DAG_IDS


def test_one_dag_per_file_named_after_it(report: dict[str, Any]) -> None:
    files = [Path(d["fileloc"]) for d in report["dags"]]
    assert len(files) == len(set(files)), f"a file defines several DAGs: {sorted(files)}"
    for d in report["dags"]:
        assert Path(d["fileloc"]).stem == d["dag_id"]
    dag_files = {p.stem for p in DAGS.glob("*.py") if not p.name.startswith("_")}
    assert dag_files == {d["dag_id"] for d in report["dags"]}, "a DAG file defines no DAG"


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAG_IDS))
def test_dag_house_rules(dags: dict[str, dict[str, Any]], dag_id: str) -> None:
    d = dags[dag_id]
    assert "tend" in d["tags"]
    assert d["doc_md"] and d["doc_md"].strip(), "doc_md is what the UI shows on the DAG page"
    assert d["catchup"] is False
    assert d["start_date"] is not None and d["start_date_aware"], d["start_date"]


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAG_IDS))
def test_every_task_retries(dags: dict[str, dict[str, Any]], dag_id: str) -> None:
    tasks = dags[dag_id]["tasks"]
    assert tasks
    no_retry = {t: r for t, r in tasks.items() if not r or r < 1}
    assert not no_retry, f"tasks without retries: {no_retry}"


EXPECTED_PARAMS = {
    "tend_events": {"sendgrid_sandbox": (["null", "boolean"], None, None)},
    "tend_feedback": {},
    "tend_ingest": {"as_of": (["null", "string"], "date", None)},
    "tend_programs": {"as_of": (["null", "string"], "date", None),
                      "sendgrid_sandbox": (["null", "boolean"], None, None)},
}


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAG_IDS))
def test_dag_params_show_in_the_trigger_form(dags: dict[str, dict[str, Any]],
                                             dag_id: str) -> None:
    params = dags[dag_id]["params"]
    if dag_id in EXPECTED_PARAMS:  # the campaign form has its own test below
        assert {k: (p["type"], p["format"], p["default"]) for k, p in params.items()} == (
            EXPECTED_PARAMS[dag_id])
    for name, p in params.items():
        assert p["title"] and p["title"].strip(), f"{dag_id}.{name} has no title"
        assert p["description"] and len(p["description"]) > 20, f"{dag_id}.{name}: description"


def test_the_campaign_form(dags: dict[str, dict[str, Any]]) -> None:
    """Sections, dropdowns with labels, the templates and languages found in the template
    folder, and the safe defaults (dry run on, no proof, no offer)."""
    params = dags["tend_campaign"]["params"]
    assert params["name"]["default"] == "<required>"
    assert params["dry_run"]["default"] is True
    assert params["proof_to"]["default"] is None and params["offer"]["default"] == "none"
    assert params["template"]["enum"] == ["newsletter"]
    audience = params["audience"]
    assert set(audience["enum"]) == {"all", "lapsed", "seasonal", "checkup", "loyalty_tier",
                                     "category", "one_time", "upload"}
    assert set(audience["values_display"]) == set(audience["enum"])
    for loc in ("en", "fr"):
        assert params[f"subject_{loc}"]["default"] == "<required>"
        assert params[f"text_{loc}"]["format"] == "multiline"
    sections = {p["section"] for p in params.values()}
    assert None not in sections and len(sections) >= 5
    assert dags["tend_campaign"]["tags"] == ["campaign", "tend"]


def test_the_campaign_form_requires_only_the_name_and_subjects(
        dags: dict[str, dict[str, Any]]) -> None:
    """Airflow's trigger form refuses to submit a field whose type has no "null" while it is
    empty: only the fields the campaign cannot do without may be like that."""
    params = dags["tend_campaign"]["params"]

    def nullable(p: dict[str, Any]) -> bool:
        return isinstance(p["type"], list) and "null" in p["type"]

    required = {k for k, p in params.items()
                if not nullable(p) and p["default"] in ("<required>", None, "")}
    assert required == {"name", "subject_en", "subject_fr"}
    assert nullable(params["proof_to"]) and nullable(params["featured_skus"])
    for loc in ("en", "fr"):
        for field in ("preheader", "headline", "text"):
            assert nullable(params[f"{field}_{loc}"]) and params[f"{field}_{loc}"][
                "default"] is None, f"{field}_{loc} must be optional in the form"


def test_ingest_emits_the_asset_programs_is_scheduled_on(
        dags: dict[str, dict[str, Any]]) -> None:
    ingest, programs = dags["tend_ingest"]["assets"], dags["tend_programs"]["assets"]
    assert ingest["emitted"] == [["tend://customer_features/", True]]
    assert programs["scheduled"] == [["tend://customer_features/", True]]
    assert ingest["scheduled"] == [] and programs["emitted"] == []


#: The tasks whose memory grows with the customers: TEND_HEAVY_QUEUE sends them to the worker
#: sized for them (docs/capacity.md).
HEAVY_TASKS = {("tend_ingest", "ingest_orders"), ("tend_programs", "plan"),
               ("tend_campaign", "plan")}


def test_the_heavy_tasks_go_to_the_queue_tend_heavy_queue_names(
        dags: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    def queues(parsed: dict[str, dict[str, Any]]) -> dict[tuple[str, str], str]:
        return {(dag_id, task): q for dag_id, d in parsed.items()
                for task, q in d["queues"].items()}

    unset = queues(dags)
    assert set(unset.values()) == {"default"}, "unset: Airflow's default queue, for every task"
    heavy = parse_dags(DAGS, tmp_path, {"TEND_HEAVY_QUEUE": "tend_heavy"})
    assert heavy["import_errors"] == {}
    routed = queues({d["dag_id"]: d for d in heavy["dags"]})
    assert {k for k, q in routed.items() if q == "tend_heavy"} == HEAVY_TASKS
    assert {q for k, q in routed.items() if k not in HEAVY_TASKS} == {"default"}


def test_order_events_schedule_tend_events_through_a_redis_watcher(
        dags: dict[str, dict[str, Any]]) -> None:
    events = dags["tend_events"]["assets"]
    assert events["scheduled"] == [["tend://order_events/", False]]
    assert events["watchers"] == [["tend_order_events_watcher", "redis+pubsub", {
        "channels": ["tend:orders"], "redis_conn_id": "tend_order_events",
        "poll_interval": 2.0}]]
    assert all(d["assets"]["watchers"] == [] for name, d in dags.items()
               if name != "tend_events")


def test_no_dag_file_defines_an_asset() -> None:
    """Assets live in tend_airflow.assets, so producer and consumer share one definition."""
    offenders = []
    for path in sorted(DAGS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in ("Asset", "Dataset", "AssetAlias"):
                    offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def test_no_connection_variable_db_or_network_at_parse_time(report: dict[str, Any]) -> None:
    assert report["guard_attempts"] == []
    assert report["import_errors"] == {}  # a swallowed guard error would surface here


def test_parsing_does_not_import_the_domain_core(report: dict[str, Any]) -> None:
    loaded = report["new_tend_modules"]
    heavy = [m for m in loaded if m.startswith(HEAVY_DOMAIN_MODULES)]
    assert heavy == [], f"DAG files import the domain core at parse time: {heavy}"
    assert "tend.delivery.engine" not in loaded


def test_harness_catches_a_misbehaving_dag(tmp_path: Path) -> None:
    """Negative control: each guard fires, and a top-level domain import is seen."""
    folder = tmp_path / "bad_dags"
    folder.mkdir()
    (folder / "bad_dag.py").write_text(textwrap.dedent(
        """
        import socket

        import pendulum
        import tend.delivery.engine  # noqa: F401
        from airflow.sdk import Connection, Variable, dag, task

        def attempt(fn):
            try:
                fn()
            except Exception:
                pass

        attempt(lambda: Variable.get("tend_delivery"))
        attempt(lambda: Connection.get("tend_shop"))

        def db():
            import sqlalchemy
            sqlalchemy.create_engine("sqlite://")

        attempt(db)

        def raw_connect():
            with socket.socket() as s:
                s.connect(("127.0.0.1", 9))

        attempt(raw_connect)
        attempt(lambda: socket.create_connection(("example.com", 80)))

        @dag(dag_id="bad_dag", schedule=None, start_date=pendulum.datetime(2026, 1, 1))
        def bad_dag():
            @task
            def noop():
                pass

            noop()

        bad_dag()
        """
    ))
    bad = parse_dags(folder, tmp_path / "work")
    assert [d["dag_id"] for d in bad["dags"]] == ["bad_dag"]
    assert {"Variable.get", "Connection.get", "sqlalchemy.create_engine",
            "socket.connect", "socket.getaddrinfo"} <= set(bad["guard_attempts"])
    assert "tend.delivery.engine" in bad["new_tend_modules"]


# -- the domain core never imports airflow ---------------------------------------------------

def _airflow_imports(path: Path, root: Path = PROJECT) -> list[str]:
    """Every ``import airflow...`` / ``from airflow... import`` in a file, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{path.relative_to(root)}:{node.lineno}: {n}" for n in names
                  if n == "airflow" or n.startswith("airflow.")]
    return found


def test_domain_core_never_imports_airflow() -> None:
    files = sorted(DOMAIN.rglob("*.py"))
    assert len(files) > 5, f"no domain sources found under {DOMAIN}"
    offenders = [hit for f in files for hit in _airflow_imports(f)]
    assert offenders == []


def test_airflow_import_detector_works(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\nimport airflow.sdk as a\nimport airflowish\n"
        "def f():\n    from airflow import DAG\n    from .airflow import x\n"
    )
    hits = _airflow_imports(sample, root=tmp_path)
    assert hits == ["sample.py:2: airflow.sdk", "sample.py:5: airflow"]
