"""Static checks of what deploys clusterdns as kube-dns.

manifests/, Corefile.example, the Dockerfile, .dockerignore and docs/deploy.md are checked
against the drop-in contract of the CoreDNS Deployment (reference notes §0) and against each
other: the ClusterRole against clusterdns.k8s.resources, the container args against the image's
CMD, the runAsUser against the image's USER, the probe and metrics ports against the Corefile.
Nothing here needs a cluster or a container engine; `kubectl kustomize` runs offline.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from clusterdns.k8s.resources import VERBS, WATCHED

try:
    from clusterdns import corefile
except ImportError:  # the parser is being written; the test that needs it is skipped meanwhile
    corefile = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
COREFILE_EXAMPLE = ROOT / "Corefile.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

Obj = dict[str, Any]

# The oldest schema set we hold the manifests to and the newest kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())

NAMESPACE = "kube-system"
CLUSTER_IP = "10.0.0.2"  # the seed's kubelet clusterDNS
DNS_LABELS = {"k8s-app": "kube-dns"}
# The health and ready plugins' default listen ports (CoreDNS and clusterdns alike); the
# Corefile gives them no address, so these are the ports the probes must hit.
HEALTH_PORT = 8080
READY_PORT = 8181
METRICS_PORT = 9153
IMAGE_UID = 65532

# Every object `kubectl kustomize manifests/` must render: (kind, namespace, name).
EXPECTED_OBJECTS = {
    ("ServiceAccount", NAMESPACE, "coredns"),
    ("ClusterRole", None, "system:coredns"),
    ("ClusterRoleBinding", None, "system:coredns"),
    ("ConfigMap", NAMESPACE, "coredns"),
    ("Deployment", NAMESPACE, "coredns"),
    ("Service", NAMESPACE, "kube-dns"),
    ("PodDisruptionBudget", NAMESPACE, "coredns"),
    ("ServiceAccount", NAMESPACE, "dns-autoscaler"),
    ("ClusterRole", None, "system:dns-autoscaler"),
    ("ClusterRoleBinding", None, "system:dns-autoscaler"),
    ("ConfigMap", NAMESPACE, "dns-autoscaler"),
    ("Deployment", NAMESPACE, "dns-autoscaler"),
}

# What the dns-horizontal-autoscaler addon passes, pointed at our Deployment and ConfigMap.
AUTOSCALER_PARAMS = {
    "coresPerReplica": 256,
    "nodesPerReplica": 16,
    "preventSinglePointFailure": True,
    "includeUnschedulableNodes": True,
}
AUTOSCALER_ARGS = [
    "--namespace=kube-system",
    "--configmap=dns-autoscaler",
    "--target=Deployment/coredns",
    "--default-params=" + json.dumps({"linear": AUTOSCALER_PARAMS}, separators=(",", ":")),
    "--logtostderr=true",
    "--v=2",
]

# The overlay docs/deploy.md walks through; test_docs_overlays_render renders it.
DOC_CLUSTER_IP = "10.96.0.10"
DOC_DOMAIN = "corp.internal"
DOC_IMAGE = "registry.example.com/clusterdns:0.1.0"


# ---------------------------------------------------------------------------------- helpers


def key(obj: Obj) -> tuple[str, str | None, str]:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace"), meta["name"]


def source_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")


def source_objects() -> list[Obj]:
    return [doc for path in source_files() for doc in load_yaml_docs(path.read_text(encoding="utf-8"))]


def load_yaml_docs(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def only(objs: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def kustomize(directory: Path) -> list[Obj]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: cannot render the kustomizations")
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return load_yaml_docs(done.stdout)


@pytest.fixture(scope="module")
def rendered() -> list[Obj]:
    return kustomize(MANIFESTS)


@pytest.fixture(scope="module", params=["source", "rendered"])
def objects(request: pytest.FixtureRequest) -> list[Obj]:
    """The contract holds for the files as written and for what kustomize makes of them."""
    if request.param == "source":
        return source_objects()
    return kustomize(MANIFESTS)


def dns_deployment(objs: list[Obj]) -> Obj:
    return only(objs, "Deployment", "coredns")


def dns_container(objs: list[Obj]) -> Obj:
    containers = dns_deployment(objs)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["clusterdns"]
    return containers[0]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        instruction, _, arguments = line.partition(" ")
        instructions.append((instruction.upper(), arguments.strip()))
    assert not pending, "Dockerfile ends in a line continuation"
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction, arguments in dockerfile_instructions():
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, arguments))
    return stages


def dockerfile_single(instruction: str) -> str:
    """The arguments of the one `instruction` of the final stage."""
    found = [a for i, a in dockerfile_stages()[-1] if i == instruction]
    assert len(found) == 1, f"the final stage should have one {instruction}, has {len(found)}"
    return found[0]


def corefile_lines() -> Iterator[list[str]]:
    """Corefile.example's lines as whitespace-split tokens, comments dropped (no quoting in it)."""
    for line in COREFILE_EXAMPLE.read_text(encoding="utf-8").splitlines():
        tokens = line.split("#", 1)[0].split()
        if tokens:
            yield tokens


