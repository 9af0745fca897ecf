"""docker-compose.yaml, checked without a container engine.

1. It is a valid Compose file: interpolated as ``docker compose`` does (with .env.example's
   variables filled in), it validates against the Compose Specification's JSON schema
   (``compose-spec.json``, vendored from the npm package dclint 3.1.0, which ships the
   specification's ``compose_spec.json``), and its required variables stop it when unset.
2. Its services are the deployment docs/operations.md describes: healthchecks and ``depends_on``
   conditions everywhere, a shared logs volume, workers that scale, secrets only from ``.env``.
3. Its environment matches what reads it: every ``AIRFLOW__SECTION__KEY`` is an option of
   Airflow or of the Celery provider, every ``TEND_*`` one the code reads, and every setting
   the code reads is passed to the containers or named below as one they do not need;
   ``.env.example`` documents exactly the variables the file takes from ``.env``.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import runpy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from _support import PROJECT, settings_in_code

COMPOSE = PROJECT / "docker-compose.yaml"
ENV_EXAMPLE = PROJECT / ".env.example"
DOCKERFILE = PROJECT / "Dockerfile"
SCHEMA = Path(__file__).with_name("compose-spec.json")

#: Services that run once and exit (no healthcheck: others wait for them to complete).
ONE_SHOT = {"airflow-init", "airflow-cli"}
AIRFLOW_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker", "airflow-worker-heavy"}
#: Every container that runs `tend` (the DAGs' tasks, airflow-init's `tend migrate`, serve).
RUNS_TEND = AIRFLOW_SERVICES | {"airflow-init", "airflow-cli", "tend-serve"}

#: Settings the code reads that the containers do not need, and why.
NOT_FOR_CONTAINERS = {
    "TEND_DELIVERY": "left unset on purpose, so the Variable tend_delivery chooses the backend",
    "TEND_PROGRAMS_FILE": "the image bundles the program registry",
    "TEND_CHROMIUM": "previews run on a developer's machine",
    "TEND_TODAY": "production runs on today's date; pinned only to rehearse as if on another day",
    "TEND_SENDGRID_API_KEY": "the sendgrid_default connection holds SendGrid's key and options",
    "TEND_SENDGRID_URL": "as above",
    "TEND_SENDGRID_SANDBOX": "as above (and the trigger form's SendGrid sandbox)",
    "TEND_SENDGRID_ASM_GROUP_ID": "as above",
    "TEND_SENDGRID_MAX_IN_FLIGHT": "as above",
    "TEND_SENDGRID_CHUNK_SIZE": "as above",
    "TEND_SENDGRID_CHUNKS_IN_FLIGHT": "as above",
    "TEND_SENDGRID_CONNECT_TIMEOUT": "as above",
    "TEND_SENDGRID_READ_TIMEOUT": "as above",
    "TEND_SENDGRID_SLOW_AFTER": "as above",
    "TEND_SENDGRID_UVLOOP": "a debugging switch",
    "TEND_SEND_LEASE_SECONDS": "the default (120 s) suits the stack's batch and chunk sizes",
    "TEND_SMTP_JOURNAL_DIR": "the stack sends through SendGrid or Mailpit from any worker; the "
                             "journal is per host, so a retry on another worker cannot use it",
}
#: Variables of the images themselves, by service.
IMAGE_VARIABLES = {
    "postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"},
    "redis": {"REDISCLI_AUTH"},  # redis-cli's password, for the healthcheck
    "mailpit": {"MP_MAX_MESSAGES"},
    # The Airflow image's entrypoint: signals to the whole group; skip the DB wait.
    "airflow-worker": {"DUMB_INIT_SETSID"},
    "airflow-worker-heavy": {"DUMB_INIT_SETSID"},
    "airflow-cli": {"CONNECTION_CHECK_MAX_COUNT"},
}

_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}"
                  r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*)|(?P<dollar>\$))")


class MissingVariable(Exception):
    pass


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable substitution: ${V}, ${V:-d}, ${V-d}, ${V:?e}, ${V?e}, $V, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m["dollar"]:
            return "$"
        name = m["braced"] or m["plain"]
        op, arg = m["op"] or "", m["arg"] or ""
        present = name in env
        empty = present and env[name] == ""
        if op in (":?", "?") and (not present or (op == ":?" and empty)):
            raise MissingVariable(f"{name}: {arg}")
        if op in (":-", "-") and (not present or (op == ":-" and empty)):
            return arg
        return env.get(name, "")

    return _VAR.sub(one, value)


def variables_used(text: str) -> set[str]:
    return {m["braced"] or m["plain"] for m in _VAR.finditer(text) if not m["dollar"]}


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {k.strip(): v for k, v in pairs}


@functools.cache
def _required_by_compose() -> set[str]:
    text = COMPOSE.read_text()
    return {m["braced"] for m in _VAR.finditer(text) if m["op"] in (":?", "?")}


def filled_env() -> dict[str, str]:
    """.env.example with the required values filled in, as an operator would, and the
    optional ones left empty (AIRFLOW_UID aside)."""
    env = env_example()
    env.update({name: "x" * 16 for name in _required_by_compose()})
    env.update({"TEND_SHOP_URL": "postgresql://readonly:pw@replica:5432/shop",
                "TEND_BASE_URL": "https://tend.shop.example", "AIRFLOW_UID": "1000"})
    return env


@functools.cache
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@functools.cache
def compose() -> dict[str, Any]:
    return interpolate(raw(), filled_env())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def environment(service: str) -> dict[str, Any]:
    env = services()[service].get("environment") or {}
    assert isinstance(env, dict), f"{service}: environment as a mapping"
    return env


@functools.cache
def airflow_options() -> set[tuple[str, str]]:
    """(section, option) of every Airflow setting: Airflow's own and the Celery provider's."""
    spec = importlib.util.find_spec("airflow")
    assert spec and spec.submodule_search_locations
    root = Path(next(iter(spec.submodule_search_locations)))
    sections = dict(yaml.safe_load((root / "config_templates" / "config.yml").read_text()))
    celery = runpy.run_path(str(root / "providers" / "celery" / "get_provider_info.py"))
    sections.update(celery["get_provider_info"]()["config"])
    return {(section, option) for section, body in sections.items()
            for option in (body.get("options") or {})}


# -- 1. a valid Compose file ------------------------------------------------------------------

def test_validates_against_the_compose_specification() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose()), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_catches_a_broken_file() -> None:
    broken = json.loads(json.dumps(compose()))
    broken["services"]["airflow-worker"]["depends_on"]["postgres"]["condition"] = "healthy"
    broken["services"]["redis"]["healthcheck"]["interval"] = ["10s"]
    errors = list(jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).iter_errors(broken))
    assert len(errors) >= 2


def test_required_variables_stop_it_when_unset() -> None:
    required = _required_by_compose()
    assert {"POSTGRES_PASSWORD", "TEND_DB_PASSWORD", "REDIS_PASSWORD", "AIRFLOW_FERNET_KEY",
            "AIRFLOW_JWT_SECRET", "TEND_SECRET_KEY", "TEND_SHOP_URL", "TEND_BASE_URL"} <= required
    for name in sorted(required):
        assert env_example()[name] == "", f".env.example gives {name} a value"
        with pytest.raises(MissingVariable, match=f"^{name}: set {name}"):
            interpolate(raw(), {**filled_env(), name: ""})
    optional = {name for name, value in env_example().items() if name not in required}
    assert interpolate(raw(), {**filled_env(), **dict.fromkeys(optional, "")})


def test_interpolation_follows_compose() -> None:
    env = {"A": "a", "E": ""}
    assert interpolate("${A}-${E:-d}-${E-d}-${U:-u}-$$A-$A", env) == "a-d--u-$A-a"
    with pytest.raises(MissingVariable, match="E: say so"):
        interpolate("${E:?say so}", env)
    assert interpolate("${E?unused}", env) == ""


# -- 2. the deployment ----------------------------------------------------------------------

def test_the_services() -> None:
    assert set(services()) == AIRFLOW_SERVICES | ONE_SHOT | {
        "postgres", "redis", "tend-serve", "mailpit"}
    assert services()["airflow-cli"]["profiles"] == ["debug"]
    assert services()["airflow-worker-heavy"]["profiles"] == ["heavy"]
    assert environment("airflow-worker")["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert services()["airflow-worker"]["command"] == "celery worker"
    assert services()["tend-serve"]["command"][:4] == ["tend", "serve", "--host", "0.0.0.0"]


def test_healthchecks_and_depends_on_conditions_everywhere() -> None:
    for name, svc in services().items():
        if name not in ONE_SHOT:
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services(), f"{name} depends on unknown {dep}"
            condition = cond["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services()[dep], f"{name} waits for {dep}'s health"
            else:
                assert condition == "service_completed_successfully" and dep in ONE_SHOT
        if name not in {"postgres", "redis", "mailpit"}:
            assert svc.get("depends_on"), f"{name} starts before what it needs"
    worker = services()["airflow-worker"]["depends_on"]
    assert worker["airflow-apiserver"]["condition"] == "service_healthy"
    init = services()["airflow-init"]["depends_on"]
    assert {init["postgres"]["condition"], init["redis"]["condition"]} == {"service_healthy"}


def test_workers_scale() -> None:
    worker = services()["airflow-worker"]
    assert "container_name" not in worker and "ports" not in worker and "hostname" not in worker
    assert environment("airflow-worker")["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert environment("airflow-worker")["AIRFLOW__CELERY__RESULT_BACKEND"].startswith(
        "db+postgresql://")


def mounts(service: str) -> dict[str, str]:
    """The service's mounts: container path -> volume (or host path)."""
    return {v.split(":")[1]: v.split(":")[0] for v in services()[service].get("volumes", [])}


