"""The chart's README (generated from values.yaml) and its Artifact Hub metadata (Chart.yaml).

Behaviours covered:

* the committed ``charts/trainscale/README.md`` is exactly what
  ``trainscale.testbed.chart_readme`` generates from values.yaml, Chart.yaml and the values
  schema (``make chart-readme``), so a changed ``# --`` comment without regenerating fails;
* its values table has one row per documented value, with the comment, default and type,
  and a changed comment changes that row;
* the real ``helm show readme`` prints it, and the packaged chart carries it;
* Chart.yaml's Artifact Hub annotations parse: the CRD entry names the generated CRD's kind,
  version and name; the image is the one the chart deploys with its defaults; the links are
  https and the repository documents they point to exist; the license is the project's.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import yaml

from tests.chart.conftest import CHART_DIR, REPO_ROOT
from tests.chart.test_chart_render import container
from trainscale.testbed.chart_readme import collect_values, render_chart_readme, render_readme

README = CHART_DIR / "README.md"
CHART = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
VALUES_TEXT = (CHART_DIR / "values.yaml").read_text()
CRD = yaml.safe_load(
    (REPO_ROOT / "manifests" / "crd" / "trainingjobs.trainscale.dev.yaml").read_text()
)
REPO_BLOB = "https://github.com/trainscale/trainscale/blob/main/"


def test_committed_readme_is_the_generated_one() -> None:
    assert README.read_text() == render_chart_readme(), "run `make chart-readme`"


def test_every_documented_value_has_a_row() -> None:
    values = collect_values(VALUES_TEXT)
    paths = [v.path for v in values]
    assert len(paths) == len(set(paths)) and "operator.replicas" in paths
    text = README.read_text()
    for value in values:
        assert f"| `{value.path}` | {value.type} | `{value.default}` |" in text, value
    replicas = next(v for v in values if v.path == "operator.replicas")
    assert (replicas.type, replicas.default) == ("integer", "1")
    assert replicas.description.startswith("Number of operator pods. More than 1 requires")


def test_a_changed_comment_changes_the_readme() -> None:
    old = "# -- Number of operator pods."
    assert old in VALUES_TEXT
    changed = render_readme(VALUES_TEXT.replace(old, "# -- How many operator pods run."), CHART)
    assert changed != README.read_text()
    assert "| `operator.replicas` | integer | `1` | How many operator pods run. More" in changed


def test_helm_show_readme_and_the_package_carry_it(helm: Any, tmp_path: Path) -> None:
    shown = helm.run("show", "readme", str(CHART_DIR)).stdout
    assert shown.strip() == README.read_text().strip()
    helm.run("package", str(CHART_DIR), "--destination", str(tmp_path))
    (package,) = tmp_path.glob("trainscale-*.tgz")
    with tarfile.open(package) as tar:
        assert "trainscale/README.md" in tar.getnames()


def _annotation(key: str) -> Any:
    return yaml.safe_load(CHART["annotations"][f"artifacthub.io/{key}"])


def test_artifact_hub_crds_name_the_generated_crd() -> None:
    (entry,) = _annotation("crds")
    (version,) = [v["name"] for v in CRD["spec"]["versions"] if v["served"] and v["storage"]]
    assert entry["kind"] == CRD["spec"]["names"]["kind"]
    assert entry["version"] == version
    assert entry["name"] == CRD["metadata"]["name"]
    assert entry["displayName"] and entry["description"]


def test_artifact_hub_image_is_the_deployed_image(render: Any) -> None:
    (image,) = _annotation("images")
    values = yaml.safe_load(VALUES_TEXT)["image"]
    assert values["tag"] == ""  # so the default tag is the appVersion
    expected = f"{values['registry']}/{values['repository']}:{CHART['appVersion']}"
    assert image == {"name": "operator", "image": expected}
    assert container(render({}))["image"] == expected


def test_artifact_hub_links_and_license() -> None:
    links = _annotation("links")
    assert links and all(link["name"] and link["url"].startswith("https://") for link in links)
    for link in links:
        if link["url"].startswith(REPO_BLOB):
            assert (REPO_ROOT / link["url"].removeprefix(REPO_BLOB)).is_file(), link
    assert CHART["annotations"]["artifacthub.io/license"] == "Apache-2.0"
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert 'license = "Apache-2.0"' in pyproject