def directive_args(name: str) -> list[str]:
    found = [tokens[1:] for tokens in corefile_lines() if tokens[0] == name]
    assert len(found) == 1, f"Corefile.example should have one {name!r} line"
    return [a for a in found[0] if a != "{"]


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# ------------------------------------------------------------------------- files and schemas


def test_every_manifest_file_is_in_the_kustomization() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text(encoding="utf-8"))
    assert sorted(kustomization["resources"]) == sorted(p.name for p in source_files())


@pytest.mark.parametrize("path", source_files(), ids=lambda p: p.name)
def test_manifest_file_loads(path: Path) -> None:
    docs = load_yaml_docs(path.read_text(encoding="utf-8"))
    assert docs, f"{path.name} holds no objects"
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys()
        assert doc["metadata"]["name"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("obj", source_objects(), ids=lambda o: "{}/{}".format(o["kind"], o["metadata"]["name"]))
def test_manifest_matches_the_kubernetes_schema(obj: Obj, version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_manifests_match_the_kubernetes_schema(rendered: list[Obj], version: str) -> None:
    for obj in rendered:
        kubernetes_validate.validate(obj, version, strict=True)


def test_kustomize_renders_the_full_set(rendered: list[Obj]) -> None:
    keys = [key(o) for o in rendered]
    assert len(keys) == len(set(keys)), "an object is rendered twice"
    assert set(keys) == EXPECTED_OBJECTS


def test_source_and_rendered_hold_the_same_objects(rendered: list[Obj]) -> None:
    # The ConfigMap `coredns` exists only as generator output.
    assert {key(o) for o in source_objects()} | {("ConfigMap", NAMESPACE, "coredns")} == {key(o) for o in rendered}


def test_everything_namespaced_is_in_kube_system(rendered: list[Obj]) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    for obj in rendered:
        expected = None if obj["kind"] in cluster_scoped else NAMESPACE
        assert obj["metadata"].get("namespace") == expected, key(obj)


# ------------------------------------------------------------------------------- Corefile


def test_configmap_corefile_is_corefile_example_byte_for_byte(rendered: list[Obj]) -> None:
    configmap = only(rendered, "ConfigMap", "coredns")
    assert set(configmap["data"]) == {"Corefile"}
    assert configmap["data"]["Corefile"].encode() == COREFILE_EXAMPLE.read_bytes()


def test_generator_source_is_a_copy_of_corefile_example() -> None:
    # kustomize reads no file outside manifests/, so the generator packs manifests/Corefile.
    assert (MANIFESTS / "Corefile").read_bytes() == COREFILE_EXAMPLE.read_bytes(), (
        "manifests/Corefile and Corefile.example differ: cp Corefile.example manifests/Corefile"
    )


def test_corefile_example_is_the_kubeadm_corefile() -> None:
    assert next(corefile_lines()) == [".:53", "{"]
    heads = [tokens[0] for tokens in corefile_lines() if tokens[0] not in {"}", "{"}]
    assert heads == [
        ".:53",
        "errors",
        "health",
        "lameduck",
        "ready",
        "kubernetes",
        "pods",
        "fallthrough",
        "ttl",
        "prometheus",
        "forward",
        "max_concurrent",
        "cache",
        "disable",
        "disable",
        "loop",
        "reload",
        "loadbalance",
    ]
    assert directive_args("kubernetes") == ["cluster.local", "in-addr.arpa", "ip6.arpa"]
    assert directive_args("forward") == [".", "/etc/resolv.conf"]
    assert directive_args("cache") == ["30"]


def test_corefile_example_comments_every_directive() -> None:
    lines = COREFILE_EXAMPLE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        code = line.split("#", 1)[0].strip()
        if not code or code == "}":
            continue
        before = lines[number - 1].strip() if number else ""
        assert before.startswith("#") or "#" in line, f"line {number + 1} has no comment: {line}"


@pytest.mark.skipif(
    corefile is None,
    reason="clusterdns.corefile cannot be imported yet (the parser is being written)",
)
def test_corefile_example_parses_with_the_project_parser() -> None:
    blocks = corefile.parse_file(COREFILE_EXAMPLE)
    assert len(blocks) == 1
    directives = {d.name: d for d in blocks[0].directives}
    assert list(directives) == [
        "errors",
        "health",
        "ready",
        "kubernetes",
        "prometheus",
        "forward",
        "cache",
        "loop",
        "reload",
        "loadbalance",
    ]
    assert list(directives["kubernetes"].args) == ["cluster.local", "in-addr.arpa", "ip6.arpa"]
    assert [(d.name, list(d.args)) for d in directives["kubernetes"].block] == [
        ("pods", ["insecure"]),
        ("fallthrough", ["in-addr.arpa", "ip6.arpa"]),
        ("ttl", ["30"]),
    ]
    assert [(d.name, list(d.args)) for d in directives["health"].block] == [("lameduck", ["5s"])]
    assert list(directives["prometheus"].args) == [f":{METRICS_PORT}"]
    assert [(d.name, list(d.args)) for d in directives["cache"].block] == [
        ("disable", ["success", "cluster.local"]),
        ("disable", ["denial", "cluster.local"]),
    ]


# -------------------------------------------------------------------------------- Service


def test_service_is_kube_dns_at_the_kubelet_cluster_dns(objects: list[Obj]) -> None:
    service = only(objects, "Service", "kube-dns")
    assert service["metadata"]["namespace"] == NAMESPACE
    assert service["metadata"]["labels"]["k8s-app"] == "kube-dns"
    assert service["metadata"]["annotations"] == {
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/scrape": "true",
    }
    spec = service["spec"]
    assert spec["clusterIP"] == CLUSTER_IP
    assert spec["selector"] == DNS_LABELS
    assert [(p["name"], p["port"], p["protocol"]) for p in spec["ports"]] == [
        ("dns", 53, "UDP"),
        ("dns-tcp", 53, "TCP"),
        ("metrics", METRICS_PORT, "TCP"),
    ]


# ------------------------------------------------------------------------------------ RBAC


def test_clusterrole_grants_exactly_what_the_api_source_watches(objects: list[Obj]) -> None:
    role = only(objects, "ClusterRole", "system:coredns")
    granted = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, "no names, URLs or extras"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    granted.add((group, resource, verb))
    wanted = {(r.group, r.plural, verb) for r in WATCHED for verb in VERBS}
    assert granted == wanted
    total = sum(len(r["apiGroups"]) * len(r["resources"]) * len(r["verbs"]) for r in role["rules"])
    assert total == len(wanted), "a permission is granted twice"


def test_clusterrolebinding_binds_the_deployments_serviceaccount(objects: list[Obj]) -> None:
    binding = only(objects, "ClusterRoleBinding", "system:coredns")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "system:coredns",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "coredns", "namespace": NAMESPACE}]
    only(objects, "ServiceAccount", "coredns")
    pod = dns_deployment(objects)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "coredns"