def image_env() -> dict[str, str]:
    """The TEND_* settings the Dockerfile sets (ENV) in every container of the image."""
    return dict(re.findall(r"^ENV (TEND_[A-Z_]+)=(\S+)$", DOCKERFILE.read_text(), re.M))


def test_volumes() -> None:
    declared = set(compose()["volumes"])
    used: set[str] = set()
    for name, svc in services().items():
        used |= {src for src in mounts(name).values() if not src.startswith((".", "/"))}
        if name in AIRFLOW_SERVICES | {"airflow-init", "airflow-cli"}:
            assert mounts(name).get("/opt/airflow/logs") == "airflow-logs", f"{name}: shared logs"
            assert svc["user"] in ("1000:0", "0:0"), f"{name} runs as AIRFLOW_UID"
            assert mounts(name).get("/opt/tend/outbox") == "tend-outbox"
    assert used == declared
    serve = services()["tend-serve"]
    assert mounts("tend-serve").get("/opt/tend/spool") == "tend-spool"
    assert environment("tend-serve")["TEND_SPOOL_DIR"] == "/opt/tend/spool"
    assert serve["user"] == "1000:0"


def test_tend_forget_finds_the_outbox_and_the_spool_in_any_airflow_container() -> None:
    """An erasure deletes the customer's .eml files and spooled records: the container it
    runs in (docs/operations.md#an-erasure-request) must hold both, where its settings say."""
    for name in AIRFLOW_SERVICES | {"airflow-cli"}:
        env = environment(name)
        assert mounts(name).get(env["TEND_OUTBOX_DIR"]) == "tend-outbox", name
        assert mounts(name).get(env["TEND_SPOOL_DIR"]) == "tend-spool", name
    assert environment("tend-serve")["TEND_SPOOL_DIR"] == environment("airflow-worker")[
        "TEND_SPOOL_DIR"]


