"""The container image without a Docker engine: what the Dockerfile copies exists, its
settings are real settings, and the entrypoint `exec`s (so the daemon is PID 1 and gets
SIGTERM) and picks the program as documented."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailbridge.settings_doc import reference_rows

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
COMPOSE = REPO / "config" / "docker-compose.example.yml"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_every_path_the_dockerfile_copies_exists() -> None:
    copies = [args for word, args in instructions() if word in ("COPY", "ADD")]
    assert copies
    checked = 0
    for args in copies:
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        if args.startswith("--from="):
            continue  # from the build stage, not the repository
        for source in words[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            checked += 1
    assert checked >= 5


def test_dockerignore_keeps_what_is_copied() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for word, args in instructions():
        if word == "COPY" and not args.startswith("--from="):
            for source in shlex.split(args)[:-1]:
                assert source.split("/")[0] not in ignored, source


def test_image_shape_non_root_volume_healthcheck_exec_entrypoint() -> None:
    steps = instructions()
    args = {word: rest for word, rest in steps}  # the last of each
    images = [rest.split()[0] for word, rest in steps if word == "FROM"]
    assert len(images) == 2  # multi-stage
    (base,) = {
        rest.split("=", 1)[1] for word, rest in steps if word == "ARG" and "PYTHON_IMAGE=" in rest
    }
    match = re.fullmatch(
        r"python:(3)\.(\d+)(?:\.(\d+))?-slim(?:-\w+)?(?:@sha256:[0-9a-f]{64})?", base
    )
    assert match, base
    version = tuple(int(part) for part in match.groups() if part is not None)
    # A floating 3.11 tag is always >= 3.11.10 now; a pinned patch release must be too.
    assert version >= (3, 11), base
    assert len(version) == 2 or version >= (3, 11, 10), base
    uid = re.search(r"MAILBRIDGE_UID=(\d+)", DOCKERFILE.read_text())
    assert uid is not None
    assert int(uid.group(1)) >= 1000
    assert args["USER"] == "${MAILBRIDGE_UID}:${MAILBRIDGE_UID}"
    assert args["VOLUME"] == '["/var/lib/mailbridge"]'
    assert args["ENTRYPOINT"].startswith("[")  # exec form: no shell in between
    assert args["HEALTHCHECK"].endswith('CMD ["mailbridge", "health"]')
    assert "MAILBRIDGE_DATABASE__UPGRADE_ON_START=true" in args["ENV"]


def _environment_names(text: str) -> set[str]:
    return set(re.findall(r"\bMAILBRIDGE_[A-Z0-9_]+", text)) - {
        "MAILBRIDGE_CONFIG",
        "MAILBRIDGE_UID",
    }


def test_dockerfile_and_compose_name_only_real_settings() -> None:
    known = {env for _key, _type, _default, env in reference_rows()}
    for path in (DOCKERFILE, COMPOSE):
        names = _environment_names(path.read_text())
        assert names, path
        assert names <= known, f"{path.name}: unknown {sorted(names - known)}"
    secrets = set(re.findall(r"^\s+(\w+__\w+):$", COMPOSE.read_text(), re.MULTILINE))
    assert secrets == {"database__url", "imap__password", "smtp__password"}
    for secret in secrets:
        assert f"MAILBRIDGE_{secret.upper()}" in known


def test_compose_file_is_valid_yaml_with_a_database_and_a_volume() -> None:
    import yaml  # in the test extra: a skip here would hide a broken compose file

    data = yaml.safe_load(COMPOSE.read_text())
    service = data["services"]["mailbridge"]
    assert service["depends_on"]["db"]["condition"] == "service_healthy"
    assert "mailbridge-data:/var/lib/mailbridge" in service["volumes"]
    assert set(service["secrets"]) <= set(data["secrets"])


# --- the entrypoint ---------------------------------------------------------------------------


@pytest.fixture
def fake_path(tmp_path: Path) -> str:
    """A PATH whose `mailbridge` prints its PID and arguments, and exits 0 on SIGTERM."""
    program = tmp_path / "mailbridge"
    program.write_text(
        f"#!{sys.executable}\n"
        "import os, signal, sys, time\n"
        "print(os.getpid(), *sys.argv[1:], flush=True)\n"
        "if sys.argv[1:2] == ['run']:\n"
        "    def stop(*_): print('stopped', flush=True); sys.exit(0)\n"
        "    signal.signal(signal.SIGTERM, stop)\n"
        "    time.sleep(30)\n"
    )
    program.chmod(0o755)
    return f"{tmp_path}{os.pathsep}{os.environ['PATH']}"


def entrypoint(fake_path: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENTRYPOINT), *args],
        env={**os.environ, "PATH": fake_path},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "argv"),
    [
        (("health",), ["health"]),
        (("db", "upgrade"), ["db", "upgrade"]),
        (("-c", "/etc/x.toml", "config", "check"), ["-c", "/etc/x.toml", "config", "check"]),
        (("mailbridge", "--version"), ["--version"]),
    ],
)
def test_entrypoint_runs_mailbridge_with_the_arguments(
    fake_path: str, args: tuple[str, ...], argv: list[str]
) -> None:
    result = entrypoint(fake_path, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[1:] == argv


def test_entrypoint_runs_other_programs_for_debugging(fake_path: str) -> None:
    result = entrypoint(fake_path, "sh", "-c", "echo from-a-shell")
    assert result.stdout == "from-a-shell\n"


def test_entrypoint_execs_so_mailbridge_gets_sigterm(fake_path: str) -> None:
    process = subprocess.Popen(
        [str(ENTRYPOINT)],
        env={**os.environ, "PATH": fake_path},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline().split()
        # The same process: the shell replaced itself (exec), as PID 1 would in a container.
        assert first == [str(process.pid), "run"]
        time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert process.stdout.read() == "stopped\n"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()  # type: ignore[union-attr]


def test_entrypoint_with_the_real_mailbridge_and_the_image_settings(tmp_path: Path) -> None:
    """`config check` through the entrypoint, with the image's ENV and default file."""
    if shutil.which("mailbridge") is None:
        pytest.skip("the mailbridge command is not on PATH (pip install -e .)")
    (env_line,) = [r for word, r in instructions() if word == "ENV" and "MAILBRIDGE_" in r]
    image_env = dict(re.findall(r"(MAILBRIDGE_\w+)=(\S+)", env_line))
    image_env["MAILBRIDGE_CONFIG"] = str(REPO / "docker" / "mailbridge.toml")
    image_env["MAILBRIDGE_STORAGE__DATA_DIR"] = str(tmp_path)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAILBRIDGE_")}
    result = subprocess.run(
        [str(ENTRYPOINT), "config", "check"],
        env={**clean, **image_env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert '"upgrade_on_start": true' in result.stdout
    assert '"host": "0.0.0.0"' in result.stdout