# ------------------------------------------------------------------------------ Deployment


def test_deployment_is_the_kube_dns_deployment(objects: list[Obj]) -> None:
    deployment = dns_deployment(objects)
    assert deployment["metadata"]["namespace"] == NAMESPACE
    assert deployment["metadata"]["labels"]["k8s-app"] == "kube-dns"
    spec = deployment["spec"]
    assert "replicas" not in spec, "the autoscaler owns replicas"
    assert spec["selector"] == {"matchLabels": DNS_LABELS}
    assert spec["template"]["metadata"]["labels"]["k8s-app"] == "kube-dns"
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}


def test_deployment_schedules_like_a_critical_addon(objects: list[Obj]) -> None:
    pod = dns_deployment(objects)["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert {"key": "CriticalAddonsOnly", "operator": "Exists"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["dnsPolicy"] == "Default"
    (preferred,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    term = preferred["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchExpressions"] == [{"key": "k8s-app", "operator": "In", "values": ["kube-dns"]}]


def test_container_image_args_ports_and_resources(objects: list[Obj]) -> None:
    container = dns_container(objects)
    assert container["image"].split(":")[0].rsplit("/", 1)[-1] == "clusterdns"
    assert container["args"] == ["-conf", "/etc/coredns/Corefile"]
    assert [(p["name"], p["containerPort"], p["protocol"]) for p in container["ports"]] == [
        ("dns", 53, "UDP"),
        ("dns-tcp", 53, "TCP"),
        ("metrics", METRICS_PORT, "TCP"),
        ("liveness-probe", HEALTH_PORT, "TCP"),
        ("readiness-probe", READY_PORT, "TCP"),
    ]
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "70Mi"},
        "limits": {"memory": "170Mi"},
    }


