"""What `pip install aura-es` promises: every declared dependency is used, and without
any extra the command line works against an existing PostgreSQL."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

from tests.support.workers import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: Distribution name -> the module it is imported as.
IMPORTED_AS = {
    "eventsourcing": "eventsourcing", "psycopg": "psycopg", "nats-py": "nats",
    "pydantic": "pydantic", "pydantic-settings": "pydantic_settings", "orjson": "orjson",
    "structlog": "structlog", "prometheus-client": "prometheus_client", "typer": "typer",
    "rich": "rich", "pyyaml": "yaml", "jsonschema": "jsonschema",
    "cryptography": "cryptography",
}
#: What only an extra brings: the base install must work without any of it.
OPTIONAL = ["pgserver", "starlette", "uvicorn", "httpx", "pytest", "hypothesis",
            "opentelemetry", "testcontainers", "docker", "jsoncompat"]


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()


def test_every_declared_dependency_is_imported_by_the_package() -> None:
    sources = "\n".join(p.read_text() for p in (ROOT / "aura_es").rglob("*.py"))
    for requirement in PYPROJECT["project"]["dependencies"]:
        module = IMPORTED_AS[_name(requirement)]
        assert re.search(rf"^\s*(import|from) {module}\b", sources, re.M), requirement
    assert "psycopg_pool" in sources  # the [pool] extra of psycopg
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "testcontainers" not in " ".join(extras["dev"])  # used only by the docker extra


def test_the_command_line_works_with_no_extra_installed(db_url: str) -> None:
    """The optional packages are made unimportable; the CLI must not need them."""
    script = (
        "import sys\n"
        f"for name in {OPTIONAL!r}:\n"
        "    sys.modules[name] = None\n"
        "from aura_es.cli.main import main\n"
        "main(sys.argv[1:])\n"
    )
    for args in (["--help"], ["db", "init", "--database-url", db_url, "--json"],
                 ["load", "--commands", "5", "--database-url", db_url, "--json"],
                 ["status", "--json", "--database-url", db_url, "--catalog",
                  str(ROOT / "catalog" / "projection-catalog.yaml")],
                 ["schema", "list", "--json", "--dir", str(ROOT / "schemas")]):
        result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                                text=True, timeout=120, cwd=ROOT)
        assert result.returncode == 0, (args, result.stderr[-2000:])


def test_the_framework_registers_no_demo_topic_and_never_imports_the_application() -> None:
    """`import aura_es` and the command line load none of the AURA demo's events, nor the
    application's top-level packages (a user may have their own `workers` or
    `projections`); `from aura_es import AuraApp` still works, loading the demo then."""
    script = (
        "import sys\n"
        "import aura_es, aura_es.cli.main, aura_es.worker.worker, aura_es.mesh, aura_es.http\n"
        "from aura_es.events import KNOWN_TOPICS\n"
        # The framework's own event type only: the erasure (docs/erasure.md).
        "assert KNOWN_TOPICS <= {'aura.subject.erased.v1'}, sorted(KNOWN_TOPICS)\n"
        "assert not {'workers', 'projections', 'aura_es.domain'} & set(sys.modules)\n"
        "from aura_es import AuraApp\n"
        "assert 'aura.debate.started.v1' in KNOWN_TOPICS\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