def test_campaign_samples_are_shared_by_the_worker_and_the_page() -> None:
    """The worker that plans a campaign writes its samples under TEND_VAR_DIR/campaigns; the
    Tend page, in the api-server, serves them from its own TEND_VAR_DIR/campaigns."""
    var_dir = image_env()["TEND_VAR_DIR"]
    for name in ("airflow-worker", "airflow-worker-heavy", "airflow-apiserver"):
        assert environment(name).get("TEND_VAR_DIR", var_dir) == var_dir, name
        assert mounts(name).get(f"{var_dir}/campaigns") == "tend-campaigns", name
    assert "/opt/tend/var/campaigns" in " ".join(services()["airflow-init"]["command"])


def test_every_published_port_listens_on_localhost_only() -> None:
    """Nothing is published on every interface: the Airflow UI and Mailpit are reached over
    a tunnel, and tend serve only through the TLS proxy on the host, which bounds slow and
    idle clients (uvicorn alone has no header-read timeout: a client holding its connections
    open would make every unsubscribe answer 503)."""
    published = {name: svc.get("ports", []) for name, svc in services().items()}
    assert published["tend-serve"] == ["127.0.0.1:8090:8090"]
    for name, ports in published.items():
        for port in ports:
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port}"


def test_a_worker_for_the_heavy_queue() -> None:
    """airflow-worker-heavy is an ordinary worker (everything the others have) that consumes
    TEND_HEAVY_QUEUE, the queue the DAGs give ingest_orders and plan; unset, the default."""
    heavy, worker = services()["airflow-worker-heavy"], services()["airflow-worker"]
    assert {k: v for k, v in heavy.items() if k not in ("command", "profiles")} == {
        k: v for k, v in worker.items() if k != "command"}
    assert environment("airflow-worker")["TEND_HEAVY_QUEUE"] == ""
    assert heavy["command"] == "celery worker --queues default"
    named = interpolate(raw(), {**filled_env(), "TEND_HEAVY_QUEUE": "tend_heavy"})
    assert named["services"]["airflow-worker-heavy"]["command"] == (
        "celery worker --queues tend_heavy")
    for name in AIRFLOW_SERVICES:  # the dag-processor decides the queue, the workers obey it
        assert named["services"][name]["environment"]["TEND_HEAVY_QUEUE"] == "tend_heavy"