def test_probes_hit_health_and_ready(objects: list[Obj]) -> None:
    container = dns_container(objects)
    assert container["livenessProbe"] == {
        "httpGet": {"path": "/health", "port": HEALTH_PORT, "scheme": "HTTP"},
        "initialDelaySeconds": 60,
        "timeoutSeconds": 5,
        "successThreshold": 1,
        "failureThreshold": 5,
    }
    assert container["readinessProbe"] == {
        "httpGet": {"path": "/ready", "port": READY_PORT, "scheme": "HTTP"},
        "periodSeconds": 10,
    }


def test_container_security_context(objects: list[Obj]) -> None:
    assert dns_container(objects)["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": IMAGE_UID,
        "runAsGroup": IMAGE_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def test_corefile_is_mounted_read_only_at_etc_coredns(objects: list[Obj]) -> None:
    pod = dns_deployment(objects)["spec"]["template"]["spec"]
    assert dns_container(objects)["volumeMounts"] == [
        {"name": "config-volume", "mountPath": "/etc/coredns", "readOnly": True}
    ]
    assert pod["volumes"] == [
        {
            "name": "config-volume",
            "configMap": {"name": "coredns", "items": [{"key": "Corefile", "path": "Corefile"}]},
        }
    ]
    conf = dns_container(objects)["args"][1]
    assert Path(conf).parent == Path("/etc/coredns") and Path(conf).name == "Corefile"


def test_pod_disruption_budget_covers_the_dns_pods(objects: list[Obj]) -> None:
    pdb = only(objects, "PodDisruptionBudget", "coredns")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": DNS_LABELS}}


# ------------------------------------------------------------------------------ autoscaler


def test_autoscaler_runs_as_the_addon_does(objects: list[Obj]) -> None:
    deployment = only(objects, "Deployment", "dns-autoscaler")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "dns-autoscaler"
    assert pod["priorityClassName"] == "system-cluster-critical"
    (container,) = pod["containers"]
    assert container["image"].startswith("registry.k8s.io/cpa/cluster-proportional-autoscaler:")
    assert container["command"] == ["/cluster-proportional-autoscaler", *AUTOSCALER_ARGS]
    # The target and the ConfigMap it names exist.
    dns_deployment(objects)
    configmap = only(objects, "ConfigMap", "dns-autoscaler")
    assert json.loads(configmap["data"]["linear"]) == AUTOSCALER_PARAMS


def test_autoscaler_rbac(objects: list[Obj]) -> None:
    role = only(objects, "ClusterRole", "system:dns-autoscaler")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == {
        ("", "nodes", "get"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
        ("apps", "deployments/scale", "get"),
        ("apps", "deployments/scale", "update"),
        ("", "configmaps", "get"),
        ("", "configmaps", "create"),
    }
    binding = only(objects, "ClusterRoleBinding", "system:dns-autoscaler")
    assert binding["roleRef"]["name"] == "system:dns-autoscaler"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "dns-autoscaler", "namespace": NAMESPACE}]
    only(objects, "ServiceAccount", "dns-autoscaler")


# ------------------------------------------------------------------------------ Dockerfile


def test_dockerfile_is_multi_stage_on_python_311_slim() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    stages = dockerfile_stages()
    assert len(stages) == 2
    assert stages[0][0] == ("FROM", "${PYTHON_IMAGE} AS builder")
    assert stages[1][0] == ("FROM", "${PYTHON_IMAGE}")


def test_dockerfile_builder_installs_this_package_into_opt_venv() -> None:
    runs = " ".join(a for i, a in dockerfile_stages()[0] if i == "RUN")
    assert "python -m venv /opt/venv" in runs
    assert re.search(r"/opt/venv/bin/pip install --no-cache-dir '\.\[fast\]'", runs)


def test_dockerfile_final_stage_has_no_build_tools() -> None:
    final = dockerfile_stages()[-1]
    copies = [a for i, a in final if i == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    (run,) = [a for i, a in final if i == "RUN"]
    assert "pip install" not in run
    assert "python -m pip uninstall --yes pip setuptools wheel" in run
    # setcap comes and goes in the same layer.
    assert "apt-get install --yes --no-install-recommends libcap2-bin" in run
    assert "apt-get purge --yes --auto-remove libcap2-bin" in run
    assert "rm -rf /var/lib/apt/lists/*" in run


def test_dockerfile_setcap_on_the_resolved_interpreter() -> None:
    (run,) = [a for i, a in dockerfile_stages()[-1] if i == "RUN"]
    assert 'python_bin="$(readlink -f /opt/venv/bin/python)"' in run
    assert 'setcap cap_net_bind_service=+ep "$python_bin"' in run


def test_dockerfile_runs_as_the_non_root_user_the_deployment_names() -> None:
    user = dockerfile_single("USER")
    uid, _, gid = user.partition(":")
    assert uid not in {"root", "0"} and gid not in {"root", "0"}
    assert (int(uid), int(gid)) == (IMAGE_UID, IMAGE_UID)
    (run,) = [a for i, a in dockerfile_stages()[-1] if i == "RUN"]
    assert f"--uid {IMAGE_UID}" in run and f"--gid {IMAGE_UID}" in run


def test_dockerfile_entrypoint_and_cmd_match_the_deployment(rendered: list[Obj]) -> None:
    assert json.loads(dockerfile_single("ENTRYPOINT")) == ["clusterdns"]
    assert json.loads(dockerfile_single("CMD")) == dns_container(rendered)["args"]


def test_dockerfile_exposes_exactly_the_served_ports() -> None:
    assert sorted(dockerfile_single("EXPOSE").split()) == sorted(
        ["53/udp", "53/tcp", f"{METRICS_PORT}", f"{HEALTH_PORT}", f"{READY_PORT}"]
    )


def test_dockerignore_keeps_the_context_small_but_buildable() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "tests", "bench"} <= patterns
    assert not patterns & {"pyproject.toml", "clusterdns", "README.md", "*", "**"}