def test_airflow_init_prepares_everything() -> None:
    script = " ".join(services()["airflow-init"]["command"])
    for step in ("airflow db migrate", "airflow pools set tend_send", "tend migrate",
                 "passwords.json", 'chown -R "1000:0"'):
        assert step in script, step
    assert environment("airflow-init")["AIRFLOW_ADMIN_PASSWORD"] == "x" * 16
    assert (environment("airflow-apiserver")["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
            in script)


def test_every_container_that_runs_tend_uses_the_postgresql_store() -> None:
    for name in RUNS_TEND:
        env = environment(name)
        assert env["TEND_STORE_URL"].startswith("postgresql://tend:"), name
        assert "TEND_DELIVERY" not in env, f"{name}: TEND_DELIVERY would pin the backend"
        if name != "tend-serve":
            assert env["AIRFLOW_CONN_TEND_STORE"] == env["TEND_STORE_URL"], name
            assert env["AIRFLOW__CORE__FERNET_KEY"], name


def test_secrets_only_from_dotenv() -> None:
    text = COMPOSE.read_text()
    for url in re.findall(r"[a-z+]+://[^\s\"']*@", text):
        password = url.split("://", 1)[1].rsplit("@", 1)[0].partition(":")[2]
        assert password.startswith("${") and password.endswith("}"), url
    for name, svc in raw()["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|KEY$", key) and key not in ("DUMB_INIT_SETSID",):
                assert str(value).startswith(("${", "/")), f"{name}: {key} is hard-coded"
    assert ".env" in (PROJECT / ".gitignore").read_text().split()


# -- 3. the environment matches what reads it ---------------------------------------------

def test_every_variable_is_read_by_something() -> None:
    code = settings_in_code()
    options = airflow_options()
    init_script = (PROJECT / "deploy" / "postgres-init.sh").read_text()
    for name, svc in services().items():
        command = json.dumps(svc.get("command", ""))
        for key in environment(name):
            if key.startswith("AIRFLOW__"):
                section, _, option = key[len("AIRFLOW__"):].lower().partition("__")
                assert (section, option) in options or section.endswith(
                    "_transport_options"), f"{name}: {key} is no Airflow option"
            elif key.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_")):
                continue
            elif key.startswith("TEND_") and key != "TEND_DB_PASSWORD":
                assert key in code, f"{name}: the code never reads {key}"
            elif key in IMAGE_VARIABLES.get(name, set()):
                continue
            else:
                assert (key in command or (name == "postgres" and key in init_script)), (
                    f"{name}: nothing reads {key}")


def test_every_setting_the_code_reads_reaches_the_containers_or_is_not_needed() -> None:
    passed = set(environment("airflow-worker")) | set(environment("tend-serve"))
    # TEND_TEMPLATES_DIR is set by the image (Dockerfile ENV).
    passed |= set(image_env())
    missing = settings_in_code() - passed - set(NOT_FOR_CONTAINERS)
    assert not missing, f"read by the code, neither passed nor explained: {sorted(missing)}"
    stale = set(NOT_FOR_CONTAINERS) - settings_in_code()
    assert not stale, f"NOT_FOR_CONTAINERS names settings nothing reads: {stale}"


def test_env_example_documents_exactly_what_compose_takes_from_dotenv() -> None:
    used = variables_used(COMPOSE.read_text())
    documented = set(env_example())
    assert used == documented, (f"used, not in .env.example: {sorted(used - documented)}; "
                                f"in .env.example, unused: {sorted(documented - used)}")
    # Each variable, or the group of variables it belongs to, comes after a comment.
    lines = ENV_EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            above = i - 1
            while above >= 0 and "=" in lines[above] and not lines[above].startswith("#"):
                above -= 1
            assert above >= 0 and lines[above].startswith("#"), (
                f"{line}: say what it is and who reads it")


def test_the_image() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM apache/airflow:3\.3\.2(-python3\.11)?$", text, re.M)
    assert "-r /opt/tend/requirements.txt" in text
    # The requirements install before Tend's code is copied: a code change reuses that layer.
    install = text.index("-r /opt/tend/requirements.txt")
    assert text.index("COPY --chown=airflow:root requirements.txt /opt/tend/") < install
    assert install < text.index("COPY --chown=airflow:root include") < text.index(
        "--no-deps -e /opt/tend")
    pins = (PROJECT / "requirements.txt").read_text().split()
    assert "apache-airflow==3.3.2" in pins
    assert any(p.startswith("apache-airflow-providers-celery==") for p in pins)
    assert any(p.startswith("celery==") for p in pins) and any(
        p.startswith("redis==") for p in pins)
    assert ".env" in (PROJECT / ".dockerignore").read_text().split()