# ---------------------------------------------------------------------------------- ports


def test_ports_agree_across_corefile_deployment_service_and_image(rendered: list[Obj]) -> None:
    # health and ready listen on their defaults, prometheus where the Corefile says.
    assert directive_args("health") == []
    assert directive_args("ready") == []
    (prometheus,) = directive_args("prometheus")
    assert port_of(prometheus) == METRICS_PORT
    assert prometheus.startswith(":"), "metrics must listen on all interfaces to be scraped"
    container = {p["name"]: p["containerPort"] for p in dns_container(rendered)["ports"]}
    service = {p["name"]: p["port"] for p in only(rendered, "Service", "kube-dns")["spec"]["ports"]}
    assert container["metrics"] == service["metrics"] == METRICS_PORT
    assert dns_container(rendered)["livenessProbe"]["httpGet"]["port"] == container["liveness-probe"]
    assert dns_container(rendered)["readinessProbe"]["httpGet"]["port"] == container["readiness-probe"]


# ------------------------------------------------------------------------------------ docs


def doc_files() -> dict[str, str]:
    """Files docs/deploy.md spells out: a `<!-- file: PATH -->` line, then a fenced block."""
    pattern = re.compile(r"<!-- file: (\S+) -->\n```[a-z]*\n(.*?)```", re.S)
    return dict(pattern.findall(DEPLOY_DOC.read_text(encoding="utf-8")))


def test_docs_overlays_render(tmp_path: Path) -> None:
    files = doc_files()
    assert set(files) == {"my-cluster/kustomization.yaml", "clusterdns-migration/kustomization.yaml"}
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    sed = f"sed 's/cluster\\.local/{DOC_DOMAIN}/g' manifests/Corefile > my-cluster/Corefile"
    assert sed in text
    # The layout the docs use: the repository's manifests/ next to the operator's overlays.
    shutil.copytree(MANIFESTS, tmp_path / "manifests")
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content, encoding="utf-8")
    corefile_text = COREFILE_EXAMPLE.read_text(encoding="utf-8").replace("cluster.local", DOC_DOMAIN)
    (tmp_path / "my-cluster" / "Corefile").write_text(corefile_text, encoding="utf-8")

    objs = kustomize(tmp_path / "my-cluster")
    assert {key(o) for o in objs} == EXPECTED_OBJECTS
    assert only(objs, "Service", "kube-dns")["spec"]["clusterIP"] == DOC_CLUSTER_IP
    assert only(objs, "ConfigMap", "coredns")["data"]["Corefile"] == corefile_text
    assert "cluster.local" not in corefile_text
    assert dns_container(objs)["image"] == DOC_IMAGE

    (temporary,) = kustomize(tmp_path / "clusterdns-migration")
    assert key(temporary) == ("Deployment", NAMESPACE, "clusterdns-migration")
    spec = temporary["spec"]
    assert spec["selector"] == {"matchLabels": DNS_LABELS}
    assert spec["template"]["spec"]["serviceAccountName"] == "coredns"
    assert spec["template"]["spec"]["containers"][0]["image"] == DOC_IMAGE
    assert spec["template"]["spec"]["volumes"][0]["configMap"]["name"] == "coredns"
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(temporary, version, strict=True)


def test_docs_give_the_commands_and_the_choices() -> None:
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    for needed in (
        "kubectl apply --server-side",
        "-k my-cluster/",
        "kubectl kustomize manifests/",
        "k8s-app: kube-dns",
        "kubectl -n kube-system delete deployment coredns",
        "maxUnavailable",
        "setcap",
        "## Sizing",
    ):
        assert needed in text, needed
